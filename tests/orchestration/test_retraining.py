"""The loop on a real Dagster instance (issue 19): arrival batches are picked up by the sensor,
curated, and taken in by the next retraining run, which ends in a promotion decision; every
card names the cohort versions it was built from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
from pipeline_run import copy_pipeline, pipeline_run_config
from test_orchestration import evaluate, write_batch

from cohorts.batches import read_manifests
from cohorts.synthetic import generate_archive, preset_config
from models.promotion import read_log
from orchestration.assets.incoming import INCOMING_PARTITIONS
from orchestration.definitions import defs

UNLABELED, LABELED, FAILING = "2026-12-01", "2026-12-02", "2026-12-03"


def _latest(instance: dg.DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_arrival_batches_join_the_next_retraining_and_every_card_names_their_versions(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    root = copy_pipeline(tiny_pipeline, tmp_path / "site")
    before = read_manifests(root / "data" / "examples")
    assert before["archive"]["members"] == ["archive"]

    # Two batches from the same generator (new patients, the archive's key and date shift):
    # one unlabeled, one with labels.csv; and a third whose series fail the lung-HU checks.
    generated = tmp_path / "generated"
    sizes = {"n_archive": 3, "n_internal": 4, "n_external": 2}
    generate_archive(generated, preset_config("tiny", seed=7, workers=1, **sizes), progress=False)
    incoming = tmp_path / "incoming"
    for batch, cohort in ((UNLABELED, "archive"), (LABELED, "internal")):
        shutil.copytree(generated / cohort, incoming / batch, ignore=shutil.ignore_patterns("ehr"))
    assert (incoming / LABELED / "labels.csv").is_file()
    assert not (incoming / UNLABELED / "labels.csv").exists()
    write_batch(incoming, FAILING, "MRN-3")  # a factory phantom: no lung, so no lung HU

    with dg.instance_for_test() as instance:
        tick = evaluate(instance, incoming, cursor=None)
        assert sorted(r.partition_key for r in tick.run_requests) == [UNLABELED, LABELED, FAILING]
        instance.add_dynamic_partitions(INCOMING_PARTITIONS.name, [UNLABELED, LABELED, FAILING])
        config = pipeline_run_config(root)
        config.pop("ops")
        config["resources"]["incoming"] = {"config": {"incoming_dir": str(incoming)}}
        curation = defs.resolve_job_def("incoming_curation")
        for request in sorted(tick.run_requests, key=lambda r: r.partition_key):
            run = curation.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                run_config=config,
                raise_on_error=False,
            )
            # the phantom batch is not the generator's, so it is pseudonymised with this
            # installation's key, which no EHR cohort shares: its EHR lookup is refused too
            assert run.success == (request.partition_key != FAILING)
        # a refused key is final: the features step failed once, its retry policy unused
        (failure,) = run.get_step_failure_events()
        assert "shares its key and date shift with no EHR cohort" in str(failure.step_failure_data)
        assert not [e for e in run.all_events if e.event_type_value == "STEP_RESTARTED"]
        assert _latest(instance, "incoming_batch")["quality_passed"] is False  # FAILING, last

        retrain = defs.resolve_job_def("retraining").execute_in_process(
            instance=instance, run_config=pipeline_run_config(root), raise_on_error=False
        )
        assert retrain.success

        curated = root / "data" / "curated" / "incoming"
        new_series = {
            batch: set(pd.read_parquet(curated / batch / "nodules.parquet")["series_id"])
            for batch in (UNLABELED, LABELED)
        }
        assert all(new_series.values())
        after = read_manifests(root / "data" / "examples")
        assert after["archive"]["members"] == ["archive", f"incoming/{UNLABELED}"]
        assert after["internal"]["members"] == ["internal", f"incoming/{LABELED}"]
        assert after["external"] == before["external"]  # the frozen evaluation set
        for cohort, batch in (("archive", UNLABELED), ("internal", LABELED)):
            grown = set(after[cohort]["series"]) - set(before[cohort]["series"])
            assert grown == new_series[batch]
            assert after[cohort]["version"] != before[cohort]["version"]
        decisions = {
            d["batch"]: d for d in json.loads((root / "data/examples/batches.json").read_text())
        }
        assert decisions[FAILING]["cohort"] is None
        assert "blocking quality checks failed" in decisions[FAILING]["reason"]
        assert "lung_hu_median" in decisions[FAILING]["reason"]

        # lineage: each card names the versions this run materialised
        examples = _latest(instance, "training_examples")
        assert examples["batches_joined"] == 2
        assert FAILING in examples["arrival_batches"] and "kept out" in examples["arrival_batches"]
        versions = {c: after[c]["version"] for c in after}
        assert {c: examples[f"manifest/{c}"] for c in versions} == versions
        encoder = _latest(instance, "jepa_encoder")
        assert {c: encoder[f"manifest/{c}"] for c in versions} == versions
        encoder_card = json.loads(
            (root / "artifacts" / "encoders" / encoder["version"] / "card.json").read_text()
        )
        named = encoder_card["inputs"]["cohort_manifests"]
        assert {c: m["version"] for c, m in named.items()} == versions
        models = _latest(instance, "diagnostic_models")
        assert models["encoder_version"] == encoder["version"]
        model_card = json.loads(
            (root / "artifacts" / "models" / models["version"] / "card.json").read_text()
        )
        assert model_card["encoder_version"] == encoder["version"]
        assert {c: m["version"] for c, m in model_card["cohort_manifests"].items()} == versions

        # the retrained model faced the champion and the decision was logged
        log = read_log(root / "artifacts" / "models" / "promotions.jsonl")
        assert len(log) == 2
        assert log[-1]["challenger"] == models["version"]
        assert log[-1]["champion"] == log[0]["challenger"]
        gate = _latest(instance, "production_model")
        assert gate["challenger"] == models["version"]
        assert gate["promoted"] == log[-1]["promoted"]
        pointer = json.loads((root / "artifacts" / "models" / "production.json").read_text())
        assert pointer["version"] == (
            models["version"] if gate["promoted"] else log[0]["challenger"]
        )


def test_a_retraining_can_warm_start_from_the_production_encoder(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """encoder_init production: jepa_encoder starts from the encoder the production models
    were built on, says so in its metadata and card, and is a new encoder version."""
    root = copy_pipeline(tiny_pipeline, tmp_path / "copy")
    models = root / "artifacts" / "models"
    production = json.loads((models / "production.json").read_text())["version"]
    built_on = json.loads((models / production / "card.json").read_text())["encoder_version"]
    config = pipeline_run_config(root)
    config["ops"] = {"jepa_encoder": {"config": {"encoder_init": "production"}}}
    with dg.instance_for_test() as instance:
        run = defs.resolve_job_def("full_pipeline").execute_in_process(
            instance=instance, run_config=config, asset_selection=[dg.AssetKey("jepa_encoder")]
        )
        assert run.success
        meta = _latest(instance, "jepa_encoder")
    assert meta["init"] == f"warm start from {built_on}" and meta["version"] != built_on
    card = json.loads((root / "artifacts" / "encoders" / meta["version"] / "card.json").read_text())
    assert card["init"]["encoder_version"] == built_on
    config["ops"] = {"jepa_encoder": {"config": {"encoder_init": "latest"}}}
    with dg.instance_for_test() as instance:
        bad = defs.resolve_job_def("full_pipeline").execute_in_process(
            instance=instance,
            run_config=config,
            asset_selection=[dg.AssetKey("jepa_encoder")],
            raise_on_error=False,
        )
    assert not bad.success

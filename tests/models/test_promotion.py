"""Champion/challenger promotion: the gate's decisions, the log, and the real production_model
asset refusing a challenger on a real Dagster instance (production.json left unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
from pipeline_run import copy_pipeline, pipeline_run_config

from models.promotion import PromotionConfig, append_log, decide, read_log

CONFIG = PromotionConfig(margin=0.02, alpha=0.05, bootstrap_replicates=100)


def _cohort(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    good = 1.0 / (1.0 + np.exp(-(2.0 * y - 1.0 + rng.normal(0, 1.0, n))))
    return y.astype(int), good


def test_no_champion_promotes_the_first_model_whose_checks_pass() -> None:
    y, good = _cohort()
    first = decide(y, good, None, {"parity/jepa": True}, CONFIG, "v1", None, "frozen")
    assert first.promoted and "no champion" in first.reason
    failed = decide(y, good, None, {"parity/jepa": False}, CONFIG, "v1", None, "frozen")
    assert not failed.promoted and failed.reason == "blocking checks failed: parity/jepa"


def test_a_shuffled_label_challenger_is_refused_and_an_equal_one_promoted() -> None:
    y, good = _cohort()
    rng = np.random.default_rng(1)
    # a model trained on shuffled labels ranks patients at random
    shuffled = rng.random(len(y))
    refused = decide(y, shuffled, good, {"parity/jepa": True}, CONFIG, "v2", "v1", "frozen")
    assert not refused.promoted and "not shown non-inferior" in refused.reason
    assert refused.diff < 0 and refused.lower_bound <= -CONFIG.margin
    assert refused.champion_auc > refused.challenger_auc
    # the same model again (a retrain that changed nothing) is non-inferior
    again = decide(y, good + 1e-9 * rng.random(len(y)), good, {}, CONFIG, "v3", "v1", "frozen")
    assert again.promoted and "non-inferior" in again.reason
    assert again.lower_bound > -CONFIG.margin


def test_log_appends_one_line_per_decision(tmp_path: Path) -> None:
    y, good = _cohort()
    log = tmp_path / "models" / "promotions.jsonl"
    assert read_log(log) == []
    for version in ("v1", "v2"):
        append_log(log, decide(y, good, None, {}, CONFIG, version, None, "frozen").to_dict())
    records = read_log(log)
    assert [r["challenger"] for r in records] == ["v1", "v2"]
    assert {"time", "reason", "challenger_auc", "challenger_ci", "checks", "margin"} <= set(
        records[0]
    )


def test_production_model_refuses_a_challenger_and_keeps_the_pointer(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """On a copy of the tiny pipeline: the first materialisation promoted (no champion); a
    re-run of the gate with an unmeetable margin refuses and logs why, pointer unchanged."""
    from orchestration.definitions import defs

    root = copy_pipeline(tiny_pipeline, tmp_path / "copy")
    models = root / "artifacts" / "models"
    (first,) = read_log(models / "promotions.jsonl")
    assert first["promoted"] and first["champion"] is None and first["checks"]["parity/jepa"]
    pointer_before = (models / "production.json").read_bytes()
    assert json.loads(pointer_before)["version"] == first["challenger"]

    config = pipeline_run_config(root)
    config["ops"] = {"production_model": {"config": {"margin": -1.0}}}  # must gain > 1.0 AUC
    job = defs.resolve_job_def("full_pipeline")
    with dg.instance_for_test() as instance:
        run = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("production_model")],
            run_config=config,
        )
        (materialization,) = run.asset_materializations_for_node("production_model")
    assert (models / "production.json").read_bytes() == pointer_before
    records = read_log(models / "promotions.jsonl")
    assert len(records) == 2 and not records[-1]["promoted"]
    assert records[-1]["champion"] == first["challenger"]
    assert "not shown non-inferior" in records[-1]["reason"]
    assert records[-1]["evaluation_set"] == first["evaluation_set"]  # the same frozen set
    assert materialization.metadata["promoted"].value is False
    assert materialization.metadata["reason"].value == records[-1]["reason"]
    plot = models / "promotions.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in materialization.metadata["production_auc_over_time"].value
    drawn = plot.stat().st_mtime_ns

    # by hand: promote needs an exported version; rollback needs an earlier one in the log
    from orchestration import cli

    artifacts = ["--artifacts-dir", str(root / "artifacts")]
    assert cli.main(["promote", "no-such-version", *artifacts]) == 2
    assert cli.main(["rollback", *artifacts]) == 2  # only one version was ever in production
    assert cli.main(["promote", first["challenger"], "--reason", "drill", *artifacts]) == 0
    last = read_log(models / "promotions.jsonl")[-1]
    assert (last["action"], last["reason"], last["promoted"]) == ("promote", "drill", True)
    assert plot.stat().st_mtime_ns > drawn  # a by-hand move redraws the plot too


def test_rollback_goes_to_the_version_in_production_before_the_current_one() -> None:
    from models.promotion import production_history, rollback_target

    log = [
        {"challenger": "v1", "promoted": True},
        {"challenger": "v2", "promoted": False},  # refused: never in production
        {"challenger": "v3", "promoted": True},
        {"challenger": "v1", "promoted": True, "action": "rollback"},
    ]
    assert production_history(log) == ["v1", "v3", "v1"]
    assert rollback_target(log, "v1") == "v3"
    assert rollback_target(log[:3], "v3") == "v1"
    assert rollback_target(log[:1], "v1") is None


def test_production_model_never_points_at_a_model_that_failed_parity_or_was_altered(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """With no model in production yet: a challenger whose ONNX parity failed is refused (no
    production.json written, the refusal logged); one whose ONNX file no longer matches its
    card's sha256 fails the gate's run, and production.json is still not written."""
    from orchestration.definitions import defs

    root = copy_pipeline(tiny_pipeline, tmp_path / "copy")
    models = root / "artifacts" / "models"
    (models / "production.json").unlink()
    (models / "promotions.jsonl").unlink()
    exported = json.loads((models / "latest.json").read_text())
    onnx_dir = root / "artifacts" / exported["path"] / "onnx" / "jepa"
    card_path = onnx_dir / "card.json"
    card = json.loads(card_path.read_text())
    config = pipeline_run_config(root)
    config.pop("ops")
    job = defs.resolve_job_def("full_pipeline")

    def gate() -> dg.ExecuteInProcessResult:
        with dg.instance_for_test() as instance:
            return job.execute_in_process(
                instance=instance,
                asset_selection=[dg.AssetKey("production_model")],
                run_config=config,
                raise_on_error=False,
            )

    card["extra"]["parity"]["passed"] = False
    card_path.write_text(json.dumps(card))
    assert gate().success
    assert not (models / "production.json").exists()
    (refusal,) = read_log(models / "promotions.jsonl")
    assert not refusal["promoted"] and refusal["checks"]["parity/jepa"] is False
    assert "parity/jepa" in refusal["reason"]

    card["extra"]["parity"]["passed"] = True
    card_path.write_text(json.dumps(card))
    onnx_path = onnx_dir / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    run = gate()
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
    assert "sha256" in str(failure.event_specific_data.error)
    assert not (models / "production.json").exists()
    assert len(read_log(models / "promotions.jsonl")) == 1  # nothing decided on an altered file


def test_a_challenger_trained_on_data_unlike_its_champions_is_refused(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """The gate compares the challenger's training data with the champion's (the profiles
    saved beside each models version): like data passes the check; data whose crops and EHR
    moved (a new scanner, a coding change) blocks promotion and the log says which features."""
    import shutil

    import pandas as pd

    from orchestration.definitions import defs

    root = copy_pipeline(tiny_pipeline, tmp_path / "copy")
    models = root / "artifacts" / "models"
    production = json.loads((models / "production.json").read_text())
    challenger = production["version"]
    assert (models / challenger / "training_profile" / "image.parquet").is_file()

    def champion_copy(name: str, shift: bool) -> None:
        """A copy of the current models as another version, made the champion."""
        shutil.copytree(models / challenger, models / name)
        if shift:  # its training patients' crops were 300 HU denser, their EHR values larger
            for group, move in (("image", 300.0), ("ehr", 50.0)):
                path = models / name / "training_profile" / f"{group}.parquet"
                pd.read_parquet(path).add(move).to_parquet(path, index=False)
        pointer = {
            "version": name,
            "models": {m: p.replace(challenger, name) for m, p in production["models"].items()},
        }
        (models / "production.json").write_text(json.dumps(pointer))

    def gate() -> dict:
        config = pipeline_run_config(root)
        config.pop("ops")
        with dg.instance_for_test() as instance:
            run = defs.resolve_job_def("full_pipeline").execute_in_process(
                instance=instance,
                asset_selection=[dg.AssetKey("production_model")],
                run_config=config,
            )
            assert run.success
        return read_log(models / "promotions.jsonl")[-1]

    champion_copy("champion-alike", shift=False)
    alike = gate()
    assert alike["champion"] == "champion-alike" and alike["checks"]["training_drift"]
    assert alike["training_drift"]["severity"] != "ERROR"

    champion_copy("champion-drifted", shift=True)
    pointer_before = (models / "production.json").read_bytes()
    drifted = gate()
    assert drifted["champion"] == "champion-drifted" and not drifted["promoted"]
    assert drifted["checks"]["training_drift"] is False
    assert drifted["reason"] == "blocking checks failed: training_drift"
    errors = drifted["training_drift"]["errors"]
    assert any(e.startswith("image/hu_") for e in errors) and any(
        e.startswith("ehr/") for e in errors
    )
    assert (models / "production.json").read_bytes() == pointer_before


def test_a_challenger_trained_on_shuffled_labels_is_refused(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """Retrain on the same patients with their labels shuffled: the new models learn nothing
    about malignancy, score worse on the frozen external set than the champion, and the gate
    refuses them; production.json is byte-identical and the log says why."""
    from cohorts.example_set import load_examples
    from orchestration.definitions import defs

    root = copy_pipeline(tiny_pipeline, tmp_path / "copy")
    models = root / "artifacts" / "models"
    pointer_before = (models / "production.json").read_bytes()
    champion = json.loads(pointer_before)["version"]
    internal_path = root / "data" / "examples" / "internal.npz"
    internal = load_examples(internal_path)
    shuffled = np.random.default_rng(0).permutation(internal.label)
    assert (shuffled != internal.label).any()
    internal.label = shuffled
    internal.save(internal_path)

    config = pipeline_run_config(root)
    with dg.instance_for_test() as instance:
        run = defs.resolve_job_def("full_pipeline").execute_in_process(
            instance=instance,
            asset_selection=[
                dg.AssetKey(k)
                for k in ("diagnostic_models", "evaluation", "onnx_model", "production_model")
            ],
            run_config=config,
        )
        assert run.success
    last = read_log(models / "promotions.jsonl")[-1]
    assert last["champion"] == champion and last["challenger"] != champion
    assert not last["promoted"] and last["reason"].startswith("not shown non-inferior")
    assert last["challenger_auc"] < last["champion_auc"]
    assert (models / "production.json").read_bytes() == pointer_before

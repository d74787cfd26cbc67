"""Schedules, sensors, retries and pools (issue 10), evaluated against real Dagster instances."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from dicom_factory import write_ct_series
from pipeline_run import pipeline_run_config, run_pipeline

from orchestration.assets.incoming import INCOMING_PARTITIONS, IncomingArchive
from orchestration.definitions import defs
from orchestration.params import REPO_ROOT, section
from orchestration.resources import PipelinePaths
from orchestration.sensors import FAILURE_LOG, incoming_batches, run_failures

INSTANCE_YAML = REPO_ROOT / "orchestration" / "dagster.yaml"


def write_batch(root: Path, name: str, patient_id: str, *, complete: bool = True) -> str:
    """One arrival batch: a CT series with a nodule, and (if complete) its annotations.csv."""
    batch = root / name
    spec = write_ct_series(
        batch / "dicom" / "series",
        n_slices=16,
        patient_id=patient_id,
        sphere=((0.0, 0.0, -8.0), 3.0, 200.0),
    )
    if complete:
        pd.DataFrame(
            [(spec.series_uid, 0.0, 0.0, -8.0, 6.0)],
            columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
        ).to_csv(batch / "annotations.csv", index=False)
    return spec.series_uid


def evaluate(instance: dg.DagsterInstance, incoming_dir: Path, cursor: str | None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"incoming": IncomingArchive(incoming_dir=str(incoming_dir))},
        definitions=defs,
    )
    return incoming_batches(context)


def test_definitions_list_schedule_sensor_and_jobs() -> None:
    """(The CLI load of the same module is tests/e2e/test_pipeline.py's validate test.)"""
    repo = defs.get_repository_def()
    assert "weekly_retraining" in {s.name for s in repo.schedule_defs}
    assert {"incoming_batches", "run_failures"} <= {s.name for s in repo.sensor_defs}
    assert {"full_pipeline", "retraining", "incoming_curation"} <= set(repo.job_names)


def test_sensor_requests_each_new_batch_once(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    write_batch(incoming, "2026-11-01", "MRN-1")
    write_batch(incoming, "2026-11-02", "MRN-2")
    write_batch(incoming, "2026-11-03", "MRN-3", complete=False)  # still copying
    (incoming / ".2026-11-04.partial" / "dicom").mkdir(parents=True)
    with dg.instance_for_test() as instance:
        first = evaluate(instance, incoming, cursor=None)
        assert isinstance(first, dg.SensorResult)
        assert [r.partition_key for r in first.run_requests] == ["2026-11-01", "2026-11-02"]
        assert [r.run_key for r in first.run_requests] == ["2026-11-01", "2026-11-02"]
        (add,) = first.dynamic_partitions_requests
        assert add.partitions_def_name == INCOMING_PARTITIONS.name
        assert list(add.partition_keys) == ["2026-11-01", "2026-11-02"]
        assert json.loads(first.cursor) == ["2026-11-01", "2026-11-02"]

        # the daemon applies the partition request; same folders again -> nothing
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        again = evaluate(instance, incoming, cursor=first.cursor)
        assert isinstance(again, dg.SkipReason)

        # the third batch finishes copying: only it is requested
        write_batch(incoming, "2026-11-03", "MRN-3")
        third = evaluate(instance, incoming, cursor=first.cursor)
        assert [r.partition_key for r in third.run_requests] == ["2026-11-03"]
        assert json.loads(third.cursor) == ["2026-11-01", "2026-11-02", "2026-11-03"]
        assert isinstance(evaluate(instance, incoming, cursor=third.cursor), dg.SkipReason)


def feast_store_with_ehr(data_dir: Path, root: Path, patient_id: str) -> None:
    """A real Feast store under ``data_dir`` whose EHR knows ``patient_id`` (hospital MRN)."""
    from ehr_factory import AS_OF, LOOKBACK, N_SIG, REPO_DIR, TTL_DAYS, archive_ehr, write_ehr

    from cohorts.ehr import build_feature_tables, combine_cohorts, fit_signatures
    from cohorts.privacy import resolve_key
    from feature_repo.store import apply_definitions, open_store, write_sources
    from orchestration.params import privacy_config

    signatures = fit_signatures(archive_ehr(root / "archive_ehr"), N_SIG, LOOKBACK, as_of=AS_OF)
    ehr = write_ehr(
        root / "site_ehr",
        {
            "person": [f"{patient_id},F,1951,1,1,,1"],
            "condition_occurrence": [f"{patient_id},J44.9,2019-03-01"],  # before the scan
        },
    )
    key = resolve_key(synthetic=False)  # the key curation uses for this (unmarked) batch
    shift = privacy_config().date_shift_max_days  # and the date shift
    built = build_feature_tables(
        ehr, "internal", key, signatures, LOOKBACK, as_of=AS_OF, date_shift_max_days=shift
    )
    write_sources(combine_cohorts([built]), data_dir)
    apply_definitions(open_store(REPO_DIR, data_dir), data_dir, TTL_DAYS, N_SIG)


def test_sensor_run_request_curates_the_batch_and_looks_up_its_features(tmp_path: Path) -> None:
    """What the daemon does with a run request: incoming_curation for that partition."""
    incoming = tmp_path / "incoming"
    write_batch(incoming, "b1", "MRN-77")
    feast_store_with_ehr(tmp_path / "data", tmp_path, "MRN-77")
    with dg.instance_for_test() as instance:
        result = evaluate(instance, incoming, cursor=None)
        (request,) = result.run_requests
        instance.add_dynamic_partitions(INCOMING_PARTITIONS.name, [request.partition_key])
        config = pipeline_run_config(tmp_path)
        config.pop("ops")
        config["resources"]["incoming"] = {"config": {"incoming_dir": str(incoming)}}
        run = defs.resolve_job_def("incoming_curation").execute_in_process(
            instance=instance, partition_key=request.partition_key, run_config=config
        )
        assert run.success
        out = tmp_path / "data" / "curated" / "incoming" / "b1"
        index = pd.read_parquet(out / "index.parquet")
        assert list(index["status"]) == ["ok"]
        assert len(pd.read_parquet(out / "nodules.parquet")) == 1
        features = pd.read_parquet(out / "ehr_features.parquet")
        assert len(features) == 1 and features["copd"].iloc[0] == 1
        assert features["age_at_scan_years"].iloc[0] == pytest.approx(2020.04 - 1951.5, abs=0.05)
        for frame in (index, features):
            assert "MRN-77" not in frame.to_csv()
        for name in ("incoming_batch", "incoming_batch_features"):
            event = instance.get_latest_materialization_event(dg.AssetKey(name))
            assert event.dagster_event.partition == "b1"
        curated = instance.get_latest_materialization_event(dg.AssetKey("incoming_batch"))
        assert curated.asset_materialization.metadata["accepted"].value == 1
        looked_up = instance.get_latest_materialization_event(
            dg.AssetKey("incoming_batch_features")
        )
        assert looked_up.asset_materialization.metadata["ehr_coverage"].value == 1.0


def test_every_asset_is_in_a_pool_so_two_materialisations_of_it_serialise() -> None:
    """With dagster.yaml's default pool limit 1, an asset's pool lets one materialisation of
    it run at a time; the GPU assets share pool "gpu", every other asset has its own."""
    graph = defs.resolve_asset_graph()
    pools = {
        k.to_user_string(): graph.get(k).assets_def.op.pool for k in graph.get_all_asset_keys()
    }
    assert {name for name, pool in pools.items() if pool == "gpu"} == {
        "jepa_encoder",
        "diagnostic_models",
    }
    assert all(pool == name for name, pool in pools.items() if pool != "gpu")
    instance = yaml.safe_load((REPO_ROOT / "orchestration" / "dagster.yaml").read_text())
    assert instance["concurrency"]["pools"]["default_limit"] == 1
    assert instance["run_monitoring"]["enabled"] is True


def test_weekly_schedule_requests_retraining() -> None:
    sunday = dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)
    schedule = defs.get_schedule_def("weekly_retraining")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=sunday)
        data = schedule.evaluate_tick(context)
    (request,) = data.run_requests
    job = defs.resolve_job_def("retraining")
    assert schedule.job_name == "retraining"
    # no overrides: the scheduled run takes sizes and paths from params.yaml
    resolved = dg.validate_run_config(job, request.run_config)
    assert resolved["resources"]["paths"]["config"]["data_dir"] == section("paths")["data"]
    assert resolved["ops"]["jepa_encoder"]["config"]["epochs"] == section("pretrain")["epochs"]
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert not keys & {"raw_archive", "curated_scans", "incoming_batch"}  # curation is not redone
    assert keys >= {
        "ehr_features",
        "training_examples",
        "jepa_encoder",
        "diagnostic_models",
        "evaluation",
        "onnx_model",
        "production_model",
    }


def test_full_pipeline_leaves_incoming_batches_alone() -> None:
    keys = {
        k.to_user_string()
        for k in defs.resolve_job_def("full_pipeline").asset_layer.executable_asset_keys
    }
    assert "incoming_batch" not in keys and {"raw_archive", "production_model"} <= keys


@pytest.mark.parametrize(
    "name", ["ehr_features", "training_examples", "incoming_batch", "incoming_batch_features"]
)
def test_transient_steps_retry(name: str) -> None:
    policy = defs.get_assets_def(name).op.retry_policy
    assert policy is not None and policy.max_retries >= 2 and policy.delay > 0


def test_gpu_pool_admits_one_step_at_a_time() -> None:
    """orchestration/dagster.yaml on a real instance: the gpu pool has one slot across runs."""
    for name in ("jepa_encoder", "diagnostic_models"):
        assert defs.get_assets_def(name).op.pool == "gpu"
    overrides = yaml.safe_load(INSTANCE_YAML.read_text())
    with dg.instance_for_test(overrides=overrides) as instance:
        storage = instance.event_log_storage
        # what the executor does the first time a step of a pool without explicit limit runs
        storage.initialize_concurrency_limit_to_default("gpu")
        first = storage.claim_concurrency_slot("gpu", "run-a", "jepa_encoder")
        second = storage.claim_concurrency_slot("gpu", "run-b", "diagnostic_models")
        assert first.is_claimed and not second.is_claimed
        info = storage.get_concurrency_info("gpu")
        assert info.slot_count == 1 and info.using_default_limit
        storage.free_concurrency_slots_for_run("run-a")
        assert storage.claim_concurrency_slot("gpu", "run-b", "diagnostic_models").is_claimed


def test_demo_replicate_runs_the_same_job_with_another_seed_in_its_own_folders(
    tmp_path: Path,
) -> None:
    from orchestration import cli

    run_config = cli.replicate_run_config(tmp_path / "seed7", 7)
    job = defs.resolve_job_def("full_pipeline")
    assert dg.validate_run_config(job, run_config)  # raises if Dagster rejects it
    assert run_config["ops"]["raw_archive"]["config"] == {"seed": 7}
    folders = run_config["resources"]["paths"]["config"]
    assert all(Path(v).is_relative_to(tmp_path / "seed7") for v in folders.values())
    assert cli.main(["demo", "--seed", "7"]) == 2  # --out is required with --seed


def test_a_failed_run_leaves_a_line_in_the_failure_log(tmp_path: Path) -> None:
    """Curation of a raw folder that is not there: the real run fails, and the run-failure
    sensor records job, step and error class, without the message (it names files)."""
    with dg.instance_for_test() as instance:
        run = run_pipeline(tmp_path, instance, selection=["curated_scans"])
        assert not run.success
        paths = PipelinePaths(**pipeline_run_config(tmp_path)["resources"]["paths"]["config"])
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failures",
            dagster_event=run.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=run.dagster_run,
            resources={"paths": paths},
        ).for_run_failure()
        run_failures(context)
    lines = (paths.artifacts / FAILURE_LOG).read_text().splitlines()
    (record,) = [json.loads(line) for line in lines]
    assert record["run_id"] == run.run_id and record["job"] == "full_pipeline"
    assert record["partition"] is None
    assert record["failed_steps"] == ["curated_scans"]
    assert record["errors"] == ["FileNotFoundError"]
    assert str(tmp_path) not in json.dumps(record)  # no message, so no input path

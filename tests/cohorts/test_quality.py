"""Data-quality suites (great-expectations 1.x), blocking Dagster checks, and drift statistics.

Size: over 450 lines as it tests both cohorts/quality/suites.py and drift.py with
orchestration/quality.py; a split into test_suites.py and test_drift.py follows issue 18.
"""

import datetime as dt
import itertools
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from cohorts.quality.drift import (
    ERROR,
    OK,
    SKIPPED,
    DriftThresholds,
    compare_cohorts,
    feature_drift,
    image_statistics,
    ks_test,
    population_stability_index,
)
from cohorts.quality.report import write_drift_report
from cohorts.quality.suites import (
    QualityThresholds,
    crop_statistics,
    ehr_scan_frame,
    label_frame,
    validate_crops,
    validate_ehr_features,
    validate_labels,
    validate_scan_index,
)

T = QualityThresholds(min_slices=8, crop_size_vox=8)
DRIFT = DriftThresholds()


def scan_index(n: int = 6) -> pd.DataFrame:
    """A clean curated index: n accepted CT series and one quarantined localizer."""
    ok = pd.DataFrame(
        {
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "series_id": [f"s{i}" for i in range(n)],
            "study_id": [f"st{i}" for i in range(n)],
            "study_date": "2020-01-01",
            "modality": "CT",
            "n_slices": 32,
            "spacing_mm_z": 2.5,
            "spacing_mm_y": 0.7,
            "spacing_mm_x": 0.7,
            "shape_z": 32,
            "shape_y": 64,
            "shape_x": 64,
            "status": "ok",
            "reason": "",
            "volume_path": [f"volumes/s{i}.npy" for i in range(n)],
            "orientation_max_offdiag": 0.0,
            "lung_hu_median": -850.0,
            "lung_fraction": 0.3,
        }
    )
    quarantined = ok.iloc[:1].assign(
        series_id="loc", status="quarantined", reason="localizer", n_slices=2, volume_path=None,
        orientation_max_offdiag=np.nan, lung_hu_median=np.nan, lung_fraction=np.nan,
    )  # fmt: skip
    return pd.concat([ok, quarantined], ignore_index=True)


def failed_names(result) -> list[str]:
    return [f.name for f in result.failed]


# --- suites -----------------------------------------------------------------------------------


def test_clean_scan_index_passes_and_quarantined_rows_are_exempt_from_ranges() -> None:
    result = validate_scan_index(scan_index(), T, "internal/scan_index")
    assert result.success, result.failed
    assert result.n_expectations > 10


def test_negative_spacing_and_bad_status_fail_with_examples() -> None:
    index = scan_index()
    index.loc[2, "spacing_mm_z"] = -1.0
    index.loc[3, "status"] = "unknown"
    result = validate_scan_index(index, T, "internal/scan_index")
    assert not result.success
    names = failed_names(result)
    assert "expect_column_values_to_be_between(spacing_mm_z)" in names
    assert "expect_column_values_to_be_in_set(status)" in names
    spacing = next(f for f in result.failed if f.column == "spacing_mm_z")
    assert spacing.unexpected_count == 1
    assert spacing.examples[0]["series_id"] == "s2"


def test_implausible_lung_hu_and_oblique_orientation_fail() -> None:
    index = scan_index()
    index.loc[1, "lung_hu_median"] = 0.0  # a soft-tissue "lung": wrong rescale or no chest
    index.loc[2, "orientation_max_offdiag"] = 0.9
    index.loc[3, "lung_fraction"] = 0.0
    result = validate_scan_index(index, T, "internal/scan_index")
    assert not result.success
    failed = {f.column: f for f in result.failed}
    assert set(failed) == {"lung_hu_median", "orientation_max_offdiag", "lung_fraction"}
    assert failed["lung_hu_median"].examples[0]["series_id"] == "s1"
    assert failed["orientation_max_offdiag"].examples[0]["series_id"] == "s2"
    missing = validate_scan_index(scan_index().drop(columns="lung_hu_median"), T, "t")
    assert not missing.success  # an index curated before the column existed fails too


def test_real_curated_synthetic_archive_passes_lung_and_orientation(tmp_path: Path) -> None:
    from dicom_factory import curation_config

    from cohorts.dicom.curate import curate_cohort
    from cohorts.synthetic import generate_archive, preset_config

    small = dict(n_archive=2, n_internal=3, n_external=2, workers=1)
    generate_archive(tmp_path / "raw", preset_config("tiny", seed=3, **small), progress=False)
    out = tmp_path / "curated"
    cfg = curation_config(min_slices=T.min_slices, crop_size_vox=T.crop_size_vox)
    curate_cohort(tmp_path / "raw" / "internal", out, cfg, progress=False)
    index = pd.read_parquet(out / "index.parquet")
    assert (index["status"] == "ok").any()
    result = validate_scan_index(index, T, "internal/scan_index")
    assert result.success, result.failed_names


def test_duplicate_series_ids_fail() -> None:
    index = scan_index()
    index.loc[1, "series_id"] = "s0"
    assert "expect_column_values_to_be_unique(series_id)" in failed_names(
        validate_scan_index(index, T, "t")
    )


def test_crop_suite_catches_wrong_shape_and_hu_out_of_range() -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(-1000, 200, size=(4, 2, 8, 8, 8)).astype(np.int16)
    mask = np.array([[True, True], [False, True], [False, True], [True, True]])
    ids = np.array(["a", "b", "c", "d"])
    stats = crop_statistics(crops, mask, ids)
    assert len(stats) == int(mask.sum())
    assert validate_crops(stats, T, "crops").success
    crops[2, 1, 0, 0, 0] = 5000
    result = validate_crops(crop_statistics(crops, mask, ids), T, "crops")
    assert "expect_column_values_to_be_between(hu_max)" in failed_names(result)
    wrong = QualityThresholds(min_slices=8, crop_size_vox=16)
    assert "expect_column_values_to_be_between(shape_z)" in failed_names(
        validate_crops(stats, wrong, "crops")
    )
    floats = crops.astype(np.float32)
    floats[0, 0, 1, 1, 1] = np.nan
    nonfinite = validate_crops(crop_statistics(floats, mask, ids), T, "crops")
    assert "expect_column_values_to_be_between(n_nonfinite)" in failed_names(nonfinite)


def ehr_tables(n: int = 8) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(scans, snapshots, demographics): each patient has a snapshot 30 days before the scan."""
    ids = [f"p{i}" for i in range(n)]
    scan_ts = pd.Series(pd.to_datetime(["2021-06-01"] * n)).dt.tz_localize("UTC")
    scans = pd.DataFrame(
        {"patient_id": ids, "series_id": [f"s{i}" for i in range(n)], "scan_timestamp": scan_ts}
    )
    snapshots = pd.DataFrame(
        {
            "patient_id": ids * 2,
            "event_timestamp": list(scan_ts - pd.Timedelta(days=30))
            + list(scan_ts + pd.Timedelta(days=30)),
            "cohort": "internal",
            "smoking_current": [1.0, 0.0] * n,
            "pack_years": [30.0] * (2 * n),
            "n_visits_lookback": [3.0] * n + [99.0] * n,
            "sig_00": 0.1,
        }
    )
    demographics = pd.DataFrame(
        {
            "patient_id": ids,
            "cohort": "internal",
            "sex_female": 1.0,
            "birth_reference_day": (dt.date(1955, 7, 1) - dt.date(1970, 1, 1)).days,
        }
    )
    return scans, snapshots, demographics


EHR_NAMES = ["sex_female", "age_at_scan_years", "smoking_current", "pack_years", "sig_00"]


def test_ehr_frame_takes_the_snapshot_in_force_at_the_scan_and_passes() -> None:
    frame = ehr_scan_frame(*ehr_tables())
    assert (frame["feature_timestamp"] <= frame["scan_timestamp"]).all()
    assert (frame["n_visits_lookback"] == 3.0).all()  # not the later snapshot's 99
    assert frame["age_at_scan_years"].between(65, 67).all()
    result = validate_ehr_features(frame, EHR_NAMES + ["n_visits_lookback"], T, "ehr")
    assert result.success, result.failed


def test_ehr_suite_fails_on_feature_after_scan_non_utc_and_out_of_range() -> None:
    frame = ehr_scan_frame(*ehr_tables())
    frame.loc[0, "feature_timestamp"] = frame.loc[0, "scan_timestamp"] + pd.Timedelta(days=1)
    frame.loc[1, "pack_years"] = -5.0
    frame.loc[2, "smoking_current"] = 0.5
    names = failed_names(validate_ehr_features(frame, EHR_NAMES, T, "ehr"))
    assert "expect_column_pair_values_a_to_be_greater_than_b" in names
    assert "expect_column_values_to_be_between(pack_years)" in names
    assert "expect_column_values_to_be_in_set(smoking_current)" in names

    scans, snapshots, demographics = ehr_tables()
    naive = snapshots.assign(event_timestamp=snapshots["event_timestamp"].dt.tz_localize(None))
    frame = ehr_scan_frame(scans, naive, demographics)
    assert "expect_column_values_to_be_in_set(feature_timestamp_tz)" in failed_names(
        validate_ehr_features(frame, EHR_NAMES, T, "ehr")
    )


def test_label_suite_binary_and_prevalence_bounds() -> None:
    ids = np.array([f"p{i}" for i in range(10)])
    labels = np.array([0, 1, 0, 0, 1, -1, 0, 1, 0, 0], dtype=np.int8)
    assert validate_labels(label_frame(ids, labels), T, "labels").success
    bad = labels.copy()
    bad[0] = 2
    result = validate_labels(label_frame(ids, bad), T, "labels")
    assert "expect_column_values_to_be_in_set(label)" in failed_names(result)
    assert result.failed[0].examples
    all_benign = np.zeros(10, dtype=np.int8)
    assert "expect_column_mean_to_be_between(label)" in failed_names(
        validate_labels(label_frame(ids, all_benign), T, "labels")
    )


# --- blocking checks in a real Dagster instance -----------------------------------------------


def _corruptible_defs(corrupt: bool):
    """The real curated_scans_quality check on a small curated_scans that writes the index."""
    from orchestration.quality import curated_scans_quality
    from orchestration.resources import COHORTS, PipelinePaths

    @dg.asset(name="curated_scans")
    def small_curated_scans(paths: PipelinePaths) -> None:
        for cohort in COHORTS:
            index = scan_index()
            if corrupt and cohort == "external":
                index.loc[1, "spacing_mm_x"] = -0.7
            folder = paths.curated(cohort)
            folder.mkdir(parents=True, exist_ok=True)
            index.to_parquet(folder / "index.parquet", index=False)

    @dg.asset(deps=[small_curated_scans])
    def downstream_of_scans() -> None:
        return None

    return [small_curated_scans, downstream_of_scans, curated_scans_quality]


@pytest.mark.parametrize("corrupt", [True, False])
def test_failed_blocking_check_stops_the_downstream_asset(tmp_path: Path, corrupt: bool) -> None:
    from orchestration.resources import PipelinePaths

    paths = PipelinePaths(
        data_dir=str(tmp_path / "data"),
        artifacts_dir=str(tmp_path / "artifacts"),
        metrics_dir=str(tmp_path / "metrics"),
    )
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = dg.materialize(
            _corruptible_defs(corrupt),
            instance=instance,
            resources={"paths": paths},
            raise_on_error=False,
        )
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.check_name == "curated_scans_quality"
        assert evaluation.blocking
        downstream = instance.get_latest_materialization_event(dg.AssetKey("downstream_of_scans"))
        assert instance.get_latest_materialization_event(dg.AssetKey("curated_scans"))
        if corrupt:
            assert not evaluation.passed
            assert not result.success
            assert downstream is None
            failed = evaluation.metadata["failed_expectations"].value
            assert failed[0]["table"] == "external/scan_index"
            assert failed[0]["expectation"] == "expect_column_values_to_be_between(spacing_mm_x)"
            assert failed[0]["examples"][0]["series_id"] == "s1"
        else:
            assert evaluation.passed
            assert result.success
            assert downstream is not None


def test_examples_ehr_must_be_each_scans_own_point_in_time_ehr(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """The blocking examples check compares the ``ehr`` array with the EHR as of each scan,
    recomputed from the Feast sources: the pipeline's examples pass; giving a patient's
    earlier scan the EHR of its latest scan (a leak from the future) fails, naming the scan."""
    import shutil

    from orchestration.params import params
    from orchestration.quality import examples_results
    from orchestration.resources import PipelinePaths

    source, _, result = tiny_pipeline
    assert result.success
    shutil.copytree(source / "data", tmp_path / "data", symlinks=True)
    paths = PipelinePaths(
        data_dir=str(tmp_path / "data"),
        artifacts_dir=str(tmp_path / "artifacts"),
        metrics_dir=str(tmp_path / "metrics"),
    )
    thresholds = QualityThresholds.from_params(params())

    def ehr_array_result():
        (found,) = [
            r
            for r in examples_results(paths, "internal", thresholds)
            if r.table.endswith("ehr_array")
        ]
        return found

    clean = ehr_array_result()
    assert clean.success and clean.n_rows == int(
        np.load(paths.examples("internal"))["scan_mask"].sum()
    )
    with np.load(paths.examples("internal"), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    both = arrays["scan_mask"][:, -2] & arrays["ehr_mask"][:, -2] & arrays["ehr_mask"][:, -1]
    changed = both & np.any(arrays["ehr"][:, -2] != arrays["ehr"][:, -1], axis=1)
    row = int(np.flatnonzero(changed)[0])
    arrays["ehr"][row, -2] = arrays["ehr"][row, -1]  # the earlier scan sees the later EHR
    np.savez(paths.examples("internal"), **arrays)
    leaked = ehr_array_result()
    assert not leaked.success
    (failure,) = [f for f in leaked.failed if f.column == "ehr_matches"]
    assert failure.unexpected_count == 1
    assert failure.examples[0]["patient_id"] == str(arrays["patient_id"][row])


def test_cohort_drift_asset_records_every_signal_beside_the_models_it_compared(
    tiny_pipeline: tuple,
) -> None:
    """What `cohort_drift` leaves for users: the report and drift.json under metrics/drift,
    a record next to the run's own models, and metadata that agree; the overall severity is
    the worst tested feature's, the errors are exactly the ERROR features, and the JEPA
    signals (embeddings, the predictor's cross-modal error ratios) are present."""
    import json

    from cohorts.quality.drift import SEVERITY_RANK, SKIPPED

    root, _, result = tiny_pipeline
    assert result.success
    (materialisation,) = result.asset_materializations_for_node("cohort_drift")
    meta = {k: v.value for k, v in materialisation.metadata.items()}
    report = json.loads((root / "metrics" / "drift" / "drift.json").read_text())
    features = report["features"]
    assert {f["group"] for f in features} == {"ehr", "image", "embedding", "cross_modal"}
    tested = [f["severity"] for f in features if f["severity"] != SKIPPED]
    worst = max(tested, key=SEVERITY_RANK.__getitem__) if tested else SKIPPED
    assert report["severity"] == meta["severity"] == worst
    (models,) = result.asset_materializations_for_node("diagnostic_models")
    version = models.metadata["version"].value
    assert meta["models_version"] == version
    record = json.loads((root / "artifacts" / "models" / version / "drift.json").read_text())
    assert record["severity"] == worst
    assert record["errors"] == [
        f"{f['group']}/{f['feature']}" for f in features if f["severity"] == ERROR
    ]
    for group, counts in record["counts"].items():
        for severity, count in counts.items():
            assert count == sum(f["group"] == group and f["severity"] == severity for f in features)
    for name in ("ehr_from_image_error_ratio", "image_from_ehr_error_ratio"):
        assert np.isfinite(record[name]) and record[name] > 0
        assert meta[name] == pytest.approx(record[name])
    (encoder,) = result.asset_materializations_for_node("jepa_encoder")
    assert record["encoder_version"] == encoder.metadata["version"].value
    text = Path(meta["report"]).read_text()
    assert f"Overall severity: **{worst}**" in text and meta["report_md"] == text


# --- drift statistics -------------------------------------------------------------------------


def test_ks_matches_exact_enumeration_by_hand() -> None:
    reference, candidate = [1.0, 2.0, 3.0, 4.0], [3.5, 4.5, 5.0, 6.0]
    pooled = reference + candidate

    def d_statistic(a: list[float], b: list[float]) -> float:
        grid = sorted(a + b)
        return max(
            abs(sum(v <= x for v in a) / len(a) - sum(v <= x for v in b) / len(b)) for x in grid
        )

    observed = d_statistic(reference, candidate)
    splits = list(itertools.combinations(range(8), 4))
    extreme = 0
    for chosen in splits:
        a = [pooled[i] for i in chosen]
        b = [pooled[i] for i in range(8) if i not in chosen]
        extreme += d_statistic(a, b) >= observed - 1e-12
    statistic, p_value = ks_test(np.array(reference), np.array(candidate))
    assert statistic == pytest.approx(observed) == pytest.approx(0.75)
    assert p_value == pytest.approx(extreme / len(splits))


def test_psi_matches_hand_computation() -> None:
    # one bin per value: shares (0.5, 0.5) -> (0.25, 0.75)
    categorical = population_stability_index(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    assert categorical == pytest.approx(-0.25 * math.log(0.5) + 0.25 * math.log(1.5))
    # two quantile bins split at the reference median 5.5: (0.5, 0.5) -> (3/8, 5/8)
    reference = np.arange(1.0, 11.0)
    candidate = np.array([1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0, 12.0])
    expected = (0.375 - 0.5) * math.log(0.375 / 0.5) + (0.625 - 0.5) * math.log(0.625 / 0.5)
    assert population_stability_index(reference, candidate, bins=2) == pytest.approx(expected)
    assert population_stability_index(reference, reference, bins=4) == pytest.approx(0.0)


def cohort(n: int, seed: int, shift: bool = False) -> pd.DataFrame:
    """A synthetic EHR-like cohort; ``shift`` moves pack-years and the smoking coding rate."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age_at_scan_years": rng.normal(65, 7, n),
            "pack_years": rng.gamma(4.0, 8.0, n) + (12.0 if shift else 0.0),
            "smoking_current": (rng.random(n) < (0.55 if shift else 0.35)).astype(float),
            "sex_female": (rng.random(n) < 0.5).astype(float),
            "sig_00": rng.normal(0, 1, n),
        }
    )


def test_clean_split_raises_no_drift() -> None:
    whole = cohort(4000, seed=1)
    order = np.random.default_rng(2).permutation(len(whole))
    halves = whole.iloc[order[:2000]], whole.iloc[order[2000:]]
    result = compare_cohorts({"ehr": halves}, DRIFT)
    assert result.severity == OK, result.to_frame()


def test_shifted_cohort_raises_drift_on_the_shifted_features_only() -> None:
    result = compare_cohorts({"ehr": (cohort(1500, seed=3), cohort(1500, 4, shift=True))}, DRIFT)
    severity = {f.feature: f.severity for f in result.features}
    assert severity["pack_years"] == ERROR
    assert severity["smoking_current"] == ERROR
    assert {severity[k] for k in ("age_at_scan_years", "sex_female", "sig_00")} == {OK}
    assert result.severity == ERROR


def test_scanner_noise_shift_shows_in_image_statistics() -> None:
    """The generator's external site has 1.7x the CT noise: crop statistics must see it."""
    rng = np.random.default_rng(5)

    def crops(n: int, noise_sd_hu: float) -> np.ndarray:
        base = np.full((n, 1, 8, 8, 8), -850.0)
        base[:, :, 2:6, 2:6, 2:6] = 40.0
        return (base + rng.normal(0, noise_sd_hu, base.shape)).astype(np.int16)

    mask = np.ones((200, 1), dtype=bool)
    reference = image_statistics(crops(200, 18.0), mask)
    candidate = image_statistics(crops(200, 18.0 * 1.7), mask)
    result = compare_cohorts({"image": (reference, candidate)}, DRIFT)
    severity = {f.feature: f.severity for f in result.features}
    assert severity["hu_gradient_x"] == ERROR


def test_small_samples_are_skipped_and_psi_not_trusted() -> None:
    small = feature_drift("ehr", "x", np.arange(5.0), np.arange(5.0) + 100, DRIFT)
    assert small.severity == SKIPPED
    medium = feature_drift("ehr", "x", np.arange(20.0), np.arange(20.0) + 0.5, DRIFT)
    assert not medium.psi_used and medium.severity == OK


def test_drift_report_is_written_with_histograms(tmp_path: Path) -> None:
    groups = {"ehr": (cohort(500, seed=6), cohort(500, 7, shift=True))}
    result = compare_cohorts(groups, DRIFT)
    report = write_drift_report(result, groups, tmp_path / "drift", ("internal", "external"))
    text = report.read_text()
    assert "**ERROR**" in text and "hist_ehr_pack_years.png" in text
    assert (tmp_path / "drift" / "hist_ehr_pack_years.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "drift" / "drift.json").exists()


def test_embeddings_and_cross_modal_error_from_a_real_pretraining_run(tmp_path: Path) -> None:
    """The drift asset's JEPA signals: latest-time-point embeddings and the predictor's error."""
    from cohorts.example_set import random_examples
    from models.jepa.config import PretrainConfig
    from models.jepa.embeddings import cross_modal_errors, latest_embeddings
    from models.jepa.pretrain import pretrain

    examples = random_examples(16, timepoints=2, crop_size_vox=16, n_ehr=4, seed=0)
    config = PretrainConfig(
        epochs=1, batch_size=8, warmup_epochs=1, embed_dim=16, depth=1, heads=2,
        predictor_dim=8, predictor_depth=1, ehr_tokens=2, monitor_examples=8,
    )  # fmt: skip
    result = pretrain(examples, tmp_path / "run", config, progress=False)
    embeddings = latest_embeddings(result.encoder_path, examples)
    assert embeddings.shape == (16, 16) and np.isfinite(embeddings.to_numpy()).all()
    shifted = examples.subset(np.arange(16))
    shifted.crops_hu[:] = np.clip(shifted.crops_hu.astype(np.int32) + 300, -1024, 3071)
    assert not np.allclose(latest_embeddings(result.encoder_path, shifted), embeddings)

    errors = cross_modal_errors(tmp_path / "run", examples)
    assert errors is not None and list(errors.columns) == ["ehr_from_image", "image_from_ehr"]
    has_ehr = (examples.scan_mask & examples.ehr_mask).any(axis=1)
    assert np.isfinite(errors["ehr_from_image"][has_ehr]).all()
    assert (errors["image_from_ehr"][has_ehr] > 0).all()
    assert errors["ehr_from_image"][~has_ehr].isna().all()
    assert cross_modal_errors(tmp_path / "missing", examples) is None


def test_thresholds_come_from_params_yaml() -> None:
    from orchestration.params import params

    values = params("tiny")
    quality = QualityThresholds.from_params(values)
    assert quality.crop_size_vox == values["curate"]["crop_size_vox"]
    assert quality.lung_hu_median == tuple(float(v) for v in values["quality"]["lung_hu_median"])
    assert quality.orientation_max_offdiag == values["quality"]["orientation_max_offdiag"]
    assert quality.prevalence[0] < quality.prevalence[1]
    drift = DriftThresholds.from_params(values)
    assert drift.ks_p_error < drift.ks_p_warn and drift.psi_warn < drift.psi_error

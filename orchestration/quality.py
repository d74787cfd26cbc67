"""Data-quality asset checks (blocking) and the cohort-drift asset with its (warning) check.

The blocking checks read the files their asset wrote and run the great-expectations suites
of cohorts.quality.suites; a failure stops everything downstream in that run, and the
check's metadata lists each failed expectation with example rows. ``cohort_drift`` compares
the training (internal) cohort with the external one on EHR features, crop HU statistics,
JEPA embeddings and the JEPA predictor's cross-modal error, writes metrics/drift/ and records
the outcome next to the diagnostic models' card (artifacts/models/<version>/drift.json).
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from cohorts.example_set import load_examples
from cohorts.examples import scan_entities
from cohorts.files import atomic_write_json
from cohorts.quality.drift import (
    ERROR,
    DriftThresholds,
    compare_cohorts,
    ehr_latest,
    image_statistics,
)
from cohorts.quality.report import json_safe, write_drift_report
from cohorts.quality.suites import (
    FailedExpectation,
    QualityThresholds,
    SuiteResult,
    crop_statistics,
    ehr_array_frame,
    ehr_scan_frame,
    label_frame,
    validate_crops,
    validate_ehr_array,
    validate_ehr_features,
    validate_labels,
    validate_scan_index,
)
from models.jepa.embeddings import cross_modal_errors, latest_embeddings
from orchestration.assets.data import curated_scans
from orchestration.assets.evaluation import diagnostic_models
from orchestration.assets.features import training_examples
from orchestration.lineage import ENCODERS, MODELS, built_on
from orchestration.metadata import flat_numbers, markdown_table
from orchestration.params import params
from orchestration.resources import COHORTS, PipelinePaths

LABELED_COHORTS: tuple[str, ...] = ("internal", "external")
REFERENCE, CANDIDATE = "internal", "external"
FEATURE_VIEWS: tuple[str, ...] = ("demographics", "clinical_history", "clinical_signatures")
DRIFT_SUBDIR = "drift"
"""Under the metrics folder: report.md, drift.json, hist_*.png."""


def _thresholds() -> QualityThresholds:
    return QualityThresholds.from_params(params())


def missing_table(table: str, path: Path) -> SuiteResult:
    """A table whose file is absent fails its suite (rather than erroring the check)."""
    failure = FailedExpectation("file_exists", None, {"path": str(path)}, None, False, [])
    return SuiteResult(table=table, success=False, n_rows=0, n_expectations=1, failed=[failure])


def check_result(results: list[SuiteResult]) -> dg.AssetCheckResult:
    """One AssetCheckResult for several suites: passed only if every suite passed."""
    failed = [
        {
            "table": r.table,
            "expectation": f.name,
            "kwargs": f.kwargs,
            "unexpected_count": f.unexpected_count,
            "observed_value": f.observed_value,
            "examples": f.examples,
        }
        for r in results
        for f in r.failed
    ]
    rows = [
        {
            "table": r.table,
            "passed": r.success,
            "rows": r.n_rows,
            "expectations": r.n_expectations,
            "failed": len(r.failed),
        }
        for r in results
    ]
    passed = all(r.success for r in results)
    names = [name for r in results for name in r.failed_names]
    return dg.AssetCheckResult(
        passed=passed,
        description="all expectations hold" if passed else "failed: " + "; ".join(names),
        metadata={
            "tables": markdown_table(rows),
            "failed_expectations": dg.MetadataValue.json(failed),
            "n_failed": dg.MetadataValue.int(len(failed)),
        },
    )


@dg.asset_check(asset=curated_scans, blocking=True)
def curated_scans_quality(paths: PipelinePaths) -> dg.AssetCheckResult:
    """Every cohort's scan index: unique ids, known statuses, accepted CT with plausible spacing
    and slice counts."""
    t = _thresholds()
    results = []
    for cohort in COHORTS:
        path = paths.curated(cohort) / "index.parquet"
        table = f"{cohort}/scan_index"
        if not path.exists():
            results.append(missing_table(table, path))
            continue
        results.append(validate_scan_index(pd.read_parquet(path), t, table))
    return check_result(results)


def _feature_snapshots(paths: PipelinePaths, cohort: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(snapshots, demographics) of one cohort from the feature store's offline sources."""
    from feature_repo.store import source_path

    views = {}
    for view in FEATURE_VIEWS:
        table = pd.read_parquet(source_path(paths.data, view))
        views[view] = table[table["cohort"] == cohort]
    keys = ["patient_id", "event_timestamp"]
    snapshots = (
        views["clinical_history"]
        .drop(columns="cohort")
        .merge(views["clinical_signatures"].drop(columns="cohort"), on=keys, how="outer")
    )
    return snapshots, views["demographics"]


def examples_results(paths: PipelinePaths, cohort: str, t: QualityThresholds) -> list[SuiteResult]:
    """Crops, EHR features as of each scan and (labeled cohorts) labels of one cohort."""
    path = paths.examples(cohort)
    if not path.exists():
        return [missing_table(f"{cohort}/examples", path)]
    examples = load_examples(path)
    stats = crop_statistics(examples.crops_hu, examples.scan_mask, examples.patient_id)
    results = [validate_crops(stats, t, f"{cohort}/crops")]
    nodules = pd.read_parquet(paths.curated(cohort) / "nodules.parquet")
    scans = scan_entities(nodules).rename(columns={"event_timestamp": "scan_timestamp"})
    snapshots, demographics = _feature_snapshots(paths, cohort)
    frame = ehr_scan_frame(scans, snapshots, demographics)
    names = [str(n) for n in examples.ehr_feature_names]
    results.append(validate_ehr_features(frame, names, t, f"{cohort}/ehr_features"))
    slots = ehr_array_frame(examples, nodules, frame, int(params()["features"]["ttl_days"]))
    results.append(validate_ehr_array(slots, t, f"{cohort}/ehr_array"))
    if cohort in LABELED_COHORTS:
        labels = label_frame(examples.patient_id, examples.label)
        results.append(validate_labels(labels, t, f"{cohort}/labels"))
    return results


@dg.asset_check(asset=training_examples, blocking=True)
def training_examples_quality(paths: PipelinePaths) -> dg.AssetCheckResult:
    """Every cohort's crops (shape, finite, HU range), EHR as of each scan (UTC, not after the
    scan, plausible values), the examples' EHR vectors equal to it scan by scan, and labels
    (binary, prevalence within bounds)."""
    t = _thresholds()
    return check_result([r for cohort in COHORTS for r in examples_results(paths, cohort, t)])


# --- drift ----------------------------------------------------------------------------------


def drift_groups(
    paths: PipelinePaths, encoder_path: Path
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Reference/candidate frames per feature group (embeddings from ``encoder_path``)."""
    reference = load_examples(paths.examples(REFERENCE))
    candidate = load_examples(paths.examples(CANDIDATE))
    names = [str(n) for n in reference.ehr_feature_names]
    groups = {
        "ehr": tuple(ehr_latest(s.ehr, s.ehr_mask, names) for s in (reference, candidate)),
        "image": tuple(image_statistics(s.crops_hu, s.scan_mask) for s in (reference, candidate)),
        "embedding": tuple(latest_embeddings(encoder_path, s) for s in (reference, candidate)),
    }
    cross = [cross_modal_errors(encoder_path.parent, s) for s in (reference, candidate)]
    if cross[0] is not None and cross[1] is not None:
        groups["cross_modal"] = (cross[0], cross[1])
    return groups


@dg.asset(
    pool="cohort_drift",
    group_name="diagnosis",
    deps=[diagnostic_models],
    kinds={"python", "markdown"},
    code_version="1",
    description="Drift of the external cohort against the training (internal) cohort: KS and PSI "
    "on EHR features, crop HU statistics, JEPA embeddings and the JEPA predictor's cross-modal "
    "error; report under metrics/drift/, outcome recorded next to the models' card.",
)
def cohort_drift(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    thresholds = DriftThresholds.from_params(params())
    encoder_version, encoder_folder = built_on(context, paths, ENCODERS)
    groups = drift_groups(paths, encoder_folder / "encoder.safetensors")
    result = compare_cohorts(groups, thresholds)
    extra: dict[str, Any] = {"encoder_version": encoder_version}
    if "cross_modal" in groups:
        for name in groups["cross_modal"][0].columns:
            ref, cand = (float(np.nanmean(frame[name])) for frame in groups["cross_modal"])
            extra[f"{name}_error_ratio"] = cand / ref if ref > 0 else float("nan")
    else:
        extra["cross_modal"] = "no pretraining checkpoint with predictor weights found"
    out_dir = paths.metrics / DRIFT_SUBDIR
    report = write_drift_report(result, groups, out_dir, (REFERENCE, CANDIDATE), extra)
    version, folder = built_on(context, paths, MODELS)
    record = {
        "reference": REFERENCE,
        "candidate": CANDIDATE,
        "severity": result.severity,
        "errors": [f"{f.group}/{f.feature}" for f in result.with_severity(ERROR)],
        "counts": result.counts(),
        "report": str(report),
        **extra,
    }
    atomic_write_json(folder / "drift.json", json_safe(record))
    context.log.info(f"cohort drift {CANDIDATE} vs {REFERENCE}: {result.severity}")
    return dg.MaterializeResult(
        metadata={
            "severity": dg.MetadataValue.text(result.severity),
            "models_version": dg.MetadataValue.text(version),
            "report": dg.MetadataValue.path(str(report)),
            "report_md": dg.MetadataValue.md(report.read_text()),
            **flat_numbers(result.counts(), prefix="counts/"),
            **flat_numbers({k: v for k, v in extra.items() if isinstance(v, float)}),
        }
    )


@dg.asset_check(asset=cohort_drift)
def cohort_drift_severity(paths: PipelinePaths) -> dg.AssetCheckResult:
    """Warns when the external cohort drifts at ERROR level from the training cohort."""
    record = json.loads((paths.metrics / DRIFT_SUBDIR / "drift.json").read_text())
    errors = [f"{f['group']}/{f['feature']}" for f in record["features"] if f["severity"] == ERROR]
    return dg.AssetCheckResult(
        passed=record["severity"] != ERROR,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "severity": dg.MetadataValue.text(record["severity"]),
            "errors": dg.MetadataValue.json(errors),
        },
    )


QUALITY_CHECKS = [curated_scans_quality, training_examples_quality, cohort_drift_severity]

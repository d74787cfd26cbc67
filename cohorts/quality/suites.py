"""Great-expectations 1.x suites, one per table, run in an ephemeral (in-memory) context.

Tables: the curated scan index, per-crop statistics, EHR features as of each scan, labels.
Each ``validate_*`` builds its suite fresh from ``QualityThresholds`` (params.yaml
``quality``), runs one ValidationDefinition on a pandas DataFrame and returns a plain
``SuiteResult`` with the failed expectations and example rows, so callers never touch GX
objects. GX is imported inside the functions: it costs seconds, and most callers of this
package (the CLI, Dagster's code location) never validate anything.

Size: over 450 lines as four suites (one per table) sharing one runner; each suite is
short, and splitting them into files would scatter the shared expectation helpers.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from cohorts.ehr.features import AGE_AT_SCAN, add_age_at_scan
from cohorts.example_set import UNLABELED, ExampleSet

STATUSES: tuple[str, ...] = ("ok", "quarantined")
BINARY_EHR_FEATURES: tuple[str, ...] = (
    "sex_female",
    "smoking_current",
    "smoking_former",
    "emphysema",
    "copd",
    "family_history_lung_cancer",
    "prior_cancer",
)
PACK_YEARS = "pack_years"
VISITS = "n_visits_lookback"


@dataclass(frozen=True)
class QualityThresholds:
    """Plausible ranges: the fields of params.yaml ``quality`` (``from_params``); the curation
    sizes the checks compare against (``min_slices``, ``crop_size_vox``) have no default, since
    they must be the curation's own (params.yaml ``curate``)."""

    min_slices: int
    crop_size_vox: int
    spacing_mm: tuple[float, float] = (0.2, 10.0)
    max_slices: int = 2000
    orientation_max_offdiag: float = 0.5
    lung_hu_median: tuple[float, float] = (-950.0, -600.0)
    lung_fraction: tuple[float, float] = (0.05, 0.8)
    hu_range: tuple[float, float] = (-1024.0, 3071.0)
    age_years: tuple[float, float] = (18.0, 110.0)
    pack_years: tuple[float, float] = (0.0, 200.0)
    prevalence: tuple[float, float] = (0.02, 0.98)
    ehr_min_coverage: float = 0.5
    max_examples: int = 5

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> QualityThresholds:
        """From a parsed params.yaml (sections ``quality`` and ``curate``)."""
        q, curate = params["quality"], params["curate"]
        pair = lambda key: (float(q[key][0]), float(q[key][1]))  # noqa: E731
        return cls(
            spacing_mm=pair("spacing_mm"),
            min_slices=int(curate["min_slices"]),
            max_slices=int(q["max_slices"]),
            orientation_max_offdiag=float(q["orientation_max_offdiag"]),
            lung_hu_median=pair("lung_hu_median"),
            lung_fraction=pair("lung_fraction"),
            crop_size_vox=int(curate["crop_size_vox"]),
            hu_range=pair("hu_range"),
            age_years=pair("age_years"),
            pack_years=pair("pack_years"),
            prevalence=pair("prevalence"),
            ehr_min_coverage=float(q["ehr_min_coverage"]),
            max_examples=int(q["max_examples"]),
        )


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that did not hold, with what GX observed and a few offending rows."""

    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    unexpected_count: int | None
    observed_value: Any
    examples: list[Any]

    @property
    def name(self) -> str:
        return f"{self.expectation}({self.column})" if self.column else self.expectation


@dataclass(frozen=True)
class SuiteResult:
    """Outcome of one table's suite: JSON-ready, no GX objects."""

    table: str
    success: bool
    n_rows: int
    n_expectations: int
    failed: list[FailedExpectation]

    @property
    def failed_names(self) -> list[str]:
        return [f"{self.table}: {f.name}" for f in self.failed]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plain(value: Any) -> Any:
    """JSON-ready copy of a GX result value (numpy scalars, timestamps, tuples, NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date | np.datetime64):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _gx_context():  # -> EphemeralDataContext
    """An in-memory GX context with analytics and progress bars off (no network, quiet logs)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_suite(
    table: str,
    frame: pd.DataFrame,
    expectations: list[Any],
    id_columns: list[str],
    max_examples: int,
) -> SuiteResult:
    """Validate ``frame`` against ``expectations`` (GX Expectation objects) in a fresh context.

    Examples of a failed row-level expectation name the rows by ``id_columns`` (those present).
    """
    import great_expectations as gx

    context = _gx_context()
    batch = (
        context.data_sources.add_pandas(f"{table}_source")
        .add_dataframe_asset(table)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{table}_suite"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{table}_validation", data=batch, suite=suite)
    )
    result_format = {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": [c for c in id_columns if c in frame.columns],
        "partial_unexpected_count": max_examples,
    }
    outcome = definition.run(
        batch_parameters={"dataframe": frame.reset_index(drop=True)}, result_format=result_format
    )
    failed = []
    for item in outcome.results:
        if item.success:
            continue
        config = item.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
        res = item.result or {}
        examples = res.get("unexpected_index_list") or res.get("partial_unexpected_list") or []
        observed = res.get("observed_value")
        exception = item.exception_info or {}
        if exception.get("raised_exception"):
            observed = f"error: {exception.get('exception_message')}"
        failed.append(
            FailedExpectation(
                expectation=config.type,
                column=config.kwargs.get("column"),
                kwargs=_plain(kwargs),
                unexpected_count=res.get("unexpected_count"),
                observed_value=_plain(observed),
                examples=_plain(list(examples)[:max_examples]),
            )
        )
    return SuiteResult(
        table=table,
        success=bool(outcome.success),
        n_rows=len(frame),
        n_expectations=len(outcome.results),
        failed=failed,
    )


# --- curated scan index ---------------------------------------------------------------------


def scan_index_expectations(t: QualityThresholds) -> list[Any]:
    """Unique ids, known statuses, quarantine reasons; for accepted series: CT, spacing, slices,
    near-axial orientation and lung-region HU statistics (``cohorts.dicom.curate``).

    An index written before these columns existed fails them (GX raises on a missing column),
    like any other missing column; curation's fingerprint covers its version, so rerunning
    curation on such an output recomputes every series and adds them.
    """
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    ok_rows = {"row_condition": Column("status") == "ok"}
    quarantined_rows = {"row_condition": Column("status") == "quarantined"}
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="series_id"),
        gxe.ExpectColumnValuesToBeUnique(column="series_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="patient_id"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(STATUSES)),
        gxe.ExpectColumnValuesToNotBeNull(column="reason", **quarantined_rows),
        gxe.ExpectColumnValuesToBeInSet(column="modality", value_set=["CT"], **ok_rows),
        gxe.ExpectColumnValuesToNotBeNull(column="volume_path", **ok_rows),
        gxe.ExpectColumnValuesToNotBeNull(column="study_date", **ok_rows),
        gxe.ExpectColumnValuesToBeBetween(
            column="n_slices", min_value=t.min_slices, max_value=t.max_slices, **ok_rows
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="orientation_max_offdiag", **ok_rows),
        gxe.ExpectColumnValuesToBeBetween(
            column="orientation_max_offdiag",
            min_value=0.0,
            max_value=t.orientation_max_offdiag,
            **ok_rows,
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="lung_hu_median", **ok_rows),
        gxe.ExpectColumnValuesToBeBetween(
            column="lung_hu_median",
            min_value=t.lung_hu_median[0],
            max_value=t.lung_hu_median[1],
            **ok_rows,
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="lung_fraction",
            min_value=t.lung_fraction[0],
            max_value=t.lung_fraction[1],
            **ok_rows,
        ),
    ]
    for axis in "zyx":
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=f"spacing_mm_{axis}", **ok_rows),
            gxe.ExpectColumnValuesToBeBetween(
                column=f"spacing_mm_{axis}",
                min_value=t.spacing_mm[0],
                max_value=t.spacing_mm[1],
                **ok_rows,
            ),
            gxe.ExpectColumnValuesToBeBetween(column=f"shape_{axis}", min_value=1, **ok_rows),
        ]
    return expectations


def validate_scan_index(index: pd.DataFrame, t: QualityThresholds, table: str) -> SuiteResult:
    """The curated ``index.parquet`` of one cohort."""
    return run_suite(
        table, index, scan_index_expectations(t), ["series_id", "status"], t.max_examples
    )


# --- crops ----------------------------------------------------------------------------------


def crop_statistics(
    crops_hu: np.ndarray, scan_mask: np.ndarray, patient_id: np.ndarray
) -> pd.DataFrame:
    """One row per present crop of [N, T, S, S, S] HU crops: shape, non-finite count, HU stats.

    Non-finite voxels are left out of the HU statistics (and counted); a crop with no finite
    voxel has NaN statistics, which the suite's not-null expectations catch.
    """
    mask = np.asarray(scan_mask, dtype=bool)
    where = np.argwhere(mask)
    crops = np.asarray(crops_hu)[mask]
    values = crops.reshape(len(crops), int(np.prod(crops.shape[1:]))).astype(np.float64)
    finite = np.isfinite(values)
    clean = np.where(finite, values, np.nan)
    with warnings.catch_warnings():  # all-NaN rows give NaN statistics on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = {
            "hu_min": np.nanmin(clean, axis=1) if len(clean) else np.empty(0),
            "hu_max": np.nanmax(clean, axis=1) if len(clean) else np.empty(0),
            "hu_mean": np.nanmean(clean, axis=1) if len(clean) else np.empty(0),
            "hu_std": np.nanstd(clean, axis=1) if len(clean) else np.empty(0),
        }
    shape = crops.shape[1:] if crops.ndim == 4 else (0, 0, 0)
    return pd.DataFrame(
        {
            "patient_id": np.asarray(patient_id)[where[:, 0]],
            "timepoint": where[:, 1],
            "shape_z": shape[0],
            "shape_y": shape[1],
            "shape_x": shape[2],
            "n_nonfinite": (~finite).sum(axis=1),
            **stats,
        }
    )


def crop_expectations(t: QualityThresholds) -> list[Any]:
    """Every crop S^3 at the configured size, finite, within the HU range, not constant."""
    import great_expectations.expectations as gxe

    s = t.crop_size_vox
    low, high = t.hu_range
    expectations = [gxe.ExpectTableRowCountToBeBetween(min_value=1)]
    for axis in "zyx":
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(column=f"shape_{axis}", min_value=s, max_value=s)
        )
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column="n_nonfinite", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToNotBeNull(column="hu_min"),
        gxe.ExpectColumnValuesToNotBeNull(column="hu_max"),
        gxe.ExpectColumnValuesToBeBetween(column="hu_min", min_value=low, max_value=high),
        gxe.ExpectColumnValuesToBeBetween(column="hu_max", min_value=low, max_value=high),
        gxe.ExpectColumnValuesToBeBetween(column="hu_std", min_value=0.0, strict_min=True),
    ]
    return expectations


def validate_crops(stats: pd.DataFrame, t: QualityThresholds, table: str) -> SuiteResult:
    """Per-crop statistics (``crop_statistics``) of one cohort's training examples."""
    return run_suite(
        table, stats, crop_expectations(t), ["patient_id", "timepoint"], t.max_examples
    )


# --- EHR features as of each scan -------------------------------------------------------------


def _tz_name(series: pd.Series) -> str:
    return str(getattr(series.dtype, "tz", None))


def _as_utc(series: pd.Series) -> pd.Series:
    """Same instants in UTC (naive read as UTC) so frames with another zone can still be joined."""
    values = pd.to_datetime(series)
    if getattr(values.dtype, "tz", None) is None:
        return values.dt.tz_localize("UTC")
    return values.dt.tz_convert("UTC")


def ehr_scan_frame(
    scans: pd.DataFrame, snapshots: pd.DataFrame, demographics: pd.DataFrame
) -> pd.DataFrame:
    """One row per scan: the EHR snapshot in force at the scan (latest at or before it).

    scans: patient_id, series_id, scan_timestamp. snapshots: patient_id, event_timestamp and
    feature columns (the feature store's offline rows). demographics: patient_id, sex_female,
    birth_reference_day. The result keeps both timestamps (``feature_timestamp`` is the snapshot's)
    and the time zone each came with, so the suite can hold them to UTC and to "not after".
    """
    left = scans.assign(
        scan_timestamp_tz=_tz_name(scans["scan_timestamp"]),
        scan_timestamp=_as_utc(scans["scan_timestamp"]),
    ).sort_values("scan_timestamp")
    right = snapshots.drop(columns=["cohort"], errors="ignore")
    right = right.assign(
        feature_timestamp_tz=_tz_name(right["event_timestamp"]),
        feature_timestamp=_as_utc(right["event_timestamp"]),
    ).drop(columns="event_timestamp")
    right = right.sort_values("feature_timestamp")
    frame = pd.merge_asof(
        left,
        right,
        left_on="scan_timestamp",
        right_on="feature_timestamp",
        by="patient_id",
        direction="backward",
    )
    people = demographics.drop(columns=["cohort", "event_timestamp"], errors="ignore")
    frame = frame.merge(people.drop_duplicates("patient_id"), on="patient_id", how="left")
    frame = add_age_at_scan(frame, "scan_timestamp")
    return frame.sort_values(["patient_id", "scan_timestamp"]).reset_index(drop=True)


def ehr_expectations(feature_names: list[str], t: QualityThresholds) -> list[Any]:
    """Keys present, timestamps UTC and not after the scan, features mostly present and plausible."""
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="patient_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="series_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="scan_timestamp"),
        gxe.ExpectColumnValuesToBeInSet(column="scan_timestamp_tz", value_set=["UTC"]),
        gxe.ExpectColumnValuesToBeInSet(column="feature_timestamp_tz", value_set=["UTC"]),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="scan_timestamp",
            column_B="feature_timestamp",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="feature_timestamp", mostly=t.ehr_min_coverage),
    ]
    for name in feature_names:
        expectations.append(
            gxe.ExpectColumnValuesToNotBeNull(column=name, mostly=t.ehr_min_coverage)
        )
        if name in BINARY_EHR_FEATURES:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=[0, 1]))
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(
            column=AGE_AT_SCAN, min_value=t.age_years[0], max_value=t.age_years[1]
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=PACK_YEARS, min_value=t.pack_years[0], max_value=t.pack_years[1]
        ),
    ]
    if VISITS in feature_names:
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=VISITS, min_value=0))
    return expectations


def validate_ehr_features(
    frame: pd.DataFrame, feature_names: list[str], t: QualityThresholds, table: str
) -> SuiteResult:
    """EHR features as of each scan (``ehr_scan_frame``) of one cohort."""
    return run_suite(
        table,
        frame,
        ehr_expectations(feature_names, t),
        ["patient_id", "series_id"],
        t.max_examples,
    )


def ehr_array_frame(
    examples: ExampleSet,
    nodules: pd.DataFrame,
    frame: pd.DataFrame,
    ttl_days: int,
) -> pd.DataFrame:
    """One row per scan slot of the training examples: is its ``ehr`` vector (and ehr_mask)
    the point-in-time EHR of that very scan?

    ``frame`` is ``ehr_scan_frame`` (computed here from the Feast sources, independently of
    the feature store's join); slots follow the index-nodule rule of the examples
    (``cohorts.examples.index_nodule_track``). A snapshot older than ``ttl_days`` at the scan
    has expired (the clinical views' TTL): its history and signature values count as absent.
    A scan given another day's EHR, a later one above all, fails ``ehr_matches``.
    """
    from cohorts.examples import index_nodule_track

    names = [str(n) for n in examples.ehr_feature_names]
    lasting = {"sex_female", AGE_AT_SCAN}  # demographics: no TTL
    expiring = [n for n in names if n not in lasting]
    by_series = frame.drop_duplicates("series_id").set_index("series_id")
    if len(by_series):
        age = by_series["scan_timestamp"] - by_series["feature_timestamp"]
        by_series.loc[age > pd.Timedelta(days=ttl_days), expiring] = np.nan
    row_of = {str(p): i for i, p in enumerate(examples.patient_id)}
    t = examples.scan_mask.shape[1]
    rows = []
    for patient, scans in index_nodule_track(nodules).groupby("patient_id", sort=True):
        row = row_of.get(str(patient))
        scans = scans.tail(t)
        for slot, series in enumerate(scans["series_id"], start=t - len(scans)):
            expected = (
                by_series.loc[series, names].to_numpy(dtype=np.float64)
                if series in by_series.index
                else np.full(len(names), np.nan)
            )
            present = bool(np.isfinite(expected).any())
            matches = row is not None and bool(examples.ehr_mask[row, slot]) == present
            if matches and present:
                got = examples.ehr[row, slot].astype(np.float64)
                matches = bool(np.allclose(got, np.nan_to_num(expected), rtol=1e-5, atol=1e-5))
            rows.append(
                {"patient_id": patient, "series_id": series, "slot": slot, "ehr_matches": matches}
            )
    return pd.DataFrame(rows, columns=["patient_id", "series_id", "slot", "ehr_matches"])


def validate_ehr_array(frame: pd.DataFrame, t: QualityThresholds, table: str) -> SuiteResult:
    """Every scan slot's EHR vector is that scan's point-in-time EHR (``ehr_array_frame``)."""
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="ehr_matches", value_set=[True]),
    ]
    return run_suite(table, frame, expectations, ["patient_id", "series_id"], t.max_examples)


# --- labels ---------------------------------------------------------------------------------


def label_frame(patient_id: np.ndarray, label: np.ndarray) -> pd.DataFrame:
    """The labeled rows (label != -1) of a cohort's training examples."""
    frame = pd.DataFrame({"patient_id": np.asarray(patient_id), "label": np.asarray(label)})
    return frame[frame["label"] != UNLABELED].reset_index(drop=True)


def label_expectations(t: QualityThresholds) -> list[Any]:
    """Binary labels, one per patient, prevalence within the configured bounds."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="patient_id"),
        gxe.ExpectColumnValuesToBeUnique(column="patient_id"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        gxe.ExpectColumnMeanToBeBetween(
            column="label", min_value=t.prevalence[0], max_value=t.prevalence[1]
        ),
    ]


def validate_labels(frame: pd.DataFrame, t: QualityThresholds, table: str) -> SuiteResult:
    """Labels (``label_frame``) of one labeled cohort."""
    return run_suite(table, frame, label_expectations(t), ["patient_id"], t.max_examples)

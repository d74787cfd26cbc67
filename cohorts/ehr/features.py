"""EHR feature tables for the feature store, one call per cohort.

Each table is one row per (patient_id, event_timestamp) with a ``cohort`` column; patient_id
is ``pseudonymise(person_id, key, "patient")`` so EHR rows join the curated CT ids, and no
MRN or birth date leaves this module (year of birth only). Timestamps are the snapshot day
at 00:00 UTC (tz-aware); the snapshot rule is in ``cohorts.ehr.snapshots``. Retrieve a scan's
features with ``scan_timestamp(study_date)``, so the scan-day events count (inclusive rule).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cohorts.ehr.covariates import CLINICAL_HISTORY_FEATURES, DEMOGRAPHIC_FEATURES, clinical_history
from cohorts.ehr.intensities import code_intensities
from cohorts.ehr.omop import OmopTables, read_omop
from cohorts.ehr.signatures import ClinicalSignatures, signature_names
from cohorts.ehr.snapshots import snapshot_index
from cohorts.privacy import pseudonymise

DEMOGRAPHICS = "demographics"
CLINICAL_HISTORY = "clinical_history"
CLINICAL_SIGNATURES = "clinical_signatures"
VIEWS: list[str] = [DEMOGRAPHICS, CLINICAL_HISTORY, CLINICAL_SIGNATURES]
AGE_AT_SCAN = "age_at_scan_years"
KEY_COLUMNS: list[str] = ["patient_id", "event_timestamp", "cohort"]


def ehr_feature_names(n_signatures: int) -> list[str]:
    """The ordered EHR feature vector the models read (``ehr`` in the training examples)."""
    return ["sex_female", AGE_AT_SCAN, *CLINICAL_HISTORY_FEATURES, *signature_names(n_signatures)]


EHR_FEATURE_NAMES: list[str] = ehr_feature_names(16)  # params.yaml features.n_signatures


@dataclass
class CohortFeatures:
    """Feature tables of one cohort (view name -> frame) and the data-quality counts."""

    tables: dict[str, pd.DataFrame]
    quality: dict[str, int | list[str]]


def scan_timestamp(study_date: pd.Series | dt.date | str) -> pd.Series | pd.Timestamp:
    """The entity timestamp of a scan: its study day at 00:00 UTC (tz-aware)."""
    if isinstance(study_date, pd.Series):
        return pd.to_datetime(study_date).dt.normalize().dt.tz_localize("UTC")
    return pd.Timestamp(study_date).normalize().tz_localize("UTC")


def add_age_at_scan(df: pd.DataFrame, scan_ts_col: str = "event_timestamp") -> pd.DataFrame:
    """Add age_at_scan_years from year_of_birth and the scan time (birth assumed mid-year).

    Computed after retrieval because age depends on the scan, not on the EHR snapshot.
    """
    scan = pd.to_datetime(df[scan_ts_col], utc=True)
    days_in_year = np.where(scan.dt.is_leap_year, 366.0, 365.0)
    decimal_year = scan.dt.year + (scan.dt.dayofyear - 1) / days_in_year
    out = df.copy()
    out[AGE_AT_SCAN] = (decimal_year - (df["year_of_birth"].astype("float64") + 0.5)).astype(
        "float32"
    )
    return out


def _utc_midnight(dates: pd.Series) -> pd.Series:
    return dates.astype("datetime64[ns]").dt.tz_localize("UTC")


def _cohort_intensities(omop: OmopTables, lookback_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    snapshots = snapshot_index(omop.events, lookback_days, omop.as_of)
    return snapshots, code_intensities(snapshots, omop.events, lookback_days)


def fit_signatures(
    archive_ehr_dir: Path,
    n_components: int,
    lookback_days: int,
    as_of: dt.date | None = None,
    random_state: int = 0,
) -> ClinicalSignatures:
    """Fit the signatures on the archive cohort's intensities (never on a labeled cohort)."""
    omop = read_omop(archive_ehr_dir, as_of=as_of)
    _, intensities = _cohort_intensities(omop, lookback_days)
    return ClinicalSignatures(n_components, random_state=random_state).fit(intensities)


def build_feature_tables(
    ehr_dir: Path,
    cohort: str,
    key: bytes,
    signatures: ClinicalSignatures,
    lookback_days: int,
    as_of: dt.date | None = None,
) -> CohortFeatures:
    """Read one cohort's OMOP export and build the three feature-view tables."""
    omop = read_omop(ehr_dir, as_of=as_of)
    ids = {pid: pseudonymise(pid, key, "patient") for pid in omop.person["person_id"]}

    person = omop.person
    demographics = pd.DataFrame(
        {
            "patient_id": person["person_id"].map(ids),
            "event_timestamp": pd.to_datetime(
                {"year": person["year_of_birth"], "month": 1, "day": 1}
            ).dt.tz_localize("UTC"),
            "cohort": cohort,
            "sex_female": person["sex_female"].astype("float32"),
            "year_of_birth": person["year_of_birth"].astype("int64"),
        }
    )

    snapshots, intensities = _cohort_intensities(omop, lookback_days)
    keys = pd.DataFrame(
        {
            "patient_id": snapshots["person_id"].map(ids),
            "event_timestamp": _utc_midnight(snapshots["date"]),
            "cohort": cohort,
        },
        index=snapshots.index,
    )
    history = pd.concat([keys, clinical_history(snapshots, omop.events, lookback_days)], axis=1)
    signature_values = signatures.transform(intensities)
    signature_table = pd.concat([keys, signature_values], axis=1)

    unseen = signatures.unseen_codes(intensities)
    quality = omop.quality.to_dict()
    quality.update(
        {
            "snapshots": len(snapshots),
            "patients_with_events": int(snapshots["person_id"].nunique()),
            "unseen_code_groups": len(unseen),
            "unseen_code_entries": int(sum(unseen.values())),
        }
    )
    tables = {
        DEMOGRAPHICS: demographics[KEY_COLUMNS + DEMOGRAPHIC_FEATURES].reset_index(drop=True),
        CLINICAL_HISTORY: history.reset_index(drop=True),
        CLINICAL_SIGNATURES: signature_table.reset_index(drop=True),
    }
    return CohortFeatures(tables=tables, quality=quality)


def combine_cohorts(parts: list[CohortFeatures]) -> dict[str, pd.DataFrame]:
    """Stack several cohorts' tables per view (patient ids are distinct across cohorts)."""
    return {view: pd.concat([p.tables[view] for p in parts], ignore_index=True) for view in VIEWS}

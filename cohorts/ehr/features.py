"""EHR feature tables for the feature store, one call per cohort.

Each table is one row per (patient_id, event_timestamp) with a ``cohort`` column; patient_id
is ``pseudonymise(person_id, key, "patient")`` so EHR rows join the curated CT ids, and no
MRN or birth date leaves this module. Timestamps are the snapshot day at 00:00 UTC
(tz-aware); the snapshot rule is in ``cohorts.ehr.snapshots``. Retrieve a scan's features
with ``scan_timestamp(study_date)``, so the scan-day events count (inclusive rule).

Dates are shifted per patient like the CT's (``cohorts.privacy.date_shift_days``, the same
key and setting): features are computed on the real dates, then every timestamp of the
patient moves by the shift, so the values are those of the unshifted run by construction.
Birth is kept as ``birth_reference_day`` (1 July of the year of birth, shifted alike), so
age at a scan is the same with and without the shift.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from cohorts.ehr.covariates import CLINICAL_HISTORY_FEATURES, DEMOGRAPHIC_FEATURES, clinical_history
from cohorts.ehr.intensities import code_intensities
from cohorts.ehr.omop import OmopTables, read_omop
from cohorts.ehr.signatures import ClinicalSignatures, signature_names
from cohorts.ehr.snapshots import snapshot_index
from cohorts.privacy import date_shift_days, pseudonymise

DEMOGRAPHICS = "demographics"
CLINICAL_HISTORY = "clinical_history"
CLINICAL_SIGNATURES = "clinical_signatures"
VIEWS: list[str] = [DEMOGRAPHICS, CLINICAL_HISTORY, CLINICAL_SIGNATURES]
AGE_AT_SCAN = "age_at_scan_years"
BIRTH_REFERENCE_DAY = "birth_reference_day"  # days since 1970-01-01; see birth_reference_days
DAYS_PER_YEAR = 365.25
_EPOCH = pd.Timestamp("1970-01-01")
_EPOCH_DATE = dt.date(1970, 1, 1)
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


def birth_reference_days(year_of_birth: pd.Series, shift_days: pd.Series | int = 0) -> pd.Series:
    """Day number (days since 1970-01-01) of 1 July of the year of birth, plus the date shift.

    Mid-year because the year is all of the birth date that is kept (HIPAA Safe Harbor);
    shifted with the patient's other dates so that ages are unchanged by the shift.
    """
    mid_year = pd.to_datetime(pd.DataFrame({"year": year_of_birth, "month": 7, "day": 1}))
    return ((mid_year - _EPOCH).dt.days + shift_days).astype("int64")


def age_years(scan_day: ArrayLike, birth_reference_day: ArrayLike) -> np.ndarray:
    """The age rule: (scan day - birth reference day) / 365.25, in years, float32.

    Both are day numbers (days since 1970-01-01); a difference of two, so the same whether or
    not both dates are shifted. ``add_age_at_scan`` applies it to a table, serving to one
    scan (``scan_day_number``); NaN birth gives NaN.
    """
    scan = np.asarray(scan_day, dtype=np.float64)
    birth = np.asarray(birth_reference_day, dtype=np.float64)
    return ((scan - birth) / DAYS_PER_YEAR).astype(np.float32)


def scan_day_number(scan_date: dt.date) -> int:
    """The day number of a scan's study day, as ``add_age_at_scan`` reads it from
    ``scan_timestamp(scan_date)`` (00:00 UTC that day)."""
    return (scan_date - _EPOCH_DATE).days


def add_age_at_scan(df: pd.DataFrame, scan_ts_col: str = "event_timestamp") -> pd.DataFrame:
    """Add age_at_scan_years (``age_years``) at each row's scan day.

    Computed after retrieval because age depends on the scan, not on the EHR snapshot.
    """
    scan = pd.to_datetime(df[scan_ts_col], utc=True).dt.tz_convert(None).dt.normalize()
    scan_day = (scan - _EPOCH).dt.days.to_numpy()
    birth_day = pd.to_numeric(df[BIRTH_REFERENCE_DAY], errors="coerce").to_numpy()
    out = df.copy()
    out[AGE_AT_SCAN] = age_years(scan_day, birth_day)
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
    *,
    date_shift_max_days: int,
) -> CohortFeatures:
    """Read one cohort's OMOP export and build the three feature-view tables.

    ``date_shift_max_days``: the curation's setting (cohorts/privacy.py PrivacyConfig); every
    timestamp of a patient moves by ``date_shift_days(person_id, key, ...)``.
    """
    omop = read_omop(ehr_dir, as_of=as_of)
    person = omop.person
    ids = {pid: pseudonymise(pid, key, "patient") for pid in person["person_id"]}
    shifts = {pid: date_shift_days(pid, key, date_shift_max_days) for pid in person["person_id"]}

    birth_day = birth_reference_days(person["year_of_birth"], person["person_id"].map(shifts))
    demographics = pd.DataFrame(
        {
            "patient_id": person["person_id"].map(ids),
            "event_timestamp": (_EPOCH + pd.to_timedelta(birth_day, unit="D")).dt.tz_localize(
                "UTC"
            ),
            "cohort": cohort,
            "sex_female": person["sex_female"].astype("float32"),
            BIRTH_REFERENCE_DAY: birth_day,
        }
    )

    snapshots, intensities = _cohort_intensities(omop, lookback_days)
    shift = pd.to_timedelta(snapshots["person_id"].map(shifts).astype("int64"), unit="D")
    keys = pd.DataFrame(
        {
            "patient_id": snapshots["person_id"].map(ids),
            "event_timestamp": _utc_midnight(snapshots["date"] + shift),
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

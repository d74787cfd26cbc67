"""Read and validate the OMOP-shaped EHR export of one cohort (docs/ARCHITECTURE.md, "Raw archive").

A hospital export is never clean, so every rule below either drops a row and counts it in
``OmopQuality`` or, when a table is structurally broken (file or column missing), raises
``OmopFormatError`` naming the file and the columns. Rules, applied in this order:

persons (person.csv)
  1. empty person_id -> dropped (``missing_person_id``)
  2. repeated person_id -> first row kept (``duplicate_persons``)
  3. year_of_birth missing, non-integer or outside [1850, as_of year] -> person dropped with
     all their events (``missing_year_of_birth``); without it there is no age
  4. gender_source_value not F/M -> kept, ``sex_female`` is NaN (``missing_sex``)
events (condition_occurrence, observation, measurement, drug_exposure)
  5. date missing or unparseable -> dropped (``bad_dates``); a timestamp with a time of day
     but no zone is read as UTC (``naive_timestamps``), one with a zone is converted to UTC
     (``zoned_timestamps``); either way only the UTC calendar date is kept
  6. empty code -> dropped (``empty_codes``); a code that does not fit the table's vocabulary
     (ICD-10-CM conditions; ICD-10-CM, SNOMED or LOINC observations; LOINC measurements;
     RxNorm drugs) -> dropped (``unknown_codes``)
  7. person_id not among the kept persons -> dropped (``orphan_events``)
  8. dated after ``as_of`` -> dropped (``future_events``)
  9. dated before birth (birth_datetime, else year/month/day of birth, else 1 January of
     year_of_birth) -> dropped (``events_before_birth``)
 10. exact repeats of (person, date, domain, code, value) -> one kept (``duplicate_events``)
 11. value_as_number present but not a number -> value NaN, event kept (``bad_values``)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

EVENT_COLUMNS = ["person_id", "date", "domain", "code", "value"]

# table -> (domain, code column, date column, value column or None)
EVENT_TABLES: dict[str, tuple[str, str, str, str | None]] = {
    "condition_occurrence": ("condition", "condition_source_value", "condition_start_date", None),
    "observation": (
        "observation",
        "observation_source_value",
        "observation_date",
        "value_as_number",
    ),
    "measurement": (
        "measurement",
        "measurement_source_value",
        "measurement_date",
        "value_as_number",
    ),
    "drug_exposure": ("drug", "drug_source_value", "drug_exposure_start_date", None),
}
PERSON_REQUIRED = ["person_id", "gender_source_value", "year_of_birth"]

ICD10_PATTERN = r"[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?"
LOINC_PATTERN = r"[0-9]{1,7}-[0-9]"
SNOMED_PATTERN = r"[0-9]{6,18}"
RXNORM_PATTERN = r"[0-9]{1,9}"
DOMAIN_PATTERNS: dict[str, str] = {
    "condition": ICD10_PATTERN,
    "observation": f"{ICD10_PATTERN}|{SNOMED_PATTERN}|{LOINC_PATTERN}",
    "measurement": LOINC_PATTERN,
    "drug": RXNORM_PATTERN,
}
_PLAIN_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_ZONE_SUFFIX = r".*(?:Z|[+-][0-9]{2}:?[0-9]{2})"
_MIN_BIRTH_YEAR = 1850


class OmopFormatError(ValueError):
    """A table is structurally broken (missing file or column); the message names both."""


@dataclass
class OmopQuality:
    """Counts of what the validation rules (module docstring) did to one cohort's export."""

    persons_read: int = 0
    persons_kept: int = 0
    missing_person_id: int = 0
    duplicate_persons: int = 0
    missing_year_of_birth: int = 0
    missing_sex: int = 0
    events_read: int = 0
    events_kept: int = 0
    bad_dates: int = 0
    naive_timestamps: int = 0
    zoned_timestamps: int = 0
    empty_codes: int = 0
    unknown_codes: int = 0
    orphan_events: int = 0
    future_events: int = 0
    events_before_birth: int = 0
    duplicate_events: int = 0
    bad_values: int = 0
    unknown_code_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, int | list[str]]:
        return asdict(self)


@dataclass
class OmopTables:
    """Validated EHR of one cohort.

    person: person_id (raw MRN, PHI), sex_female (1.0, 0.0 or NaN), year_of_birth (int),
    birth_date (datetime64, lower bound of the birth date; never leaves cohorts.ehr).
    events: person_id, date (datetime64[ns], UTC calendar day), domain, code (upper case),
    value (float, NaN when the table has no value), sorted by person and date.
    """

    person: pd.DataFrame
    events: pd.DataFrame
    quality: OmopQuality
    as_of: pd.Timestamp


def _read_table(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV as strings; a missing file or column is a format error, not a silent gap."""
    if not path.is_file():
        raise OmopFormatError(f"{path}: file not found (required OMOP table)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise OmopFormatError(
            f"{path.name}: missing column(s) {missing}; found {list(frame.columns)}"
        )
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    return frame


def _parse_dates(raw: pd.Series, quality: OmopQuality) -> pd.Series:
    """ISO dates or timestamps -> naive datetime64 of the UTC calendar day; NaT when unreadable."""
    text = raw.astype("string")
    plain = text.str.fullmatch(_PLAIN_DATE).fillna(False).astype(bool)
    zoned = (~plain & text.str.fullmatch(_ZONE_SUFFIX).fillna(False)).astype(bool)
    parsed = pd.to_datetime(text.astype(object), format="ISO8601", utc=True, errors="coerce")
    ok = parsed.notna()
    quality.naive_timestamps += int((ok & ~plain & ~zoned).sum())
    quality.zoned_timestamps += int((ok & zoned).sum())
    return parsed.dt.tz_convert(None).dt.normalize()


def _birth_lower_bound(person: pd.DataFrame, year: pd.Series) -> pd.Series:
    """Earliest possible birth day: birth_datetime, else year/month/day, else 1 January."""
    fallback = pd.to_datetime(
        pd.DataFrame({"year": year, "month": 1, "day": 1}), errors="coerce"
    ).astype("datetime64[ns]")
    if {"month_of_birth", "day_of_birth"} <= set(person.columns):
        month = pd.to_numeric(person["month_of_birth"], errors="coerce")
        day = pd.to_numeric(person["day_of_birth"], errors="coerce")
        ymd = pd.to_datetime(
            pd.DataFrame({"year": year, "month": month, "day": day}), errors="coerce"
        ).astype("datetime64[ns]")
        fallback = ymd.fillna(fallback)
    if "birth_datetime" in person.columns:
        exact = pd.to_datetime(
            person["birth_datetime"].astype(object), format="ISO8601", utc=True, errors="coerce"
        )
        fallback = (
            exact.dt.tz_convert(None).dt.normalize().astype("datetime64[ns]").fillna(fallback)
        )
    return fallback


def _read_person(ehr_dir: Path, as_of: pd.Timestamp, quality: OmopQuality) -> pd.DataFrame:
    raw = _read_table(ehr_dir / "person.csv", PERSON_REQUIRED)
    quality.persons_read = len(raw)
    has_id = raw["person_id"].notna()
    quality.missing_person_id = int((~has_id).sum())
    raw = raw[has_id]
    repeated = raw["person_id"].duplicated(keep="first")
    quality.duplicate_persons = int(repeated.sum())
    raw = raw[~repeated].reset_index(drop=True)

    year = pd.to_numeric(raw["year_of_birth"], errors="coerce")
    valid_year = year.notna() & (year % 1 == 0) & year.between(_MIN_BIRTH_YEAR, as_of.year)
    quality.missing_year_of_birth = int((~valid_year).sum())
    raw, year = raw[valid_year].reset_index(drop=True), year[valid_year].reset_index(drop=True)

    gender = raw["gender_source_value"].str.upper()
    sex_female = gender.map({"F": 1.0, "M": 0.0}).astype("float64")
    quality.missing_sex = int(sex_female.isna().sum())
    person = pd.DataFrame(
        {
            "person_id": raw["person_id"].astype(str),
            "sex_female": sex_female,
            "year_of_birth": year.astype("int64"),
            "birth_date": _birth_lower_bound(raw, year),
        }
    )
    quality.persons_kept = len(person)
    return person


def _read_events(
    ehr_dir: Path, table: str, quality: OmopQuality, unknown: list[str]
) -> pd.DataFrame:
    domain, code_col, date_col, value_col = EVENT_TABLES[table]
    required = ["person_id", code_col, date_col] + ([value_col] if value_col else [])
    raw = _read_table(ehr_dir / f"{table}.csv", required)
    quality.events_read += len(raw)

    dates = _parse_dates(raw[date_col], quality)
    code = raw[code_col].str.upper()
    if value_col:
        value = pd.to_numeric(raw[value_col], errors="coerce")
        quality.bad_values += int((raw[value_col].notna() & value.isna()).sum())
    else:
        value = pd.Series(np.nan, index=raw.index)
    frame = pd.DataFrame(
        {
            "person_id": raw["person_id"],
            "date": dates,
            "domain": domain,
            "code": code,
            "value": value,
        }
    )

    bad_date = frame["date"].isna()
    quality.bad_dates += int(bad_date.sum())
    frame = frame[~bad_date]
    empty = frame["code"].isna()
    quality.empty_codes += int(empty.sum())
    frame = frame[~empty]
    known = frame["code"].str.fullmatch(DOMAIN_PATTERNS[domain]).astype(bool)
    quality.unknown_codes += int((~known).sum())
    unknown.extend(frame.loc[~known, "code"].unique().tolist())
    return frame[known]


def read_omop(ehr_dir: Path, as_of: dt.date | pd.Timestamp | None = None) -> OmopTables:
    """Read person + the four event tables of ``ehr_dir`` and apply the rules above.

    ``as_of`` (default: today, UTC) is the export date; later events cannot have happened yet.
    """
    ehr_dir = Path(ehr_dir)
    as_of_ts = pd.Timestamp(as_of if as_of is not None else dt.datetime.now(dt.UTC).date())
    as_of_ts = (as_of_ts.tz_convert(None) if as_of_ts.tzinfo else as_of_ts).normalize()
    quality = OmopQuality()
    person = _read_person(ehr_dir, as_of_ts, quality)

    unknown: list[str] = []
    frames = [_read_events(ehr_dir, table, quality, unknown) for table in EVENT_TABLES]
    events = pd.concat(frames, ignore_index=True)
    quality.unknown_code_examples = sorted(set(unknown))[:20]

    orphan = ~events["person_id"].isin(person["person_id"])
    quality.orphan_events = int(orphan.sum())
    events = events[~orphan]
    future = events["date"] > as_of_ts
    quality.future_events = int(future.sum())
    events = events[~future]
    birth = events["person_id"].map(person.set_index("person_id")["birth_date"])
    before_birth = events["date"] < birth
    quality.events_before_birth = int(before_birth.sum())
    events = events[~before_birth]
    repeated = events.duplicated(subset=EVENT_COLUMNS, keep="first")
    quality.duplicate_events = int(repeated.sum())
    events = events[~repeated]

    events = events.sort_values(["person_id", "date", "domain", "code"], kind="stable")
    events = events.reset_index(drop=True)[EVENT_COLUMNS]
    events["date"] = events["date"].astype("datetime64[ns]")
    quality.events_kept = len(events)
    return OmopTables(person=person, events=events, quality=quality, as_of=as_of_ts)

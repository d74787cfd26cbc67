"""Synthetic OMOP EHR exports for the tests: the CSV headers curation and the features read,
a writer, and a random archive to fit signatures on (shared by the Feast and sensor tests)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1] / "feature_repo"
AS_OF = dt.date(2024, 1, 1)
LOOKBACK = 365
TTL_DAYS = 3650
N_SIG = 3
SIGNATURES = [f"sig_{k:02d}" for k in range(N_SIG)]
ARCHIVE_CODES = ["J44.9", "J43.1", "F17.210", "Z87.891", "E11.9", "I10", "Z85.3", "R91.1"]
HEADERS = {
    "person": "person_id,gender_source_value,year_of_birth,month_of_birth,day_of_birth,birth_datetime,care_site_id",
    "condition_occurrence": "person_id,condition_source_value,condition_start_date",
    "observation": "person_id,observation_source_value,observation_date,value_as_number,value_as_string",
    "measurement": "person_id,measurement_source_value,measurement_date,value_as_number,unit_source_value",
    "drug_exposure": "person_id,drug_source_value,drug_exposure_start_date",
}


def write_ehr(ehr_dir: Path, tables: dict[str, list[str]]) -> Path:
    ehr_dir.mkdir(parents=True, exist_ok=True)
    for table, header in HEADERS.items():
        (ehr_dir / f"{table}.csv").write_text("\n".join([header, *tables.get(table, [])]) + "\n")
    return ehr_dir


def archive_ehr(ehr_dir: Path, n_persons: int = 40) -> Path:
    rng = np.random.default_rng(7)
    persons = [f"R{i},{'F' if i % 2 else 'M'},{1940 + i % 30},1,1,,1" for i in range(n_persons)]
    conditions, drugs = [], []
    for _ in range(n_persons * 12):
        pid, day = (
            f"R{rng.integers(n_persons)}",
            dt.date(2012, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3000))),
        )
        conditions.append(f"{pid},{rng.choice(ARCHIVE_CODES)},{day.isoformat()}")
        if rng.random() < 0.5:
            drugs.append(f"{pid},{rng.choice(['197361', '1191', '36567'])},{day.isoformat()}")
    return write_ehr(
        ehr_dir, {"person": persons, "condition_occurrence": conditions, "drug_exposure": drugs}
    )

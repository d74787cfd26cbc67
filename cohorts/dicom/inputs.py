"""What curation reads besides the DICOM files: where a cohort's inputs are, and its CSVs.

Why a module: the annotation and label CSVs are the user's arguments (``lungjepa curate
--annotations/--labels``); a file that breaks its contract is refused with its path and the
columns it lacks, before any series is decoded. Labels leave here pseudonymised and with the
patient's date shift applied, as every curated output does (cohorts/privacy.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cohorts.dicom.outputs import LABEL_COLUMNS
from cohorts.privacy import date_shift_days, pseudonymise, shift_date


@dataclass(frozen=True)
class RawCohort:
    """Where one cohort's inputs are.

    root: quarantine paths and file fingerprints are relative to it; the generator's
    ``synthetic.json`` marker is looked for here. dicom_dir: every DICOM file under it, any
    layout. annotations / labels: the optional CSVs (docs/ARCHITECTURE.md, "Raw archive").
    """

    root: Path
    dicom_dir: Path
    annotations: Path | None = None
    labels: Path | None = None

    @classmethod
    def from_folder(
        cls, folder: Path, annotations: Path | None = None, labels: Path | None = None
    ) -> RawCohort:
        """The pipeline's layout when ``folder/dicom`` exists, else a plain folder of DICOM.

        In the pipeline's layout the CSVs beside ``dicom/`` are used unless others are given.
        """
        folder = Path(folder)
        if (folder / "dicom").is_dir():
            return cls(
                root=folder,
                dicom_dir=folder / "dicom",
                annotations=annotations or _existing(folder / "annotations.csv"),
                labels=labels or _existing(folder / "labels.csv"),
            )
        return cls(root=folder, dicom_dir=folder, annotations=annotations, labels=labels)


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def iso_date(dicom_date: str, shift_days: int) -> str | None:
    """DICOM ``YYYYMMDD`` (or ISO) -> shifted ISO ``YYYY-MM-DD``; None when absent or bad."""
    text = dicom_date.strip().replace("-", "")[:8]
    try:
        day = dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None
    return shift_date(day, shift_days).isoformat()


def require_columns(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    """A CSV that breaks its contract is an unusable argument, not a data problem."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; expected {columns}")


def read_annotations(
    path: Path | None,
) -> dict[str, tuple[tuple[int, float, float, float, float], ...]]:
    if path is None:
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"annotations file not found: {path}")
    frame = pd.read_csv(path, dtype={"seriesuid": str})
    require_columns(frame, path, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
    out: dict[str, list[tuple[int, float, float, float, float]]] = {}
    for row, rec in enumerate(frame.itertuples(index=False)):
        out.setdefault(str(rec.seriesuid), []).append(
            (row, float(rec.coordX), float(rec.coordY), float(rec.coordZ), float(rec.diameter_mm))
        )
    return {k: tuple(v) for k, v in out.items()}


def read_labels(path: Path | None, key: bytes, date_shift_max_days: int) -> pd.DataFrame:
    """labels.csv with pseudonymised ids and the patient's date shift applied."""
    if path is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LABEL_COLUMNS}).astype(
            {"malignant": "Int8"}
        )
    frame = pd.read_csv(path, dtype={"person_id": str, "seriesuid": str, "diagnosis_date": str})
    require_columns(frame, path, ["person_id", "seriesuid", "malignant", "diagnosis_date"])
    out = pd.DataFrame(
        {
            "patient_id": [pseudonymise(p, key, "patient") for p in frame["person_id"]],
            "series_id": [pseudonymise(s, key, "series") for s in frame["seriesuid"]],
            "malignant": frame["malignant"].astype("Int8"),
            "diagnosis_date": [
                iso_date(d, date_shift_days(p, key, date_shift_max_days))
                if isinstance(d, str)
                else None
                for p, d in zip(frame["person_id"], frame["diagnosis_date"], strict=True)
            ],
        }
    )
    return out.reindex(columns=LABEL_COLUMNS)

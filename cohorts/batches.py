"""Arrival batches joining the cohorts they extend, and each cohort's membership manifest.

A curated arrival batch (``data/curated/incoming/<batch>/``, the ``incoming_batch`` asset)
joins the unlabeled archive for the next pretraining, or the labeled internal cohort when it
carries labels. Which batches a retraining takes is params.yaml ``retraining.batches``
(``BatchSelection``); a batch whose blocking quality checks failed, or whose ids were made
with another key or date shift than its cohort's, is kept out, with the reason recorded.

A cohort's manifest names exactly what it holds: its members (the cohort and the batches
that joined), the curated series and patients, and a content hash over the nodule table and
every crop's bytes. Its short hash is the cohort version that cards record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohorts.files import atomic_write_json
from cohorts.privacy import check_same_key, read_key_record

BATCH_QUALITY = "quality.json"
"""Beside a curated batch: its blocking checks' outcome (written by the incoming_batch asset)."""
MANIFESTS = "manifests.json"
"""Beside the training examples: {cohort: manifest}."""
PASSED, NONE = "passed", "none"
LABELED_TARGET, UNLABELED_TARGET = "internal", "archive"


@dataclass(frozen=True)
class BatchSelection:
    """Which curated arrival batches join the cohorts (params.yaml ``retraining.batches``).

    mode "passed": every batch whose blocking quality checks passed; "none": no batch;
    "listed": only the batches in ``names`` (and only if their checks passed too).
    """

    mode: str = PASSED
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in (PASSED, NONE, "listed"):
            raise ValueError(f"retraining.batches: unknown mode {self.mode!r}")
        if self.mode == "listed" and not self.names:
            raise ValueError("retraining.batches: an empty list; write `none` to take no batch")

    @classmethod
    def from_value(cls, value: str | Sequence[str]) -> BatchSelection:
        """``passed``, ``none``, or a list of batch names (a one-item list of a mode is the mode)."""
        if isinstance(value, str):
            value = [value]
        names = tuple(str(v) for v in value)
        if len(names) == 1 and names[0] in (PASSED, NONE):
            return cls(mode=names[0])
        return cls(mode="listed", names=names)

    def as_list(self) -> list[str]:
        """The value as a list (a Dagster config field): ``["passed"]``, ``["none"]`` or names."""
        return list(self.names) if self.mode == "listed" else [self.mode]


@dataclass(frozen=True)
class BatchDecision:
    """One batch and whether it joins: ``cohort`` is "archive" / "internal", or None if kept out."""

    batch: str
    cohort: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "cohort": self.cohort, "reason": self.reason}


def write_batch_quality(folder: Path, passed: bool, failed: Sequence[str]) -> None:
    """Record a curated batch's blocking checks (names of failed expectations, no data rows)."""
    atomic_write_json(Path(folder) / BATCH_QUALITY, {"passed": passed, "failed": list(failed)})


def target_cohort(folder: Path) -> str:
    """ "internal" when the batch carries labels (a labels.csv that curation kept), else "archive"."""
    labels = Path(folder) / "labels.parquet"
    has_labels = labels.is_file() and len(pd.read_parquet(labels, columns=["patient_id"])) > 0
    return LABELED_TARGET if has_labels else UNLABELED_TARGET


def _decide(
    folder: Path,
    selection: BatchSelection,
    records: Mapping[str, Any],
    crop_shapes: Mapping[str, Sequence[int]],
) -> BatchDecision:
    name = folder.name
    if selection.mode == NONE:
        return BatchDecision(name, None, "retraining.batches is `none`")
    if selection.mode == "listed" and name not in selection.names:
        return BatchDecision(name, None, "not in retraining.batches")
    quality_path = folder / BATCH_QUALITY
    if not quality_path.is_file():
        return BatchDecision(name, None, "no quality record: its curation has not finished")
    quality = json.loads(quality_path.read_text())
    if not quality.get("passed"):
        failed = ", ".join(quality.get("failed", [])) or "unknown"
        return BatchDecision(name, None, f"blocking quality checks failed: {failed}")
    if not (folder / "nodules.parquet").is_file():
        return BatchDecision(name, None, "no nodules.parquet")
    nodules = pd.read_parquet(folder / "nodules.parquet")
    if len(nodules) == 0:
        return BatchDecision(name, None, "no curated nodule to build an example from")
    cohort = target_cohort(folder)
    try:
        check_same_key(f"batch {name}", read_key_record(folder), records.get(cohort, {}))
    except ValueError as error:
        return BatchDecision(name, None, f"cannot join {cohort}: {error}")
    expected, shape = crop_shapes.get(cohort), crop_shape(nodules, folder)
    if expected is not None and tuple(expected) != shape:
        return BatchDecision(
            name,
            None,
            f"cannot join {cohort}: crops of shape {shape}, the cohort's are {tuple(expected)}; "
            "curate the batch with the cohort's curate settings",
        )
    kind = "labeled" if cohort == LABELED_TARGET else "unlabeled"
    return BatchDecision(name, cohort, f"{kind}; blocking checks passed")


def select_batches(
    incoming_root: Path,
    selection: BatchSelection,
    records: Mapping[str, Any],
    crop_shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[BatchDecision]:
    """A decision for each curated batch under ``incoming_root`` (sorted by name), plus one for
    each listed name that was never curated.

    records: each cohort's key record (a batch must share its cohort's key and date shift);
    crop_shapes: each cohort's crop shape in voxels (a batch's crops must have it).
    """
    root = Path(incoming_root)
    folders = (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.is_dir()
        else []
    )
    decisions = [_decide(folder, selection, records, crop_shapes or {}) for folder in folders]
    seen = {folder.name for folder in folders}
    decisions += [
        BatchDecision(name, None, "listed in retraining.batches but never curated")
        for name in selection.names
        if name not in seen
    ]
    return decisions


def _read(folder: Path, prefix: str, table: str) -> pd.DataFrame:
    path = folder / f"{table}.parquet"
    if table == "labels" and not path.is_file():  # a cohort curated without labels.csv
        return pd.DataFrame(columns=["patient_id", "series_id", "malignant", "diagnosis_date"])
    frame = pd.read_parquet(path)
    if table == "nodules":  # crops are found from the common root
        frame["crop_path"] = prefix + "/" + frame["crop_path"].astype(str)
    return frame


def cohort_members(
    curated_root: Path, cohort: str, decisions: Sequence[BatchDecision]
) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """(members, nodules, labels) of ``cohort`` with the batches that join it.

    Members are folders relative to ``curated_root`` ("archive", "incoming/b1"); nodules'
    ``crop_path`` is made relative to ``curated_root`` so one crop root serves them all. A
    patient in two members keeps each member's nodule ids (matching across batches is per
    curation run), so the latest scan decides the index nodule as always.
    """
    root = Path(curated_root)
    members = [cohort] + [f"incoming/{d.batch}" for d in decisions if d.cohort == cohort]
    parts = [_read(root / m, m, "nodules").assign(member=m) for m in members]
    nodules = pd.concat(parts, ignore_index=True)
    labels = pd.concat([_read(root / m, m, "labels") for m in members], ignore_index=True)
    in_two = nodules.groupby("series_id")["member"].nunique()
    if (in_two > 1).any():
        series = in_two[in_two > 1].index[0]
        raise ValueError(
            f"{cohort}: series {series} is curated in two of {members}; the same scan must not "
            "arrive twice (remove it from the later batch)"
        )
    return members, nodules.drop(columns="member"), labels


def manifest(members: Sequence[str], nodules: pd.DataFrame, curated_root: Path) -> dict[str, Any]:
    """A cohort's membership: members, sorted series and patients, and a content hash over the
    nodule table and every crop file's bytes (so a re-curated crop changes the version)."""
    digest = hashlib.sha256()
    columns = ["patient_id", "series_id", "study_date", "nodule_id", "diameter_mm", "crop_path"]
    table = nodules[columns].astype(str).sort_values(["series_id", "crop_path"])
    digest.update(table.to_csv(index=False).encode())
    for crop in table["crop_path"]:
        digest.update(hashlib.sha256((Path(curated_root) / crop).read_bytes()).digest())
    series = sorted(nodules["series_id"].unique())
    patients = sorted(nodules["patient_id"].unique())
    return {
        "version": digest.hexdigest()[:12],
        "members": list(members),
        "n_series": len(series),
        "n_patients": len(patients),
        "n_nodules": int(len(nodules)),
        "series": series,
        "patients": patients,
    }


def manifest_summary(manifests: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What a card records of each cohort's manifest: version, members, counts (no id lists)."""
    keep = ("version", "members", "n_series", "n_patients", "n_nodules")
    return {cohort: {k: m[k] for k in keep} for cohort, m in manifests.items()}


def read_manifests(examples_dir: Path) -> dict[str, Any]:
    """``examples_dir/manifests.json``; {} when examples were built before manifests existed."""
    path = Path(examples_dir) / MANIFESTS
    return json.loads(path.read_text()) if path.is_file() else {}


def crop_shape(nodules: pd.DataFrame, curated_root: Path) -> tuple[int, ...]:
    """Shape of the first crop (every crop of one curation run has it)."""
    first = Path(curated_root) / nodules["crop_path"].iloc[0]
    return tuple(np.load(first, mmap_mode="r", allow_pickle=False).shape)

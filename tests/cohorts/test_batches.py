"""Arrival batches joining cohorts, and cohort manifests (cohorts/batches.py; issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohorts.batches import (
    BATCH_QUALITY,
    BatchSelection,
    cohort_members,
    manifest,
    select_batches,
    write_batch_quality,
)
from cohorts.files import atomic_write_json
from cohorts.privacy import KEY_RECORD

RECORD = {"key_fingerprint": "aaaa", "date_shift_max_days": 365, "synthetic": True}
RECORDS = {"archive": RECORD, "internal": RECORD, "external": RECORD}


def curated_folder(
    folder: Path,
    series: list[str],
    *,
    labeled: bool = False,
    passed: bool | None = True,
    record: dict | None = None,
    crop_vox: int = 4,
) -> Path:
    """A curated folder as curate_cohort writes it: one nodule and one crop per series."""
    (folder / "crops").mkdir(parents=True)
    rows = []
    for i, uid in enumerate(series):
        crop = f"crops/{uid}_0.npy"
        np.save(folder / crop, np.full((crop_vox,) * 3, i, dtype=np.int16))
        rows.append(
            {
                "patient_id": f"P{uid}",
                "series_id": uid,
                "study_date": "2020-01-15",
                "nodule_id": f"N{uid}",
                "diameter_mm": 6.0 + i,
                "crop_path": crop,
            }
        )
    pd.DataFrame(rows).to_parquet(folder / "nodules.parquet")
    labels = [{"patient_id": r["patient_id"], "malignant": 1} for r in rows] if labeled else []
    pd.DataFrame(labels, columns=["patient_id", "malignant"]).to_parquet(folder / "labels.parquet")
    atomic_write_json(folder / KEY_RECORD, record or RECORD)
    if passed is not None:
        write_batch_quality(folder, passed, [] if passed else ["incoming/x: lung_hu_median"])
    return folder


def test_selection_reads_the_params_forms() -> None:
    assert BatchSelection.from_value("passed") == BatchSelection()
    assert BatchSelection.from_value(["none"]).mode == "none"
    listed = BatchSelection.from_value(["b2", "b1"])
    assert listed.mode == "listed" and listed.names == ("b2", "b1")
    assert listed.as_list() == ["b2", "b1"] and BatchSelection().as_list() == ["passed"]
    with pytest.raises(ValueError, match="empty list"):
        BatchSelection(mode="listed")
    with pytest.raises(ValueError, match="unknown mode"):
        BatchSelection(mode="all")


def test_each_batch_gets_a_decision_with_its_reason(tmp_path: Path) -> None:
    """Passed batches join archive (unlabeled) or internal (labeled); a failed check, another
    key, other crop sizes, an unfinished curation and a hidden folder are kept out or ignored."""
    incoming = tmp_path / "incoming"
    curated_folder(incoming / "b1", ["s1", "s2"])
    curated_folder(incoming / "b2", ["s3"], labeled=True)
    curated_folder(incoming / "b3", ["s4"], passed=False)
    curated_folder(incoming / "b4", ["s5"], record={**RECORD, "key_fingerprint": "bbbb"})
    curated_folder(incoming / "b5", ["s6"], crop_vox=6)
    curated_folder(incoming / "b6", ["s7"], passed=None)
    (incoming / ".b7.partial").mkdir()
    shapes = {"archive": (4, 4, 4), "internal": (4, 4, 4)}
    decisions = {d.batch: d for d in select_batches(incoming, BatchSelection(), RECORDS, shapes)}
    assert sorted(decisions) == ["b1", "b2", "b3", "b4", "b5", "b6"]
    assert decisions["b1"].cohort == "archive" and decisions["b2"].cohort == "internal"
    assert decisions["b3"].cohort is None
    assert "blocking quality checks failed: incoming/x: lung_hu_median" in decisions["b3"].reason
    assert decisions["b4"].cohort is None and "key bbbb" in decisions["b4"].reason
    assert decisions["b5"].cohort is None and "crops of shape (6, 6, 6)" in decisions["b5"].reason
    assert decisions["b6"].cohort is None and "not finished" in decisions["b6"].reason

    listed = select_batches(incoming, BatchSelection.from_value(["b2", "b9"]), RECORDS, shapes)
    by_name = {d.batch: d for d in listed}
    assert [n for n, d in by_name.items() if d.cohort] == ["b2"]
    assert by_name["b1"].reason == "not in retraining.batches"
    assert by_name["b9"].reason == "listed in retraining.batches but never curated"
    none = select_batches(incoming, BatchSelection(mode="none"), RECORDS, shapes)
    assert not any(d.cohort for d in none)
    assert json.loads((incoming / "b3" / BATCH_QUALITY).read_text())["passed"] is False


def test_members_join_with_crop_paths_from_one_root(tmp_path: Path) -> None:
    root = tmp_path / "curated"
    curated_folder(root / "archive", ["a1", "a2"], passed=None)
    curated_folder(root / "internal", ["i1"], labeled=True, passed=None)
    curated_folder(root / "incoming" / "b1", ["s1"])
    curated_folder(root / "incoming" / "b2", ["s2"], labeled=True)
    decisions = select_batches(root / "incoming", BatchSelection(), RECORDS)
    members, nodules, labels = cohort_members(root, "archive", decisions)
    assert members == ["archive", "incoming/b1"]
    assert list(nodules["series_id"]) == ["a1", "a2", "s1"]
    assert list(nodules["crop_path"])[-1] == "incoming/b1/crops/s1_0.npy"
    assert all((root / p).is_file() for p in nodules["crop_path"])
    assert labels.empty
    members, nodules, labels = cohort_members(root, "internal", decisions)
    assert members == ["internal", "incoming/b2"]
    assert list(labels["patient_id"]) == ["Pi1", "Ps2"]


def test_members_refuse_a_scan_that_arrived_twice(tmp_path: Path) -> None:
    root = tmp_path / "curated"
    curated_folder(root / "archive", ["a1", "a2"], passed=None)
    curated_folder(root / "incoming" / "b1", ["a2"])
    decisions = select_batches(root / "incoming", BatchSelection(), RECORDS)
    with pytest.raises(ValueError, match=r"series a2 is curated in two of \['archive', 'inc"):
        cohort_members(root, "archive", decisions)


def test_manifest_version_follows_membership_and_crop_bytes(tmp_path: Path) -> None:
    root = tmp_path / "curated"
    curated_folder(root / "archive", ["a1", "a2"], passed=None)
    curated_folder(root / "incoming" / "b1", ["s1"])
    alone, nodules, _ = cohort_members(root, "archive", [])
    first = manifest(alone, nodules, root)
    assert first["series"] == ["a1", "a2"] and first["n_patients"] == 2
    assert manifest(alone, nodules, root) == first  # deterministic
    decisions = select_batches(root / "incoming", BatchSelection(), RECORDS)
    grown = manifest(*cohort_members(root, "archive", decisions)[:2], root)
    assert grown["n_series"] == 3 and grown["version"] != first["version"]
    np.save(root / "archive" / "crops" / "a1_0.npy", np.full((4, 4, 4), 9, dtype=np.int16))
    assert manifest(alone, nodules, root)["version"] != first["version"]  # re-curated crop

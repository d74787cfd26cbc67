"""Training-example assembly (cohorts/examples.py): which nodule, which scans in which slots,
how long before the latest scan, which EHR vector each scan gets, and the label join."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohorts.example_set import UNLABELED
from cohorts.examples import DAYS_PER_MONTH, assemble_examples, index_nodule_track

NAMES = ["age", "pack_years"]


def _nodules(crop_root: Path) -> pd.DataFrame:
    """P1: four scans, two nodules (the larger on the latest scan is the index); P2: one scan.

    Each crop is filled with a value naming its (scan, nodule), so slots can be checked.
    """
    rows = [
        # patient, series, date, nodule, diameter, crop value
        ("P1", "S1", "2019-01-01", "N1", 6.0, 11),
        ("P1", "S2", "2019-07-01", "N1", 6.5, 21),
        ("P1", "S2", "2019-07-01", "N2", 9.0, 22),
        ("P1", "S3", "2020-01-01", "N1", 7.0, 31),
        ("P1", "S3", "2020-01-01", "N2", 10.0, 32),
        ("P1", "S4", "2020-07-01", "N1", 7.5, 41),
        ("P1", "S4", "2020-07-01", "N2", 12.0, 42),
        ("P2", "S9", "2021-03-15", "N9", 5.0, 91),
    ]
    records = []
    for patient, series, date, nodule, diameter, value in rows:
        path = f"crops/{series}_{nodule}.npy"
        (crop_root / "crops").mkdir(parents=True, exist_ok=True)
        np.save(crop_root / path, np.full((4, 4, 4), value, dtype=np.int16))
        records.append(
            {
                "patient_id": patient,
                "series_id": series,
                "study_date": date,
                "nodule_id": nodule,
                "diameter_mm": diameter,
                "crop_path": path,
                "crop_spacing_mm": 1.25,
            }
        )
    return pd.DataFrame(records)


def _features() -> pd.DataFrame:
    """Each scan's own EHR vector (age grows with the scan); S3 has none, S4 lacks pack_years."""
    return pd.DataFrame(
        {
            "series_id": ["S1", "S2", "S3", "S4", "S9"],
            "age": [60.0, 60.5, np.nan, 61.5, 70.0],
            "pack_years": [30.0, 30.5, np.nan, np.nan, 10.0],
        }
    )


def test_index_nodule_is_the_largest_on_the_latest_scan_tracked_by_date(tmp_path: Path) -> None:
    track = index_nodule_track(_nodules(tmp_path))
    p1 = track[track["patient_id"] == "P1"]
    assert p1["nodule_id"].unique().tolist() == ["N2"]  # 12 mm beats 7.5 mm on 2020-07-01
    assert p1["series_id"].tolist() == ["S2", "S3", "S4"]  # oldest first; N2 is absent on S1
    assert track[track["patient_id"] == "P2"]["series_id"].tolist() == ["S9"]


def test_examples_stack_the_last_scans_oldest_first_left_padded_with_each_scans_own_ehr(
    tmp_path: Path,
) -> None:
    labels = pd.DataFrame({"patient_id": ["P1", "P3"], "malignant": [1, 0]})
    out = assemble_examples(_nodules(tmp_path), _features(), NAMES, tmp_path, 3, labels)
    assert out.patient_id.tolist() == ["P1", "P2"]
    assert out.crops_hu.shape == (2, 3, 4, 4, 4) and out.crops_hu.dtype == np.int16

    # P1: N2 at S2, S3, S4 in slots 0, 1, 2
    assert [int(out.crops_hu[0, s, 0, 0, 0]) for s in range(3)] == [22, 32, 42]
    assert out.scan_mask[0].tolist() == [True, True, True]
    days = [
        (pd.Timestamp("2020-07-01") - pd.Timestamp(d)).days for d in ("2019-07-01", "2020-01-01")
    ]
    np.testing.assert_allclose(
        out.months_before_latest[0], [days[0] / DAYS_PER_MONTH, days[1] / DAYS_PER_MONTH, 0.0]
    )
    np.testing.assert_allclose(out.diameter_mm[0], [9.0, 10.0, 12.0])
    # each scan carries the vector of its own date (never a later one); S3 has none
    np.testing.assert_allclose(out.ehr[0], [[60.5, 30.5], [0.0, 0.0], [61.5, 0.0]])
    assert out.ehr_mask[0].tolist() == [True, False, True]

    # P2: one scan, left-padded: empty slots are air, masked, zero
    assert out.scan_mask[1].tolist() == [False, False, True]
    assert (out.crops_hu[1, :2] == -1024).all() and int(out.crops_hu[1, 2, 0, 0, 0]) == 91
    assert out.ehr_mask[1].tolist() == [False, False, True]
    np.testing.assert_allclose(out.ehr[1, 2], [70.0, 10.0])
    assert (out.ehr[1, :2] == 0).all() and (out.months_before_latest[1] == 0).all()

    # labels join by patient; a patient without one is UNLABELED, extra label rows are ignored
    assert out.label.tolist() == [1, UNLABELED]
    assert out.ehr_feature_names.tolist() == NAMES
    assert out.crop_spacing_mm == 1.25  # the spacing curation cut the crops at travels along


def test_fewer_slots_keep_the_latest_scans_and_contract_errors_are_named(tmp_path: Path) -> None:
    nodules = _nodules(tmp_path)
    out = assemble_examples(nodules, _features(), NAMES, tmp_path, 2)
    assert [int(out.crops_hu[0, s, 0, 0, 0]) for s in range(2)] == [32, 42]
    assert (out.label == UNLABELED).all()  # no labels given
    with pytest.raises(ValueError, match=r"lacks columns \['bmi'\]"):
        assemble_examples(nodules, _features(), [*NAMES, "bmi"], tmp_path, 3)
    with pytest.raises(ValueError, match="no curated nodules"):
        assemble_examples(nodules.iloc[:0], _features(), NAMES, tmp_path, 3)
    with pytest.raises(ValueError, match="lack crop_spacing_mm"):
        assemble_examples(nodules.drop(columns="crop_spacing_mm"), _features(), NAMES, tmp_path, 3)
    mixed = nodules.assign(crop_spacing_mm=np.where(nodules["series_id"] == "S4", 1.0, 1.25))
    with pytest.raises(ValueError, match=r"several spacings \[1.0, 1.25\]"):
        assemble_examples(mixed, _features(), NAMES, tmp_path, 3)

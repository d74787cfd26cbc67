"""cohorts/dicom/nodules.py: one id per nodule across a patient's scans, greedy nearest centre."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohorts.dicom.nodules import match_nodules

KEY = b"k" * 32


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        rows,
        columns=["patient_id", "study_date", "series_id", "annotation_index",
                 "coord_x_mm", "coord_y_mm", "coord_z_mm"],
    )  # fmt: skip


def test_a_nodule_keeps_its_id_while_it_moves_less_than_the_tolerance() -> None:
    nodules = _frame(
        [
            ("p", "2020-01-01", "a", 0, 0.0, 0.0, 0.0),
            ("p", "2020-01-01", "a", 1, 50.0, 0.0, 0.0),
            ("p", "2021-01-01", "b", 0, 52.0, 0.0, 0.0),  # the second nodule, 2 mm on
            ("p", "2021-01-01", "b", 1, 6.0, 0.0, 0.0),  # the first, 6 mm on
            ("p", "2022-01-01", "c", 0, 20.0, 0.0, 0.0),  # 14 mm from both tracks: new
            ("q", "2021-01-01", "d", 0, 0.0, 0.0, 0.0),  # another patient, same place
        ]
    )
    ids = match_nodules(nodules, 10.0, KEY)
    assert ids[0] == ids[3] and ids[1] == ids[2]
    assert len({ids[0], ids[1], ids[4], ids[5]}) == 4
    assert all(ids) and not any("p:" in i or "q:" in i for i in ids)  # keyed pseudonyms


def test_each_track_takes_at_most_one_annotation_of_a_scan() -> None:
    nodules = _frame(
        [
            ("p", "2020-01-01", "a", 0, 0.0, 0.0, 0.0),
            ("p", "2021-01-01", "b", 0, 1.0, 0.0, 0.0),
            ("p", "2021-01-01", "b", 1, 2.0, 0.0, 0.0),  # also near: the nearer one wins
        ]
    )
    ids = match_nodules(nodules, 10.0, KEY)
    assert ids[0] == ids[1] != ids[2]


def test_scans_run_in_date_order_whatever_the_row_order_and_undated_rows_come_first() -> None:
    rows = [
        ("p", "2022-01-01", "c", 0, 16.0, 0.0, 0.0),
        ("p", "2020-01-01", "a", 0, 0.0, 0.0, 0.0),
        ("p", None, "z", 0, -8.0, 0.0, 0.0),
        ("p", "2021-01-01", "b", 0, 8.0, 0.0, 0.0),
        (None, "2021-01-01", "b", 0, 8.0, 0.0, 0.0),  # no patient id: no nodule id
    ]
    nodules = _frame(rows).set_axis([10, 11, 12, 13, 14])
    ids = match_nodules(nodules, 10.0, KEY)
    assert ids[12] == ids[11] == ids[13] == ids[10]  # -8 -> 0 -> 8 -> 16, 8 mm steps
    assert ids[14] == ""
    shuffled = nodules.sample(frac=1.0, random_state=np.random.default_rng(0))
    assert match_nodules(shuffled, 10.0, KEY).sort_index().equals(ids)

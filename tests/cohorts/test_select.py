"""The series-selection rule (cohorts/dicom/select.py): one order and one accept/reject state
for curation's pool rounds and serving's one-at-a-time decode, so both choose the same series."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from dicom_factory import PHI, curation_config, write_ct_series

from cohorts.dicom import curate_cohort
from cohorts.dicom.select import StudySelection, candidate_order, first_decodable
from cohorts.dicom.series import SeriesError
from cohorts.privacy import pseudonymise
from serving.predict import CurationSettings, read_scan

KEY = b"select-test-key"


def _geometry(thickness_mm: float, z_spacing_mm: float, n_slices: int) -> SimpleNamespace:
    """The three header facts the order reads (a SeriesGeometry has many more)."""
    return SimpleNamespace(
        slice_thickness_mm=thickness_mm, spacing_mm=(z_spacing_mm, 0.7, 0.7), shape=(n_slices, 8, 8)
    )


def test_order_is_thinnest_then_most_slices_then_id() -> None:
    candidates = {
        "s-thick": _geometry(2.5, 2.5, 100),
        "s-thin-few": _geometry(1.0, 1.0, 50),
        "s-thin-many-b": _geometry(1.0, 1.0, 80),
        "s-thin-many-a": _geometry(1.25, 1.0, 80),  # overlapping recon: thin by spacing
    }
    assert candidate_order(candidates) == [
        "s-thin-many-a",
        "s-thin-many-b",
        "s-thin-few",
        "s-thick",
    ]


def test_a_study_accepts_the_first_that_decodes_and_reports_the_rest() -> None:
    selection = StudySelection(
        {"a": _geometry(1, 1, 10), "b": _geometry(2, 2, 10), "c": _geometry(3, 3, 10)}
    )
    assert selection.next == "a" and not selection.done
    with pytest.raises(ValueError, match="b is not the next candidate"):
        selection.accept("b")  # outcomes are reported in the rule's order only
    selection.reject("a")
    assert selection.next == "b"
    assert selection.accept("b") == ["c"]  # c is not_selected
    assert selection.done and selection.chosen == "b" and selection.next is None


def test_first_decodable_skips_series_errors_and_lets_other_errors_through() -> None:
    candidates = {"a": _geometry(1, 1, 10), "b": _geometry(2, 2, 10)}

    def decode(geometry: SimpleNamespace) -> str:
        if geometry is candidates["a"]:
            raise SeriesError("undecodable", "bad pixels")
        return "volume-b"

    chosen, value, failed = first_decodable(candidates, decode)
    assert (chosen, value) == ("b", "volume-b")
    assert [(sid, err.reason) for sid, err in failed] == [("a", "undecodable")]
    assert first_decodable({"a": candidates["a"]}, decode)[:2] == (None, None)
    with pytest.raises(RuntimeError):
        first_decodable(candidates, lambda g: (_ for _ in ()).throw(RuntimeError("disk")))


def _tied_uids() -> tuple[str, str]:
    """Two series UIDs whose raw order is the reverse of their pseudonyms' order under KEY."""
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(1, 50)]
    for first in uids:
        for second in uids:
            raw_first = first < second
            pseudo_first = pseudonymise(first, KEY, "series") < pseudonymise(second, KEY, "series")
            if raw_first and not pseudo_first:
                return first, second
    raise AssertionError("no pair found")  # 49 UIDs always hold one


def test_training_and_serving_choose_the_same_series_of_a_tie(tmp_path: Path) -> None:
    """Two reconstructions alike in thickness and slice count: the tie breaks on the curated
    pseudonym in both paths, never on the raw UID (whose order here is the reverse)."""
    raw_first, raw_second = _tied_uids()
    dicom = tmp_path / "raw" / "dicom"
    study = "1.2.826.0.1.3680043.8.498.999"
    for stem, uid in (("a", raw_first), ("b", raw_second)):
        write_ct_series(
            dicom / "pair", n_slices=10, study_uid=study, series_uid=uid, file_stem=stem
        )
    out = tmp_path / "curated"
    curate_cohort(
        tmp_path / "raw",
        out,
        curation_config(crop_size_vox=8, pseudonym_key=KEY),
        progress=False,
    )
    index = pd.read_parquet(out / "index.parquet").set_index("series_id")
    chosen_in_training = index.index[index["status"] == "ok"].tolist()
    assert chosen_in_training == [pseudonymise(raw_second, KEY, "series")]

    scan = read_scan(
        dicom,
        PHI["patient_id"],
        CurationSettings(min_slices=8, date_shift_max_days=0, pseudonym_key=KEY),
    )
    assert pseudonymise(scan.volume.series_uid, KEY, "series") == chosen_in_training[0]

"""serving.series: one decode per series gives each nodule the crop the single-case path cuts,
and every unusable series or point comes back as a reason, not an exception."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import numpy as np
import pytest

from cohorts.dicom import nodule_crop
from cohorts.dicom.series import validate_headers, volume_from_geometry
from cohorts.privacy import date_shift_days, pseudonymise, shift_date
from serving.errors import PredictionError
from serving.headers import read_folder
from serving.series import SeriesJob, crop_at, parse_date, series_crops
from tests.dicom_factory import write_ct_series

KEY = b"k" * 32
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # "undated", on purpose


def _job(headers, points, min_slices: int = 3) -> SeriesJob:  # noqa: ANN001
    return SeriesJob(
        headers=tuple(headers),
        nodules_xyz_mm=tuple(points),
        min_slices=min_slices,
        pseudonym_key=KEY,
        date_shift_max_days=30,
        crop_size_vox=8,
        crop_spacing_mm=1.0,
    )


@pytest.fixture()
def tree(tmp_path: Path):  # noqa: ANN201
    root = tmp_path / "root"
    write_ct_series(root / "good", n_slices=10, study_date="20200115", patient_id="MRN-1", seed=1)
    write_ct_series(root / "gap", n_slices=8, missing_slice=3, seed=2)
    write_ct_series(root / "undated", n_slices=5, study_date="2020XX15", seed=3)
    return read_folder(root)


def _by_slices(tree, n: int) -> list:  # noqa: ANN001
    return next(h for h in tree.series.values() if len(h) == n)


def test_crops_equal_the_single_case_crops_and_the_ids_are_pseudonyms(tree) -> None:  # noqa: ANN001
    headers = _by_slices(tree, 10)
    points = [(-5.0, -3.0, -12.0), (0.0, 0.0, -10.0), (-5.0, -3.0, -12.0)]
    got = series_crops(_job(headers, points))
    assert got.error is None and len(got.crops) == 3
    volume = volume_from_geometry(validate_headers(headers, 3))
    for crop, xyz in zip(got.crops, points, strict=True):
        np.testing.assert_array_equal(crop, nodule_crop(volume, xyz, 8, 1.0))
    assert got.patient_id == pseudonymise("MRN-1", KEY, "patient") != "MRN-1"
    shift = date_shift_days("MRN-1", KEY, 30)
    assert got.scan_date == shift_date(dt.date(2020, 1, 15), shift)
    pickle.loads(pickle.dumps(got))  # crosses back from a worker process


def test_each_unusable_input_is_a_reason(tree) -> None:  # noqa: ANN001
    assert series_crops(_job((), [(0.0, 0.0, 0.0)])).error == "series not found under --dicom-root"
    gap = series_crops(_job(_by_slices(tree, 7), [(0.0, 0.0, -10.0)]))
    assert gap.error is not None and gap.error.startswith("not a usable CT series: ")
    too_few = series_crops(_job(_by_slices(tree, 10), [(0.0, 0.0, -10.0)], min_slices=50))
    assert too_few.error == "not a usable CT series: too_few_slices: 10 < 50"
    undated = series_crops(_job(_by_slices(tree, 5), [(0.0, 0.0, -10.0)]))
    assert undated.error == "not a date (YYYY-MM-DD): '2020XX15'"  # its rows fail, not the batch
    outside = series_crops(_job(_by_slices(tree, 10), [(0.0, 0.0, -10.0), (0.0, 0.0, 900.0)]))
    assert outside.error is None and isinstance(outside.crops[0], np.ndarray)
    assert isinstance(outside.crops[1], str) and outside.crops[1].startswith("nodule outside")


def test_crop_at_and_parse_date_name_the_problem(tree) -> None:  # noqa: ANN001
    volume = volume_from_geometry(validate_headers(_by_slices(tree, 10), 3))
    with pytest.raises(PredictionError, match="nodule outside the volume"):
        crop_at(volume, (0.0, 0.0, 900.0), 8, 1.0)
    assert parse_date("2020-01-15") == parse_date("20200115") == dt.date(2020, 1, 15)
    with pytest.raises(PredictionError, match="not a date"):
        parse_date("15/01/2020")

"""serving.headers: the service's pooled header pass reads a folder exactly as in-process does,
survives a lost worker, and never collects the identifiers only curation's paths need."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cohorts.dicom.scan import scan_dicom_tree
from serving.headers import PooledFolderReader, folder_reader, read_folder
from tests.dicom_factory import write_ct_series


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Two studies of one patient, a series with a truncated slice, and a file that is not
    DICOM: every kind of result the header pass returns."""
    root = tmp_path / "patient"
    write_ct_series(root / "a", n_slices=6, study_date="20200115", seed=1)
    write_ct_series(root / "b", n_slices=5, study_date="20210301", seed=2)
    write_ct_series(root / "c", n_slices=4, corrupt_slice=1, seed=3)
    (root / "notes.txt").write_text("not an image")
    return root


def _as_sets(result):  # a ScanResult, in a form that compares regardless of order
    return (
        {uid: sorted(headers, key=lambda h: str(h.path)) for uid, headers in result.series.items()},
        sorted(result.bad_files),
        sorted(result.skipped_files),
    )


def test_pooled_reader_reads_what_the_in_process_reader_reads(folder: Path) -> None:
    """Same series, same SliceHeaders (every field, native pixel locations included), same bad
    files with their reasons, over repeated calls on the kept-open pool."""
    expected = read_folder(folder)
    assert len(expected.series) == 3 and expected.bad_files  # the fixture has every kind
    reader = PooledFolderReader(2)
    try:
        for _ in range(2):
            assert _as_sets(reader(folder)) == _as_sets(expected)
    finally:
        reader.close()
    assert reader.restarts == 0


def test_a_killed_worker_fails_no_request_and_the_next_one_gets_a_new_pool(
    folder: Path,
) -> None:
    """A header worker killed between requests: the next read still answers (in-process,
    counted in ``restarts``), and the one after runs on a fresh pool."""
    expected = _as_sets(read_folder(folder))
    reader = PooledFolderReader(2)
    try:
        assert _as_sets(reader(folder)) == expected
        pool = reader._pool
        assert pool is not None
        for pid in list(pool._processes):  # the executor's own worker table
            os.kill(pid, signal.SIGKILL)
        assert _as_sets(reader(folder)) == expected
        assert reader.restarts == 1
        assert _as_sets(reader(folder)) == expected
        assert reader._pool is not None and reader._pool is not pool
    finally:
        reader.close()


def test_serving_reads_no_annex_e_identifiers(folder: Path) -> None:
    """Serving reports no file paths, so its headers carry no raw identifiers; curation's
    scan (which redacts paths with them) still collects them."""
    served = [h for hs in read_folder(folder).series.values() for h in hs]
    curated = [h for hs in scan_dicom_tree(folder).series.values() for h in hs]
    assert served and all(h.identifiers == () for h in served)
    assert all(h.identifiers for h in curated)


def test_one_worker_reads_in_process() -> None:
    assert folder_reader(1) is read_folder
    assert isinstance(folder_reader(2), PooledFolderReader)
    with pytest.raises(ValueError, match="at least 2 workers"):
        PooledFolderReader(1)


def test_pooled_series_work_equals_in_process_and_survives_a_lost_worker(folder: Path) -> None:
    """A batch's series jobs on the kept-open workers give exactly the in-process results
    (crops, pseudonyms, dates, reasons), also on the call after a worker was killed."""
    from serving.headers import map_in_process, series_map
    from serving.series import SeriesJob, series_crops

    tree = read_folder(folder)
    jobs = [
        SeriesJob(
            headers=tuple(headers),
            nodules_xyz_mm=((-5.0, -3.0, -16.0), (0.0, 0.0, 900.0)),
            min_slices=3,
            pseudonym_key=b"k" * 32,
            date_shift_max_days=30,
            crop_size_vox=8,
            crop_spacing_mm=1.0,
        )
        for headers in tree.series.values()
    ]

    def comparable(results):  # noqa: ANN001, ANN202
        return [
            (r.error, r.patient_id, r.scan_date, [c if isinstance(c, str) else c.tobytes() for c in r.crops])
            for r in results
        ]  # fmt: skip

    expected = comparable(map_in_process(series_crops, jobs))
    assert sum(e[0] is None for e in expected) == 2 and expected[0] != expected[1]
    reader = PooledFolderReader(2)
    assert series_map(reader) == reader.map_series and series_map(read_folder) is map_in_process
    try:
        assert comparable(reader.map_series(series_crops, jobs)) == expected
        for pid in list(reader._pool._processes):  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
        assert comparable(reader.map_series(series_crops, jobs)) == expected
        assert reader.restarts == 1
    finally:
        reader.close()

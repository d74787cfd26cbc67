"""A request's DICOM work: in the caller's process, or on a pool of workers kept open.

Why: every prediction starts by reading the header of every file in the folder it is given
(the patient check, the study dates and the series rule need them all), and a patient's
folder holds every scan they had: the demo's case folders hold 97 files, of which the chosen
study uses 32. That pass is most of a request (pydicom parses each file in ~0.35 ms here, our
checks add ~0.1 ms), and it is plain per-file work, so the long-lived service spreads it over
worker processes it keeps open (``cohorts.parallel``: forkserver workers, ``WorkerDied`` when
one is lost). The one-shot CLI reads in-process: a pool's start-up would cost more than it
saves on one request. A batch's per-series decode and crops (``serving.series``) run on the
same workers (``SeriesMap``): they are per-series work too.

Both readers skip the Annex E values (``read_header(identifiers=False)``): serving reports
series pseudonyms and reasons, never file paths, so there is nothing to redact.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cohorts.dicom.scan import (
    ScanResult,
    group_headers,
    iter_files,
    read_header_or_skip,
    scan_dicom_tree,
)
from cohorts.parallel import WorkerDied, pool_map, process_pool
from serving.series import SeriesCrops, SeriesJob

log = logging.getLogger("lungjepa.serve")

FolderReader = Callable[[Path], ScanResult]
"""A folder in, its files grouped by series (``cohorts.dicom.scan.ScanResult``) out."""

SeriesMap = Callable[[Callable[[SeriesJob], SeriesCrops], Sequence[SeriesJob]], list[SeriesCrops]]
"""``series_crops`` over a request's series jobs, results in job order."""


def map_in_process(
    func: Callable[[SeriesJob], SeriesCrops], jobs: Sequence[SeriesJob]
) -> list[SeriesCrops]:
    """``func`` over ``jobs`` in this process."""
    return [func(job) for job in jobs]


_read = functools.partial(read_header_or_skip, identifiers=False)


def read_folder(root: Path) -> ScanResult:
    """Every file's header under ``root``, read in this process."""
    return scan_dicom_tree(root, identifiers=False)


class PooledFolderReader:
    """``read_folder`` over ``workers`` processes started on first use and kept open.

    One chunk of files per worker: a request's 100-odd files are too few for finer chunks to
    balance anything, and each chunk is a round trip (measured on the demo case: 2 chunks
    21 ms, 8 chunks 24 ms, in-process 38 ms). A worker that dies fails only the read under
    way: the pool is dropped, that folder is read in-process, and the next request starts a
    new pool. ``map_series`` runs a batch's series work on the same workers. Not thread-safe
    on its own: the service calls it under its prediction lock.
    """

    def __init__(self, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"a pool needs at least 2 workers, got {workers} (use read_folder)")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0  # pools replaced after a worker died

    def __call__(self, root: Path) -> ScanResult:
        files = list(iter_files(root))
        try:
            return group_headers(
                pool_map(
                    _read, files, self.workers, "headers", False, pool=self._started(),
                    chunks_per_worker=1,
                )
            )  # fmt: skip
        except WorkerDied:
            log.warning("a header worker died; reading this folder in-process, new pool next")
            self.close()
            self.restarts += 1
            return group_headers(map(_read, files))

    def map_series(
        self, func: Callable[[SeriesJob], SeriesCrops], jobs: Sequence[SeriesJob]
    ) -> list[SeriesCrops]:
        """``func`` over ``jobs`` on the same workers (a ``SeriesMap``), results in job order.

        Four chunks per worker: series differ in size, and each is milliseconds of decoding,
        long against a chunk's round trip. A worker that dies is handled as in ``__call__``.
        """
        if len(jobs) < 2:
            return map_in_process(func, jobs)
        try:
            return list(
                pool_map(
                    func, list(jobs), self.workers, "series", False, pool=self._started(),
                    chunks_per_worker=4,
                )
            )  # fmt: skip
        except WorkerDied:
            log.warning("a worker died decoding series; decoding in-process, new pool next")
            self.close()
            self.restarts += 1
            return map_in_process(func, jobs)

    def _started(self) -> ProcessPoolExecutor:
        """The pool, started on first use with the modules both kinds of work need."""
        if self._pool is None:
            self._pool = process_pool(self.workers, preload=("serving.series",))
        return self._pool

    def close(self) -> None:
        """Stop the workers (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def folder_reader(workers: int) -> FolderReader:
    """``read_folder`` for one worker, else a ``PooledFolderReader`` of ``workers``."""
    return read_folder if workers <= 1 else PooledFolderReader(workers)


def series_map(reader: FolderReader) -> SeriesMap:
    """Where a batch's series work runs: on ``reader``'s workers when it has them."""
    return reader.map_series if isinstance(reader, PooledFolderReader) else map_in_process

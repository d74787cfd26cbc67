"""The data stages' process pools: safe under a threaded parent, and no worker left behind."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cohorts.parallel import WorkerDied, pool_map, worker_pool
from tests.processes import running

REPO = Path(__file__).resolve().parents[2]

# held by the parent while it maps: a forked worker would inherit it locked and block forever
HELD = threading.Lock()


def _square_under_lock(x: int) -> int:
    with HELD:
        return x * x


def _slow_identity(x: int) -> int:
    threading.Event().wait(0.05)
    return x


def _worker_pid(x: int) -> int:
    threading.Event().wait(0.01)
    return os.getpid()


def _die_on_three(x: int) -> int:
    if x == 3:
        os._exit(9)  # what the kernel's OOM killer leaves: no exception, no result
    return x


@pytest.mark.timeout(180)
def test_workers_do_not_inherit_locks_the_parent_holds() -> None:
    """The hang behind CI's timeout: a lock held in the parent when the pool starts (here held
    on purpose; in a Dagster or xdist worker, by one of its threads) is free in every worker."""
    with HELD:
        got = sorted(pool_map(_square_under_lock, list(range(8)), 2, "squares", progress=False))
    assert got == [x * x for x in range(8)]


def test_a_consumer_that_stops_early_leaves_no_worker_alive() -> None:
    results = pool_map(_slow_identity, list(range(64)), 2, "identity", progress=False)
    first = next(results)
    assert first in range(64)
    results.close()  # what a `break` or an exception in the consumer does
    assert multiprocessing.active_children() == []


def test_results_come_in_input_order_with_one_worker_or_several() -> None:
    items = [5, 3, 9, 1, 7, 2, 8]
    for workers in (1, 2):
        assert list(pool_map(_slow_identity, items, workers, "identity", progress=False)) == items


@pytest.mark.timeout(180)
def test_a_worker_that_dies_is_an_error_naming_the_step_not_a_hang() -> None:
    with pytest.raises(WorkerDied, match="^series: a worker process died"):
        list(pool_map(_die_on_three, list(range(8)), 2, "series", progress=False))
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(180)
def test_a_kept_pool_already_broken_is_a_worker_died_error_too() -> None:
    """A kept-open pool whose worker died between maps refuses new work at submit
    (``BrokenProcessPool``): the next map raises ``WorkerDied`` like a death mid-map, so the
    service's fallback catches both."""
    with worker_pool(2, (__name__,)) as pool:
        with pytest.raises(WorkerDied):
            list(pool_map(_die_on_three, list(range(8)), 2, "first", progress=False, pool=pool))
        assert pool._broken  # the executor knows before the next submit
        with pytest.raises(WorkerDied, match="^second: a worker process died"):
            list(pool_map(_slow_identity, list(range(8)), 2, "second", progress=False, pool=pool))


@pytest.mark.timeout(180)
def test_workers_end_when_the_process_that_started_them_is_killed() -> None:
    """A run killed with SIGKILL (or by the OOM killer) leaves no pool worker behind: each
    watches its parent and exits (``exit_with_parent``)."""
    script = (
        "import os, signal\n"
        "from cohorts.parallel import process_pool\n"
        "pool = process_pool(2)\n"
        "pids = {pool.submit(os.getpid).result() for _ in range(8)}\n"
        "print(' '.join(map(str, pids)), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -9, child.stderr
    workers = [int(pid) for pid in child.stdout.split()]
    assert workers
    deadline = time.monotonic() + 20
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if running(pid)]


def test_one_worker_pool_serves_several_maps_and_outlives_an_early_stop() -> None:
    """Curation's header pass and decode rounds share one pool: its workers start once."""
    with worker_pool(2, (__name__,)) as pool:
        first = set(pool_map(_worker_pid, list(range(16)), 2, "a", progress=False, pool=pool))
        stopped = pool_map(_slow_identity, list(range(64)), 2, "b", progress=False, pool=pool)
        next(stopped)
        stopped.close()  # cancels what is pending, leaves the pool up
        second = set(pool_map(_worker_pid, list(range(16)), 2, "c", progress=False, pool=pool))
        assert len(first | second) <= 2 and os.getpid() not in first
    assert multiprocessing.active_children() == []
    with worker_pool(1) as none:
        assert none is None


@pytest.mark.parametrize("entry_point", ["benchmarks.run", "orchestration.cli"])
def test_entry_points_stay_light_for_pool_workers(entry_point: str) -> None:
    """Every forkserver or spawn worker re-imports the parent's ``__main__`` (the ``lungjepa``
    script imports orchestration.cli; ``python -m benchmarks.run``). When that imported torch
    and Dagster, 2 curation workers ran 4x slower than 1 (issue 21); it must stay light."""
    heavy = ("torch", "dagster", "feast", "onnxruntime")
    code = f"import sys, {entry_point}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing {entry_point} loads {out.stdout.strip()}"

"""Process pools for the data stages: safe to start from a threaded parent, loud when a worker dies.

Curation runs inside Dagster run workers, pytest-xdist workers and the CLI, all of which hold
threads (Dagster's event and compute-log threads, tqdm's monitor, torch's OpenMP pool) by the
time a pool starts. A ``fork`` pool copies whichever of their locks are held at that instant
into the child, which then blocks on them forever; and a ``multiprocessing.Pool`` whose worker
dies (killed, out of memory) waits forever for the lost result. Together these could stall a
run with no error (CI's `make test` hung at 95 % until killed, ForkPoolWorker processes alive).

So workers come from a ``forkserver`` (a single-threaded server process, started once per
parent, that imports the worker module up front and forks each worker from that clean state,
so no worker starts with a copied lock), under
``concurrent.futures.ProcessPoolExecutor``, which fails every pending result with
``BrokenProcessPool`` when a worker dies, re-raised here as ``WorkerDied``.

Workers leave with their parent: each watches the process that started its pool and exits
when it is gone. A worker otherwise blocks on its task queue, whose write end it holds itself,
so a parent killed (SIGKILL, the OOM killer, a stopped service) would leave its workers and
their memory behind for good.

Start-up cost: like spawn, a forkserver worker re-imports the parent's ``__main__`` when it
starts (unless that is a package's ``__main__``: pytest, ``python -m dagster``), so entry
points stay light (the ``lungjepa`` script, ``benchmarks.run``; tests/cohorts/test_parallel.py
checks them), and ``worker_pool`` lets one pool serve several maps (curation's header pass
and its decode rounds), so its workers start once per run.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


class WorkerDied(RuntimeError):
    """A pool worker process ended without returning (killed, out of memory, os._exit)."""


def process_pool(workers: int, preload: Sequence[str] = ()) -> ProcessPoolExecutor:
    """An executor of ``workers`` processes forked from a single-threaded forkserver.

    preload: modules the server imports once, so each worker starts with them loaded (the
    module that defines the mapped function, typically). The server keeps the first preload
    list it was started with for the parent's lifetime; later ones only add import time.
    """
    ctx = multiprocessing.get_context("forkserver")
    if preload:
        ctx.set_forkserver_preload(list(preload))
    return ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=exit_with_parent, initargs=(os.getpid(),)
    )


def exit_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: end this process as soon as ``parent_pid`` has exited.

    A daemon thread waits on a pidfd of the parent (Linux; readable once it exits, zombie
    included), else polls it once a second, then leaves with ``os._exit``: the parent's
    results can no longer be delivered, so there is nothing to finish or flush.
    """
    threading.Thread(
        target=_wait_then_exit, args=(parent_pid,), name="exit-with-parent", daemon=True
    ).start()


def _wait_then_exit(parent_pid: int) -> None:
    try:
        handle = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or the parent is already gone
        handle = None
    if handle is not None:
        select.select([handle], [], [])
    else:
        while process_alive(parent_pid):
            time.sleep(1.0)
    os._exit(0)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie not yet reaped counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


@contextmanager
def worker_pool(workers: int, preload: Sequence[str] = ()) -> Iterator[ProcessPoolExecutor | None]:
    """One pool for several ``pool_map`` calls (None for one worker: they run in-process).

    Shut down on exit, pending work cancelled.
    """
    if workers <= 1:
        yield None
        return
    pool = process_pool(workers, preload)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _map_chunk(func: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [func(item) for item in chunk]


def pool_map(
    func: Callable[[T], R],
    items: list[T],
    workers: int,
    desc: str,
    progress: bool,
    preload: Sequence[str] = (),
    pool: ProcessPoolExecutor | None = None,
    chunks_per_worker: int = 8,
) -> Iterator[R]:
    """Map in input order over a process pool (in-process for one worker or item), with a bar.

    pool: a ``worker_pool`` to run on (kept open after the map); None starts one for this map
    alone, with ``preload`` (as in ``process_pool``; default: the module defining ``func``).
    Every item is submitted at once, in chunks of len(items) / (chunks_per_worker * workers),
    so workers never wait on the consumer (8 balances uneven items over a long map; a
    latency-bound map of a hundred small items wants 1: each chunk is a round trip). Work
    starts on the first ``next``; if the consumer stops early, the chunks not yet started are
    cancelled. Raises ``WorkerDied`` (naming ``desc``) when a worker process dies, instead of
    waiting forever.
    """
    if not items:
        return iter(())
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="it")
    if workers <= 1 or len(items) == 1:

        def serial() -> Iterator[R]:
            for result in map(func, items):
                bar.update(1)
                yield result
            bar.close()

        return serial()
    size = max(1, -(-len(items) // (workers * chunks_per_worker)))

    def run() -> Iterator[R]:
        executor = pool or process_pool(
            min(workers, len(items)), preload=preload or (func.__module__,)
        )
        futures = []
        try:
            for i in range(0, len(items), size):  # a pool already known broken refuses here
                futures.append(executor.submit(_map_chunk, func, items[i : i + size]))
            for future in futures:
                chunk = future.result()
                bar.update(len(chunk))
                yield from chunk
            bar.close()
        except BrokenProcessPool as err:
            raise WorkerDied(
                f"{desc}: a worker process died before returning its results (killed, or out "
                "of memory?); rerun the step"
            ) from err
        finally:
            for future in futures:
                future.cancel()
            if pool is None:
                executor.shutdown(wait=True, cancel_futures=True)

    return run()

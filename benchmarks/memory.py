"""Resident memory of a process tree over time, to attribute peak memory to Dagster steps.

Why sampling: the in-process executor (what `make demo` uses) runs every asset in one
process whose ru_maxrss never goes down, and the curation and generation pools are child
processes that ru_maxrss does not see. Summing RSS over the process and its descendants a
few times a second, then taking the maximum inside each step's start-end window from the
Dagster event log, gives a peak per asset. A spike shorter than the interval can be missed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _parent_and_rss(pid: str) -> tuple[int, int] | None:
    """(parent pid, resident bytes) of one /proc entry; None if it vanished meanwhile."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
    # the command name is in parentheses and may hold spaces: split after its closing one
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[1]), resident_pages * PAGE_BYTES


def tree_rss_bytes(root_pid: int) -> int:
    """Resident bytes of ``root_pid`` and all its descendants right now."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _parent_and_rss(entry)) is not None:
            table[int(entry)] = info
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += table.get(pid, (0, 0))[1]
        stack.extend(children.get(pid, ()))
    return total


class TreeMemorySampler:
    """Background thread recording (wall time, tree RSS bytes) every ``interval_s``."""

    def __init__(self, root_pid: int | None = None, interval_s: float = 0.2) -> None:
        self.root_pid = root_pid or os.getpid()
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), tree_rss_bytes(self.root_pid)))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), tree_rss_bytes(self.root_pid)))

    def peak_mib(self) -> float:
        return max((rss for _, rss in self.samples), default=0) / 2**20

    def window_mib(self, start: float, end: float) -> dict[str, float]:
        """Peak inside [start, end] and the last reading before start (both MiB)."""
        inside = [rss for t, rss in self.samples if start <= t <= end]
        before = [rss for t, rss in self.samples if t < start]
        at_start = before[-1] if before else (inside[0] if inside else 0)
        return {
            "peak_mib": max(inside, default=at_start) / 2**20,
            "start_mib": at_start / 2**20,
            "samples": float(len(inside)),
        }

    def per_window(self, windows: Mapping[str, tuple[float, float]]) -> dict[str, dict]:
        return {name: self.window_mib(start, end) for name, (start, end) in windows.items()}

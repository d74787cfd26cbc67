"""Shared benchmark machinery: interleaved repetitions, summary statistics, result records.

The machines are shared and noisy, so every ratio compares cases timed round-robin in the
same process (case A rep 1, case B rep 1, case A rep 2, ...): a slow spell hits both sides.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import queue as queue_module
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ORDER: tuple[str, ...] = (
    "curation",
    "synthetic",
    "jepa_cpu",
    "jepa_gpu",
    "inference",
    "feast_online",
    "pipeline",  # before predict, which reuses its output
    "predict",
    "serve",  # after pipeline too: it reuses that run's model and store
    "scaling",
)
"""Benchmark names in run and report order."""


@dataclass(frozen=True)
class BenchSize:
    """How hard to push: `quick` is a smoke run, `full` is what `make bench` does."""

    name: str
    warmup: int
    reps: int
    archive_patients: int  # archive size for curation and generation workloads
    pipeline_profile: str  # params.yaml profile of the whole-pipeline run


TOY = BenchSize("toy", warmup=0, reps=1, archive_patients=2, pipeline_profile="tiny")
QUICK = BenchSize("quick", warmup=1, reps=2, archive_patients=8, pipeline_profile="tiny")
FULL = BenchSize("full", warmup=1, reps=5, archive_patients=32, pipeline_profile="demo")


@dataclass
class BenchResult:
    """One benchmark's record: measurements (median, min-max), ratios, notes, and its command."""

    name: str
    title: str
    command: str
    config: dict[str, Any] = field(default_factory=dict)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "measured"  # measured | not measured

    def add(self, label: str, unit: str, samples: list[float], **extra: Any) -> dict[str, Any]:
        """Record a sample list as median and min-max (and the raw samples)."""
        row = {"label": label, "unit": unit, **summarise(samples), **extra}
        self.measurements.append(row)
        return row

    def ratio(self, label: str, value: float, meaning: str) -> None:
        """A ratio between two interleaved measurements (or a measurement and a limit)."""
        self.ratios.append({"label": label, "value": float(value), "meaning": meaning})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "command": self.command,
            "status": self.status,
            "config": self.config,
            "measurements": self.measurements,
            "ratios": self.ratios,
            "notes": self.notes,
        }


def summarise(samples: list[float]) -> dict[str, Any]:
    """Median, min, max and the samples themselves (so a reader can judge the spread)."""
    if not samples:
        raise ValueError("no samples")
    values = [float(v) for v in samples]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "samples": values,
    }


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds of per-call latencies."""
    arr = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def interleaved(
    cases: Mapping[str, Callable[[], Any]],
    reps: int,
    warmup: int,
    after: Callable[[], None] | None = None,
) -> dict[str, list[tuple[float, Any]]]:
    """Run every case `warmup` times untimed, then `reps` rounds of one timed call per case.

    ``after``: called untimed after every call, e.g. to delete what the case wrote (removing
    outputs is not the work measured, and a case that reads nothing back would not pay it).
    Returns case -> [(seconds, return value)] in round order.
    """
    for _ in range(warmup):
        for func in cases.values():
            func()
            if after is not None:
                after()
    out: dict[str, list[tuple[float, Any]]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, func in cases.items():
            started = time.perf_counter()
            value = func()
            out[name].append((time.perf_counter() - started, value))
            if after is not None:
                after()
    return out


def _child_entry(queue: Any, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
    value = func(*args)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    queue.put({"value": value, "maxrss_kib": own, "children_maxrss_kib": kids})


def in_child(func: Callable[..., Any], *args: Any, env: Mapping[str, str] | None = None) -> dict:
    """Run func(*args) in a fresh spawned process; return its value and peak RSS (KiB).

    A fresh process gives an honest peak memory (ru_maxrss never goes down) and a clean
    import state (e.g. LUNGJEPA_PROFILE read by orchestration at import time).
    """
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_child_entry, args=(queue, func, args))
        proc.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"benchmark child {func.__name__} exited with {proc.exitcode}"
                ) from None
    proc.join()
    return result


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],  # other jobs' load
    }

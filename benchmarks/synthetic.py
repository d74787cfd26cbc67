"""Synthetic generation throughput (scans/s) with 1 and 2 workers, interleaved."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from benchmarks.archives import make_archive
from benchmarks.common import BenchResult, BenchSize, interleaved

COMMAND = "python -m benchmarks.run --only synthetic"


def generate_once(n_archive: int, workers: int) -> int:
    """Scans written by one generation into a fresh folder (removed afterwards)."""
    out = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        summary = make_archive(
            out, n_archive=n_archive, n_internal=n_archive, n_external=n_archive, workers=workers
        )
        return sum(c["scans"] for c in summary["cohorts"].values())
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run(size: BenchSize, work_dir: Path) -> BenchResult:
    result = BenchResult("synthetic", "Synthetic generation throughput", COMMAND)
    n = max(1, size.archive_patients // 2)
    result.config = {
        "patients_per_cohort": n,
        "cohorts": 3,
        "preset": "tiny (48 px, 16 slices)",
    }
    cases = {f"generate_archive, {w} worker(s)": lambda w=w: generate_once(n, w) for w in (1, 2)}
    timed = interleaved(cases, size.reps, size.warmup)
    rates = {}
    for label, runs in timed.items():
        rates[label] = result.add(label, "scans/s", [n_scans / s for s, n_scans in runs])["median"]
        result.measurements[-1]["scans"] = runs[0][1]
    result.ratio(
        "2 workers / 1 worker",
        rates["generate_archive, 2 worker(s)"] / rates["generate_archive, 1 worker(s)"],
        "parallel speed-up (2.0 = linear on 2 cores; includes spawning the pool)",
    )
    return result

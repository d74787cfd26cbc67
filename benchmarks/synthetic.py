"""Synthetic generation throughput (scans/s) with 1 and 2 workers, interleaved, and pool start-up.

Runs the `study` preset's image size (80 px, 32 slices): at the tiny preset's 48 px x 16
slices a patient takes milliseconds and the figure would measure the process pool, not
generation. The pool's own start-up (spawn 2 workers, import the generator in each) is
timed in the same rounds, so the speed-up can be read with and without it.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
from pathlib import Path

from benchmarks.archives import make_archive
from benchmarks.common import BenchResult, BenchSize, interleaved

COMMAND = "python -m benchmarks.run --only synthetic"
PRESET = "study"
WORKERS = (1, 2)
POOL = "pool start-up, 2 workers (spawn + imports)"


def generate_once(n_patients: int, workers: int) -> int:
    """Scans written by one generation into a fresh folder (removed afterwards)."""
    out = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        summary = make_archive(
            out,
            n_archive=n_patients,
            n_internal=n_patients,
            n_external=n_patients,
            workers=workers,
            preset=PRESET,
        )
        return sum(c["scans"] for c in summary["cohorts"].values())
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _import_generator(_: int) -> bool:
    import cohorts.synthetic.generate  # noqa: F401  (what every pool worker imports first)

    return True


def pool_start_up(workers: int) -> int:
    """Spawn the pool generate_archive uses and import the generator in every worker."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return sum(pool.map(_import_generator, range(workers), chunksize=1))


def run(size: BenchSize, work_dir: Path) -> BenchResult:
    result = BenchResult("synthetic", "Synthetic generation throughput", COMMAND)
    n = max(1, size.archive_patients // 4)
    result.config = {
        "patients_per_cohort": n,
        "cohorts": 3,
        "preset": f"{PRESET} (80 px, 32 slices)",
    }
    cases = {f"generate_archive, {w} worker(s)": lambda w=w: generate_once(n, w) for w in WORKERS}
    cases[POOL] = lambda: pool_start_up(2)
    timed = interleaved(cases, size.reps, size.warmup)
    rates, seconds = {}, {}
    for w in WORKERS:
        label = f"generate_archive, {w} worker(s)"
        runs = timed[label]
        rates[w] = result.add(label, "scans/s", [n_scans / s for s, n_scans in runs])["median"]
        result.measurements[-1]["scans"] = runs[0][1]
        seconds[w] = sorted(s for s, _ in runs)[len(runs) // 2]
    start_up = result.add(POOL, "s", [s for s, _ in timed[POOL]])["median"]
    result.ratio(
        "2 workers / 1 worker",
        rates[2] / rates[1],
        "parallel speed-up (2.0 = linear on 2 cores), pool start-up included",
    )
    if seconds[2] > start_up:
        result.ratio(
            "2 workers / 1 worker, pool start-up excluded",
            seconds[1] / (seconds[2] - start_up),
            "the same speed-up once the pool is running (what a large archive sees)",
        )
    result.ratio(
        "pool start-up / 2-worker generation time",
        start_up / seconds[2],
        "share of the 2-worker run spent starting the pool (fixed, shrinks with the archive)",
    )
    return result

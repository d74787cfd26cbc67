"""Curation throughput against a plain pydicom read-and-rescale loop, and its peak memory.

The floor decodes every file under dicom/ that carries pixel data (dcmread, pixel_array,
slope and intercept) and nothing else: no header checks, geometry, crops or writes. Both
rates are slices decoded per second; their ratio says what curation's extra work costs.
"""

from __future__ import annotations

import cProfile
import pstats
import shutil
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from benchmarks.archives import make_archive
from benchmarks.common import BenchResult, BenchSize, in_child, interleaved
from cohorts.dicom import CurationConfig, curate_cohort
from cohorts.dicom.outputs import save_npy_atomic
from cohorts.dicom.scan import iter_files
from cohorts.dicom.values import forget_values
from cohorts.parallel import pool_map

COMMAND = "python -m benchmarks.run --only curation"
CLINICAL_PX = 512  # a clinical CT slice's rows and columns
CLINICAL_SPACING_MM = 0.7  # its pixel spacing: a 358 mm field of view


def _config(workers: int) -> CurationConfig:
    return CurationConfig(
        crop_size_vox=16,
        crop_spacing_mm=1.0,
        min_slices=8,
        workers=workers,
        nodule_match_tolerance_mm=10.0,
        date_shift_max_days=0,
    )


def _floor_one(path: Path) -> int:
    """Read one file and rescale its pixels to HU; 1 when it had pixels, else 0."""
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        return 0
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    hu = ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return int(hu.ndim == 2)


def floor_loop(files: list[Path], workers: int) -> int:
    """Slices decoded by the plain loop (a process pool for workers > 1, like curation)."""
    if workers <= 1:
        return sum(_floor_one(p) for p in files)
    return sum(pool_map(_floor_one, files, workers, "floor", progress=False))


def write_floor(n_slices: int, scratch: Path) -> int:
    """Slices written by curation's own atomic writer as clinical-size series volumes.

    (16, 512, 512) int16 volumes of noise into a fresh folder under ``scratch``: what any
    curation must at least spend writing the HU volumes it promises (docs/ARCHITECTURE.md),
    whatever else it skips. The caller empties ``scratch`` (untimed: ``empty_folder``).
    """
    out = Path(tempfile.mkdtemp(prefix="bench-write-", dir=scratch))
    rng = np.random.default_rng(0)
    volume = rng.integers(-1024, 400, (16, CLINICAL_PX, CLINICAL_PX), dtype=np.int16)
    written = 0
    while written < n_slices:
        save_npy_atomic(out / f"v{written}.npy", volume)
        written += len(volume)
    return written


def curate_once(raw_dir: Path, workers: int, scratch: Path) -> int:
    """Slices curation decoded in one fresh run into a new folder under ``scratch`` (no reuse
    of old work); the caller empties ``scratch`` (untimed: ``empty_folder``).

    The header-value memo starts empty, as in a new run process: with 1 worker curation runs
    in this process, whose memo earlier repetitions would otherwise have filled (~7 % faster
    than any real run, and than the 2-worker runs, whose workers start empty).
    """
    forget_values()
    out = Path(tempfile.mkdtemp(prefix="bench-curated-", dir=scratch))
    return curate_cohort(raw_dir, out, _config(workers), progress=False).slices_processed


def empty_folder(folder: Path) -> None:
    """Delete everything under ``folder``, keeping the folder."""
    for child in folder.iterdir():
        shutil.rmtree(child, ignore_errors=True)


def _throughput(
    result: BenchResult,
    archive: Path,
    files: list[Path],
    size: BenchSize,
    suffix: str,
    scratch: Path,
    workers: tuple[int, ...] = (1, 2),
    extra: dict[str, Callable[[], int]] | None = None,
) -> dict[str, float]:
    """Curation and the floor (and ``extra`` cases returning slices) interleaved on one
    archive, outputs written under ``scratch`` and deleted between calls, untimed (the floor
    writes nothing); median slices/s by row label."""
    cases = dict(extra or {})
    for w in workers:
        cases[f"curate_cohort, {w} worker(s){suffix}"] = lambda w=w: curate_once(
            archive, w, scratch
        )
        cases[f"pydicom floor, {w} worker(s){suffix}"] = lambda w=w: floor_loop(files, w)
    rates: dict[str, float] = {}
    timed = interleaved(cases, size.reps, size.warmup, after=lambda: empty_folder(scratch))
    for label, runs in timed.items():
        row = result.add(label, "slices/s", [n / s for s, n in runs], slices=runs[0][1])
        rates[label] = row["median"]
    return rates


# Where one 1-worker curation spends its time: (label, file suffix, function), cumulative time
# under cProfile. "of which" rows are inside the row above them; the others do not overlap.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("header pass (read_header)", "cohorts/dicom/scan.py", "read_header"),
    ("  of which pydicom dcmread", "pydicom/filereader.py", "dcmread"),
    ("  of which Annex E identifiers", "cohorts/dicom/scan.py", "_identifiers"),
    ("decode chosen series (volume_from_geometry)", "cohorts/dicom/series.py", "volume_from_geometry"),
    ("write volumes and crops (save_npy_atomic)", "cohorts/dicom/outputs.py", "save_npy_atomic"),
    ("lung statistics", "cohorts/dicom/decode.py", "lung_statistics"),
    ("nodule crops", "cohorts/dicom/crops.py", "nodule_crop"),
    ("nodule ids across scans (match_nodules)", "cohorts/dicom/nodules.py", "match_nodules"),
    ("index, quarantine, nodule tables", "cohorts/dicom/outputs.py", "save_parquet_atomic"),
)  # fmt: skip


def curate_profile(raw_dir: Path) -> dict[str, float]:
    """Percent of one fresh 1-worker curation's time in each of ``STAGES`` (cProfile).

    Profiling slows Python-heavy code more than C code, so these are shares, not seconds.
    """
    forget_values()
    out = Path(tempfile.mkdtemp(prefix="bench-curated-"))
    profile = cProfile.Profile()
    try:
        profile.runcall(curate_cohort, raw_dir, out, _config(1), progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]

    def cumulative(suffix: str, name: str) -> float:
        return sum(v[3] for (f, _, n), v in stats.items() if n == name and f.endswith(suffix))

    total = cumulative("cohorts/dicom/curate.py", "curate_cohort")
    shares = {label: 100 * cumulative(f, n) / total for label, f, n in STAGES}
    top = sum(v for label, v in shares.items() if not label.startswith(" "))
    shares["everything else (grouping, checks, bookkeeping)"] = 100 - top
    return shares


def curate_peak_memory(raw_dir: str) -> dict[str, float]:
    """Curate in this (child) process with one worker; tracemalloc peak of Python/numpy memory."""
    out = Path(tempfile.mkdtemp(prefix="bench-curated-"))
    tracemalloc.start()
    try:
        summary = curate_cohort(Path(raw_dir), out, _config(1), progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        shutil.rmtree(out, ignore_errors=True)
    return {"tracemalloc_peak_mib": peak / 2**20, "series": summary.series_processed}


def run(size: BenchSize, work_dir: Path) -> BenchResult:
    result = BenchResult("curation", "Curation throughput and memory", COMMAND)
    n_patients = size.archive_patients
    raw = work_dir / "curation" / "throughput"
    make_archive(raw, n_archive=n_patients)
    archive = raw / "archive"
    files = list(iter_files(archive / "dicom"))
    result.config = {
        "archive_patients": n_patients,
        "files": len(files),
        "preset": "tiny (48 px, 16 slices)",
    }
    scratch = work_dir / "curation" / "outputs"
    scratch.mkdir(parents=True, exist_ok=True)
    rates = _throughput(result, archive, files, size, "", scratch)
    for workers in (1, 2):
        result.ratio(
            f"curation / floor, {workers} worker(s)",
            rates[f"curate_cohort, {workers} worker(s)"]
            / rates[f"pydicom floor, {workers} worker(s)"],
            "share of the plain read-and-rescale rate that curation keeps (1.0 = free)",
        )
    curation_speedup = rates["curate_cohort, 2 worker(s)"] / rates["curate_cohort, 1 worker(s)"]
    floor_speedup = rates["pydicom floor, 2 worker(s)"] / rates["pydicom floor, 1 worker(s)"]
    result.ratio(
        "curation 2 workers / 1 worker",
        curation_speedup,
        "parallel speed-up (2.0 = linear on 2 cores)",
    )
    result.ratio(
        "pydicom floor 2 workers / 1 worker",
        floor_speedup,
        "the same pool around the plain loop: what this machine's 2 cores give file reading",
    )
    result.ratio(
        "curation speed-up / floor speed-up",
        curation_speedup / floor_speedup,
        "share of the machine's own 2-worker gain that curation keeps (1.0 = all of it)",
    )

    clinical = work_dir / "curation" / "clinical"
    make_archive(
        clinical,
        n_archive=max(1, n_patients // 8),
        image_size_px=CLINICAL_PX,
        pixel_spacing_mm=CLINICAL_SPACING_MM,
    )
    clinical_files = list(iter_files(clinical / "archive" / "dicom"))
    result.config["clinical_files"] = len(clinical_files)
    write_label = f"write floor: save_npy_atomic, {CLINICAL_PX} px"
    n_slices = sum(
        1
        for p in clinical_files
        if pydicom.dcmread(p, stop_before_pixels=True).get("Rows") == CLINICAL_PX
    )
    big = _throughput(
        result,
        clinical / "archive",
        clinical_files,
        size,
        f", {CLINICAL_PX} px",
        scratch,
        (1,),
        extra={write_label: lambda: write_floor(n_slices, scratch)},
    )
    result.ratio(
        f"curation / floor, 1 worker(s), {CLINICAL_PX} px",
        big[f"curate_cohort, 1 worker(s), {CLINICAL_PX} px"]
        / big[f"pydicom floor, 1 worker(s), {CLINICAL_PX} px"],
        "the same share on slices of a clinical CT's in-plane size",
    )
    read, write = big[f"pydicom floor, 1 worker(s), {CLINICAL_PX} px"], big[write_label]
    result.ratio(
        f"ceiling of curation / floor, {CLINICAL_PX} px",
        1.0 / (1.0 + read / write),
        "the share left if curation only read and wrote each slice once (all else free)",
    )

    for label, share in curate_profile(archive).items():
        result.add(f"profile: {label}", "% of curation", [share])

    base = max(1, size.archive_patients // 4)
    peaks: dict[int, float] = {}
    for factor in (1, 2, 4):
        mem_raw = work_dir / "curation" / f"memory-x{factor}"
        make_archive(mem_raw, n_archive=base * factor)
        child = in_child(curate_peak_memory, str(mem_raw / "archive"))
        rss_mib = child["maxrss_kib"] / 1024
        peaks[factor] = rss_mib
        result.add(f"peak RSS, archive x{factor} ({base * factor} patients)", "MiB", [rss_mib])
        result.add(
            f"tracemalloc peak, archive x{factor}",
            "MiB",
            [child["value"]["tracemalloc_peak_mib"]],
            series=child["value"]["series"],
        )
    for factor in (2, 4):
        result.ratio(
            f"peak RSS x{factor} / x1",
            peaks[factor] / peaks[1],
            "memory growth with the archive (1.0 = flat: one series in memory per worker)",
        )
    result.notes.append(
        "Profile: one fresh 1-worker curation under cProfile, cumulative time per stage as a "
        "share of the whole call; indented rows are part of the row above. Native "
        "little-endian slices are decoded from the pixel offset the header pass recorded "
        "(one parse per file); compressed ones are parsed again."
    )
    result.notes.append(
        "Curation and the write floor write into a scratch folder that is emptied after each "
        "call, outside the timed region: deleting outputs is not curation's work, and the "
        "read floor, which writes nothing, does not pay it."
    )
    result.notes.append(
        "Peak memory: one spawned process per size, 1 worker, so ru_maxrss is that run's "
        "own peak (it includes the ~interpreter and library baseline)."
    )
    shutil.rmtree(work_dir / "curation", ignore_errors=True)
    return result

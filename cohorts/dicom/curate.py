"""Curate a raw CT archive into the "Curated cohort" contract (docs/ARCHITECTURE.md).

Inputs (``RawCohort``): the pipeline's layout ``raw/<cohort>/{dicom/, annotations.csv,
labels.csv}``, or any folder of DICOM files as a hospital exports it (nested or flat, with or
without extensions, DICOMDIR and stray non-DICOM files included), with the annotation and
label CSVs optional and given separately.

Steps, each visible in ``curate_cohort``:

1. walk the DICOM folder and read every file's header in a pool (pixels deferred);
2. group by SeriesInstanceUID; check type and geometry from headers (reasons in
   ``cohorts.dicom.series``; file reasons in ``cohorts.dicom.scan``);
3. per study, decode the valid candidates in a pool, one series in memory per worker, in the
   order of ``cohorts.dicom.select`` (the rule serving uses too) until one is accepted; the
   others are ``not_selected``;
4. save HU volumes at native spacing and nodule crops from the annotations (if any);
5. link each patient's scans in time and match nodules across them (nearest centre within
   ``nodule_match_tolerance_mm`` -> same ``nodule_id``);
6. write index / quarantine / nodules / labels parquet files atomically.

Ids are pseudonymised with ``cohorts.privacy``; no header text other than the ids' keyed
hashes, modality and (shifted) dates reaches the outputs. The only raw strings written are
file paths relative to the raw cohort directory, in ``quarantine.parquet``, so an operator
can find a bad file; components naming a patient or a UID are redacted (``redact_path``).
Accepted series also get cheap sanity statistics for the quality suite: the largest
off-diagonal direction cosine and lung-region HU statistics (``lung_statistics``).
A per-series fingerprint (file paths, sizes, mtimes, its annotation
rows, crop parameters, ``CURATION_VERSION``) makes reruns idempotent: an unchanged series is never decoded again.
A run holds an exclusive lock on ``<out>/.lock`` (a concurrent run waits, then reuses the
work) and first removes temporary files a killed run left behind.

The pieces live beside it: ``cohorts.dicom.select`` (which series of a study), ``decode`` (what
a pool worker does with one series), ``outputs`` (the cohort's tables, atomic writers and the
previous run's outcomes for reuse).

Size: about 430 lines because ``_curate`` keeps steps 1-6 in order in one function, so a
reader follows one cohort through them; each piece it calls lives beside it (scan, series,
select, decode, nodules, inputs, outputs).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cohorts.dicom.decode import DecodeJob, decode_series, orientation_max_offdiag
from cohorts.dicom.inputs import RawCohort, iso_date, read_annotations, read_labels
from cohorts.dicom.nodules import match_nodules
from cohorts.dicom.outputs import (
    INDEX_COLUMNS,
    INDEX_SCHEMA,
    LABEL_SCHEMA,
    NODULE_COLUMNS,
    NODULE_SCHEMA,
    QUARANTINE_COLUMNS,
    QUARANTINE_SCHEMA,
    read_previous,
    remove_stale,
    reuse_outcome,
    save_parquet_atomic,
)
from cohorts.dicom.scan import (
    ScanResult,
    SliceHeader,
    group_headers,
    iter_files,
    read_header_or_skip,
    redact_path,
)
from cohorts.dicom.select import StudySelection
from cohorts.dicom.series import (
    SeriesError,
    SeriesGeometry,
    validate_headers,
)
from cohorts.files import atomic_write_json
from cohorts.parallel import pool_map, worker_pool
from cohorts.privacy import (
    KEY_RECORD,
    SYNTHETIC_MARKER,
    PrivacyConfig,
    date_shift_days,
    is_marked_synthetic,
    key_fingerprint,
    key_record,
    pseudonymise,
    resolve_key,
)

# the worker pools' forkserver imports this module (and so scan, series, crops) once, up front
_PRELOAD = (__name__,)
CURATION_VERSION = (
    "3"  # 2: lung_hu_median, lung_fraction, orientation_max_offdiag; 3: crop_spacing_mm
)


@dataclass(frozen=True)
class CurationConfig:
    """Curation knobs: the fields of params.yaml ``curate`` (values from there, no defaults
    here to disagree with them) and the date shift of params.yaml ``privacy``."""

    crop_size_vox: int
    crop_spacing_mm: float
    min_slices: int
    workers: int
    nodule_match_tolerance_mm: float
    date_shift_max_days: int  # cohorts/privacy.py PrivacyConfig (params.yaml privacy)
    pseudonym_key: bytes | None = None  # not a setting: cohorts/privacy.py resolve_key, per cohort

    @classmethod
    def from_params(cls, section: Mapping[str, Any], privacy: PrivacyConfig) -> CurationConfig:
        """From ``params.yaml`` sections ``curate`` and ``privacy``; the key is never a setting
        (resolved per cohort)."""
        names = {f.name for f in fields(cls)} - {"pseudonym_key", "date_shift_max_days"}
        chosen = {k: v for k, v in section.items() if k in names}
        return cls(**chosen, date_shift_max_days=privacy.date_shift_max_days)


@dataclass
class CurationSummary:
    """What a run did; ``to_dict`` is what orchestration attaches as metadata."""

    accepted: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    unreadable_files: int = 0
    nodules: int = 0
    series_found: int = 0
    series_processed: int = 0
    series_reused: int = 0
    slices_processed: int = 0
    skipped_files: int = 0
    nodules_outside_volume: int = 0
    seconds: float = 0.0
    synthetic: bool | None = None  # None: the caller gave the key
    key_fingerprint: str = ""  # cohorts/privacy.py key_fingerprint (never the key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- helpers


def _fingerprint(
    headers: list[SliceHeader], raw_dir: Path, annotations: tuple[Any, ...], config: CurationConfig
) -> str:
    parts = sorted(
        f"{h.path.relative_to(raw_dir).as_posix()}|{h.size_bytes}|{h.mtime_ns}" for h in headers
    )
    payload = json.dumps(
        [CURATION_VERSION, parts, list(annotations), config.crop_size_vox, config.crop_spacing_mm]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


# ---------------------------------------------------------------- driver


def cohort_is_synthetic(raw_dir: Path, scan: ScanResult) -> bool:
    """Is this cohort the generator's output, so that the demo key may pseudonymise it?

    Only when the folder carries the generator's marker file and every series the generator's
    DICOM mark; a marker over series without the mark (real files copied into a generated
    folder) is refused rather than pseudonymised with a published key.
    """
    if not is_marked_synthetic(raw_dir):
        return False
    unmarked = scan.unmarked_series()
    if unmarked:
        raise ValueError(
            f"{raw_dir} carries {SYNTHETIC_MARKER} but {unmarked} of its {len(scan.series)} "
            "series lack the generator's mark; remove the marker to curate it as real data "
            "(with this installation's private key)"
        )
    return True


def curate_cohort(
    raw: Path | RawCohort, out_dir: Path, config: CurationConfig, progress: bool = True
) -> CurationSummary:
    """Curate ``raw`` (a ``RawCohort``, or a folder: ``RawCohort.from_folder``) into ``out_dir``.

    Raises only for unusable arguments (input folder or a given CSV missing:
    FileNotFoundError; output not writable, or inside the input: PermissionError / ValueError;
    a CSV without its contract columns: ValueError); every problem with the images becomes a
    quarantine reason.
    """
    started = time.perf_counter()
    raw = raw if isinstance(raw, RawCohort) else RawCohort.from_folder(Path(raw))
    out_dir = Path(out_dir)
    if not raw.dicom_dir.is_dir():
        raise FileNotFoundError(f"DICOM input folder not found: {raw.dicom_dir}")
    for given in (raw.annotations, raw.labels):
        if given is not None and not Path(given).is_file():
            raise FileNotFoundError(f"input file not found: {given}")
    if out_dir.resolve().is_relative_to(raw.dicom_dir.resolve()):
        raise ValueError(
            f"output folder {out_dir} is inside the DICOM input {raw.dicom_dir}; curating "
            "would read its own outputs: choose an output outside the input"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe."):
            pass
    except OSError as exc:
        raise PermissionError(f"curated output directory {out_dir} is not writable: {exc}") from exc
    with (
        _exclusive_lock(out_dir / ".lock"),  # a second curation of out_dir waits, then reuses
        worker_pool(config.workers, _PRELOAD) as pool,  # one pool for headers and decoding
    ):
        return _curate(raw, out_dir, config, progress, started, pool)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (released on exit, or by the OS if killed)."""
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _curate(
    raw: RawCohort,
    out_dir: Path,
    config: CurationConfig,
    progress: bool,
    started: float,
    pool: ProcessPoolExecutor | None,
) -> CurationSummary:
    """The body of ``curate_cohort``, run while holding the output folder's lock."""
    raw_dir = raw.root
    for stale in [
        p for d in (out_dir, out_dir / "volumes", out_dir / "crops") for p in d.glob(".*.tmp")
    ]:
        stale.unlink(missing_ok=True)  # left by a killed run (atomic_output's temp files)
    summary = CurationSummary()

    # 1-2. headers, grouped by series
    files = list(iter_files(raw.dicom_dir))
    scan = group_headers(
        pool_map(read_header_or_skip, files, config.workers, "headers", progress, pool=pool)
    )
    if config.pseudonym_key is None:
        synthetic = cohort_is_synthetic(raw_dir, scan)
        config = replace(config, pseudonym_key=resolve_key(synthetic))
        summary.synthetic = synthetic
    key = config.pseudonym_key
    summary.key_fingerprint = key_fingerprint(key)
    summary.skipped_files = len(scan.skipped_files)
    annotations = read_annotations(raw.annotations)
    previous, prev_nodules, prev_quarantine = read_previous(out_dir)

    identifiers = {i for headers in scan.series.values() for h in headers for i in h.identifiers}

    def rel(path: Path) -> str:
        return redact_path(path.relative_to(raw_dir).as_posix(), identifiers, key)

    rows: dict[str, dict[str, Any]] = {}
    quarantine: list[dict[str, Any]] = [
        {"file": rel(p), "reason": reason, "series_id": None} for p, reason in scan.bad_files
    ]
    candidates: dict[str, dict[str, SeriesGeometry]] = {}  # study -> series_id -> geometry
    fingerprints: dict[str, str] = {}
    series_annotations: dict[str, tuple[Any, ...]] = {}
    for series_uid in sorted(scan.series):
        headers = scan.series[series_uid]
        first = headers[0]
        series_id = pseudonymise(series_uid, key, "series")
        shift = date_shift_days(first.patient_id, key, config.date_shift_max_days)
        series_annotations[series_id] = annotations.get(series_uid, ())
        fingerprints[series_id] = _fingerprint(
            headers, raw_dir, series_annotations[series_id], config
        )
        rows[series_id] = {
            "patient_id": pseudonymise(first.patient_id, key, "patient"),
            "series_id": series_id,
            "study_id": pseudonymise(first.study_uid or series_uid, key, "study"),
            "study_date": iso_date(first.study_date, shift),
            "modality": first.modality or None,
            "n_slices": len(headers),
            "status": "quarantined",
            "reason": "",
            "volume_path": None,
            "fingerprint": fingerprints[series_id],
        }
        quarantine.extend(
            {"file": rel(h.path), "reason": h.problem, "series_id": series_id}
            for h in headers
            if h.problem
        )
        try:
            geometry = validate_headers(headers, config.min_slices)
        except SeriesError as err:
            rows[series_id]["reason"] = err.index_reason
            continue
        rows[series_id].update(_geometry_columns(geometry))
        candidates.setdefault(rows[series_id]["study_id"], {})[series_id] = geometry

    # 3-4. per study, decode candidates in the selection rule's order until one is accepted
    selections = {study: StudySelection(c) for study, c in candidates.items()}
    nodule_rows: list[dict[str, Any]] = []
    while selections:
        jobs: list[DecodeJob] = []
        for study in list(selections):
            selection = selections[study]
            while (series_id := selection.next) is not None:
                prev = previous.get(series_id)
                reused = (
                    reuse_outcome(prev, series_id, out_dir, prev_nodules, prev_quarantine)
                    if prev is not None and prev["fingerprint"] == fingerprints[series_id]
                    else None
                )
                if reused is None:  # new, changed, or its files vanished from out_dir: decode
                    jobs.append(
                        DecodeJob(candidates[study][series_id], series_id, series_annotations[series_id],
                             out_dir, config.crop_size_vox, config.crop_spacing_mm)
                    )  # fmt: skip
                    break
                summary.series_reused += 1
                ok, old_nodules, old_quarantine = reused
                quarantine.extend(old_quarantine)
                if ok:
                    rows[series_id].update(
                        status="ok",
                        reason="",
                        volume_path=prev["volume_path"],
                        lung_hu_median=prev.get("lung_hu_median"),
                        lung_fraction=prev.get("lung_fraction"),
                    )
                    nodule_rows.extend(old_nodules)
                    _mark_not_selected(rows, selection.accept(series_id), series_id)
                    break
                rows[series_id]["reason"] = prev["reason"]
                selection.reject(series_id)
            if selection.done:
                del selections[study]
        if not jobs:
            continue
        study_of = {job.series_id: rows[job.series_id]["study_id"] for job in jobs}
        decoded = pool_map(decode_series, jobs, config.workers, "series", progress, pool=pool)
        for outcome in decoded:
            summary.series_processed += 1
            summary.slices_processed += outcome.n_slices
            summary.nodules_outside_volume += outcome.outside
            selection = selections[study_of[outcome.series_id]]
            row = rows[outcome.series_id]
            if outcome.error is None:
                row.update(status="ok", reason="", volume_path=f"volumes/{outcome.series_id}.npy")
                row.update(outcome.lung)
                nodule_rows.extend(outcome.nodules)
                _mark_not_selected(rows, selection.accept(outcome.series_id), outcome.series_id)
            else:
                selection.reject(outcome.series_id)
                row["reason"] = outcome.error.index_reason
                quarantine.extend(
                    {"file": rel(p), "reason": outcome.error.reason, "series_id": outcome.series_id}
                    for p in outcome.error.files
                )
            if selection.done:
                del selections[study_of[outcome.series_id]]

    # 5. link scans in time, match nodules
    index = pd.DataFrame([rows[s] for s in sorted(rows)]).reindex(columns=INDEX_COLUMNS)
    index = index.astype(
        {"n_slices": "Int64", "shape_z": "Int64", "shape_y": "Int64", "shape_x": "Int64"}
    )
    nodules = pd.DataFrame(nodule_rows).reindex(columns=NODULE_COLUMNS)
    if len(nodules):
        meta = index.set_index("series_id")
        nodules["patient_id"] = nodules["series_id"].map(meta["patient_id"])
        nodules["study_date"] = nodules["series_id"].map(meta["study_date"])
        nodules["nodule_id"] = match_nodules(nodules, config.nodule_match_tolerance_mm, key)
        nodules = nodules.sort_values(["patient_id", "study_date", "series_id", "annotation_index"])
    quarantine_frame = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS).drop_duplicates()

    # 6. write
    remove_stale(out_dir, index, nodules)
    save_parquet_atomic(out_dir / "index.parquet", index, INDEX_SCHEMA)
    save_parquet_atomic(out_dir / "quarantine.parquet", quarantine_frame, QUARANTINE_SCHEMA)
    save_parquet_atomic(out_dir / "nodules.parquet", nodules, NODULE_SCHEMA)
    save_parquet_atomic(
        out_dir / "labels.parquet",
        read_labels(raw.labels, config.pseudonym_key, config.date_shift_max_days),
        LABEL_SCHEMA,
    )
    record = key_record(key, config.date_shift_max_days, summary.synthetic)
    atomic_write_json(out_dir / KEY_RECORD, record)

    summary.series_found = len(index)
    summary.accepted = int((index["status"] == "ok").sum()) if len(index) else 0
    reasons = (
        index.loc[index["status"] != "ok", "reason"] if len(index) else pd.Series([], dtype=str)
    )
    summary.quarantined = dict(Counter(r.split(":")[0] for r in reasons))
    summary.unreadable_files = len(quarantine_frame)
    summary.nodules = len(nodules)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _geometry_columns(geometry: SeriesGeometry) -> dict[str, Any]:
    sz, sy, sx = geometry.spacing_mm
    nz, ny, nx = geometry.shape
    ox, oy, oz = geometry.origin_mm
    return {
        "spacing_mm_z": sz, "spacing_mm_y": sy, "spacing_mm_x": sx,
        "shape_z": nz, "shape_y": ny, "shape_x": nx,
        "slice_thickness_mm": geometry.slice_thickness_mm,
        "origin_mm_x": ox, "origin_mm_y": oy, "origin_mm_z": oz,
        "direction": [float(v) for v in geometry.direction.ravel()],
        "orientation_max_offdiag": orientation_max_offdiag(geometry.direction),
    }  # fmt: skip


def _mark_not_selected(rows: dict[str, dict[str, Any]], others: list[str], chosen: str) -> None:
    for series_id in others:
        if series_id != chosen:
            rows[series_id].update(
                status="quarantined", reason=f"not_selected: study uses {chosen}"
            )

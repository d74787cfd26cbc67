"""Walk a raw DICOM export and group its files by series, reading headers only.

A hospital export has any layout and any file names: DICOMDIR index files, files without an
extension, text files and half-copied files sit beside the images. Every regular file is
opened once with the pixel data deferred (its offset and length are read, not its bytes), so
truncation can be spotted without decoding and a whole archive can be grouped with one
series in memory at most.

File-level reasons (``quarantine.parquet``):

- ``empty_file``          zero bytes
- ``not_dicom``           not parseable as DICOM
- ``unreadable_header``   parse error inside the header
- ``no_series_uid``       DICOM but no SeriesInstanceUID (e.g. a file cut inside its header)
- ``missing_pixel_data``  an image header without PixelData
- ``truncated``           PixelData shorter than its declared length (file cut short)
- ``undecodable``         pixel data the installed decoders cannot decode (found later)

DICOMDIR files are recognised and skipped (they index the images, they are not images).
Paths written to outputs go through ``redact_path``: a folder or file named after a patient,
an accession number or a UID becomes ``redacted-<keyed hash>``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from cohorts.dicom.deid import annex_e_values
from cohorts.privacy import SYNTHETIC_DICOM_MARK

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_UID_LIKE = re.compile(r"^\d+(\.\d+){3,}$")


@dataclass(frozen=True)
class SliceHeader:
    """The header fields curation needs from one image file (no pixels, no PHI beyond ids)."""

    path: Path
    size_bytes: int
    mtime_ns: int
    series_uid: str
    study_uid: str
    patient_id: str
    study_date: str
    modality: str
    image_type: tuple[str, ...]
    position_mm: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing_mm: tuple[float, float] | None
    slice_thickness_mm: float | None
    rows: int
    columns: int
    n_frames: int
    problem: str = ""  # a file-level reason when the file is an image that cannot be used
    identifiers: tuple[str, ...] = ()  # raw PHI strings, only to redact them from file paths
    synthetic: bool = False  # carries the built-in generator's mark (cohorts/privacy.py)


@dataclass
class ScanResult:
    """Files grouped by raw SeriesInstanceUID, plus the files that belong to no series."""

    series: dict[str, list[SliceHeader]] = field(default_factory=dict)
    bad_files: list[tuple[Path, str]] = field(default_factory=list)
    skipped_files: list[Path] = field(default_factory=list)


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` in a stable order, following no symlinked dirs."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file():
                yield path


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    finite = all(math.isfinite(v) for v in out)  # "nan" / "inf" parse as floats
    return out if len(out) == n and finite else None


def _positive_or_none(value: object) -> float | None:
    """A length in mm, or None when absent, not a number, not finite or not positive."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _strings(value: object) -> tuple[str, ...]:
    """A multi-valued CS as upper-case strings; a single value is one string, not characters."""
    if value is None or value == "":
        return ()
    if isinstance(value, str | bytes):
        return (str(value).upper(),)
    return tuple(str(v).upper() for v in value)  # type: ignore[attr-defined]


def _pixel_data_problem(ds: pydicom.Dataset, path: Path, size_bytes: int) -> str:
    """``missing_pixel_data`` / ``truncated`` / "" judged from the deferred element only."""
    if "PixelData" not in ds:
        return "missing_pixel_data"
    raw = ds.get_item("PixelData")
    value = getattr(raw, "value", None)
    tell = getattr(raw, "value_tell", None)
    declared = getattr(raw, "length", None)
    if value is None and tell is not None and declared not in (None, _UNDEFINED_LENGTH):
        if tell + declared > size_bytes:  # deferred: the value would run past the file end
            return "truncated"
        length = declared
    elif isinstance(value, bytes):
        length = len(value)
    else:
        return ""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        return ""  # encapsulated frames: only decoding can tell
    if "Rows" in ds and "BitsAllocated" in ds:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1))
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.BitsAllocated)
            // 8
        )
        if length < expected:
            return "truncated"
    return ""


_DICOM_DATE = re.compile(r"[0-9]{8}")


def _identifiers(ds: pydicom.Dataset) -> tuple[str, ...]:
    """Raw identifying strings of a file: every DICOM PS3.15 Annex E attribute's value
    (``cohorts.dicom.deid``), name parts, and each date also in its ISO form.

    Dates are identifiers too (HIPAA Safe Harbor): an export folder named after the study day
    would otherwise carry the real date past the date shift.
    """
    values: set[str] = set()
    for _keyword, vr, value in annex_e_values(ds):
        values.add(value)
        if vr == "PN":
            values.update(p for p in value.replace("^", " ").split() if len(p) >= 3)
        elif vr in ("DA", "DT") and _DICOM_DATE.match(value):
            values.add(f"{value[:4]}-{value[4:6]}-{value[6:8]}")
    return tuple(sorted(values))


def redact_path(relative: str, identifiers: set[str], key: bytes) -> str:
    """A relative path with every component that holds PHI replaced by a keyed token.

    Exports often name folders and files after patients or UIDs; a component is replaced when
    it contains a known identifier (case-insensitive) or looks like a DICOM UID. The token is
    stable per key, so an operator with the key can still find the file.
    """
    lowered = [i.lower() for i in identifiers if len(i) >= 3]
    parts = []
    for part in relative.split("/"):
        stem = part.split(".dcm")[0] if part.lower().endswith(".dcm") else part
        if _UID_LIKE.match(stem) or any(i in part.lower() for i in lowered):
            digest = hmac.new(key, f"path:{part}".encode(), hashlib.sha256).hexdigest()[:12]
            part = f"redacted-{digest}"
        parts.append(part)
    return "/".join(parts)


def read_header(path: Path) -> SliceHeader | tuple[Path, str] | None:
    """Header of one file; ``(path, reason)`` for an unusable file; None for a DICOMDIR."""
    try:
        stat = path.stat()
    except OSError:
        return path, "not_dicom"
    if stat.st_size == 0:
        return path, "empty_file"
    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, defer_size="1 KB", force=True)
        except Exception:  # noqa: BLE001 - any parse failure of a non-DICOM file
            return path, "not_dicom"
        if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
            return path, "not_dicom"
    except Exception:  # noqa: BLE001 - pydicom raises many types on a broken header
        return path, "unreadable_header"
    try:  # values convert lazily: a damaged element raises on first access, not in dcmread
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            return None
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - e.g. NotImplementedError for an unknown VR
        return path, "unreadable_header"
    if not series_uid:
        return path, "no_series_uid"
    try:
        problem = _pixel_data_problem(ds, path, stat.st_size)
        study_date = str(ds.get("StudyDate", "") or ds.get("SeriesDate", "") or "")
        thickness = ds.get("SliceThickness")
        return SliceHeader(
            path=path,
            size_bytes=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            series_uid=series_uid,
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            patient_id=str(ds.get("PatientID", "") or "") or f"no-patient-id:{series_uid}",
            study_date=study_date,
            modality=str(ds.get("Modality", "") or ""),
            image_type=_strings(ds.get("ImageType")),
            position_mm=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
            pixel_spacing_mm=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            slice_thickness_mm=_positive_or_none(thickness),
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            n_frames=int(ds.get("NumberOfFrames", 1) or 1),
            problem=problem,
            identifiers=_identifiers(ds),
            synthetic=str(ds.get("DeidentificationMethod", "") or "") == SYNTHETIC_DICOM_MARK,
        )
    except Exception:  # noqa: BLE001 - a value that does not convert is a broken header
        return path, "unreadable_header"


def group_headers(results: Iterable[SliceHeader | tuple[Path, str] | None | Path]) -> ScanResult:
    """Fold per-file results into series; a bare Path marks a skipped DICOMDIR."""
    scan = ScanResult()
    for item in results:
        if isinstance(item, SliceHeader):
            scan.series.setdefault(item.series_uid, []).append(item)
        elif isinstance(item, tuple):
            scan.bad_files.append(item)
        elif isinstance(item, Path):
            scan.skipped_files.append(item)
    return scan


def read_header_or_skip(path: Path) -> SliceHeader | tuple[Path, str] | Path:
    """``read_header`` with a DICOMDIR returned as its bare path (picklable for a pool)."""
    result = read_header(path)
    return path if result is None else result


def scan_dicom_tree(root: Path) -> ScanResult:
    """Serial scan of a tree (the curation driver runs ``read_header_or_skip`` in a pool)."""
    return group_headers(read_header_or_skip(p) for p in iter_files(root))

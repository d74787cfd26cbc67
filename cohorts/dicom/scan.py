"""Walk a raw DICOM export and group its files by series, reading headers only.

A hospital export has any layout and any file names: DICOMDIR index files, files without an
extension, text files and half-copied files sit beside the images. Every regular file is
opened once with the pixel data deferred (its offset and length are read, not its bytes), so
truncation can be spotted without decoding and a whole archive can be grouped with one
series in memory at most. For natively encoded little-endian pixels the header also records
where they lie and how to decode them (``NativePixels``), so decoding a chosen series reads
only the pixel bytes instead of parsing each file a second time.

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
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError

from cohorts.dicom.deid import annex_e_values
from cohorts.dicom.values import HeaderValues
from cohorts.privacy import SYNTHETIC_DICOM_MARK

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_UID_LIKE = re.compile(r"^\d+(\.\d+){3,}$")


_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})  # implicit/explicit LE


@dataclass(frozen=True)
class NativePixels:
    """Where a slice's uncompressed pixels lie in its file, and how they become HU.

    Filled only when every value converted cleanly in the header pass: offset and length in
    bytes of the PixelData value, pydicom's decode options (rows, columns, bits, signedness,
    photometric interpretation), RescaleSlope / RescaleIntercept (finite) and the stored
    padding value(s). Anything unusual leaves it None and the full-parse path decides.
    """

    offset: int
    length: int
    transfer_syntax: str
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    slope: float
    intercept: float
    padding: int | None
    padding_limit: int | None


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
    native: NativePixels | None = None  # set when the pixels can be read without a re-parse


@dataclass
class ScanResult:
    """Files grouped by raw SeriesInstanceUID, plus the files that belong to no series."""

    series: dict[str, list[SliceHeader]] = field(default_factory=dict)
    bad_files: list[tuple[Path, str]] = field(default_factory=list)
    skipped_files: list[Path] = field(default_factory=list)

    def unmarked_series(self) -> int:
        """Series with a file that lacks the generator's DICOM mark (``SliceHeader.synthetic``).

        The one test of "these images are generated": the demo key may pseudonymise only
        series where it is 0 (``cohorts.privacy``; curation also needs the folder's marker
        file, which a request folder for serving does not have).
        """
        return sum(not all(h.synthetic for h in headers) for headers in self.series.values())


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


@lru_cache(maxsize=256)
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def _get(values: HeaderValues, keyword: str, default: object = None) -> Any:
    """``ds.get(keyword, default)`` through ``HeaderValues``' memo of converted values."""
    return values.get(_tag(keyword), default)


def stored_value(value: object, pixel_representation: object) -> int | None:
    """A US-or-SS attribute as an int (implicit VR files may leave it as raw bytes, signed
    when the file's PixelRepresentation is 1)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        signed = int(pixel_representation or 0) == 1
        return int.from_bytes(value[:2], "little", signed=signed)
    return int(value)  # type: ignore[call-overload]


def _native_pixels(ds: pydicom.Dataset, values: HeaderValues) -> NativePixels | None:
    """``NativePixels`` for a single-frame, single-sample, little-endian native slice, or None.

    None whenever a value is missing, odd or fails to convert: the decode step then parses
    the whole file and reports the problem exactly as before.
    """
    try:
        ts = str(ds.file_meta.TransferSyntaxUID)
        raw = ds.get_item("PixelData", keep_deferred=True)
        offset = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", None)
        if ts not in _NATIVE_SYNTAXES or offset is None or length in (None, _UNDEFINED_LENGTH):
            return None
        if (
            int(_get(values, "SamplesPerPixel", 1)) != 1
            or int(_get(values, "NumberOfFrames", 1) or 1) != 1
        ):
            return None
        bits = int(_get(values, "BitsAllocated"))
        photometric = str(_get(values, "PhotometricInterpretation"))
        rows, columns = int(_get(values, "Rows")), int(_get(values, "Columns"))
        if bits not in (8, 16, 32) or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            return None
        if length < rows * columns * bits // 8:
            return None
        slope = float(_get(values, "RescaleSlope", 1.0) or 1.0)
        intercept = float(_get(values, "RescaleIntercept", 0.0) or 0.0)
        if not (math.isfinite(slope) and math.isfinite(intercept)):
            return None
        representation = _get(values, "PixelRepresentation", 0)
        padding = stored_value(_get(values, "PixelPaddingValue"), representation)
        limit = (
            stored_value(_get(values, "PixelPaddingRangeLimit"), representation)
            if padding is not None
            else None
        )
        return NativePixels(
            offset=int(offset),
            length=int(length),
            transfer_syntax=ts,
            rows=rows,
            columns=columns,
            bits_allocated=bits,
            bits_stored=int(_get(values, "BitsStored", bits) or bits),
            pixel_representation=int(representation or 0),
            photometric=photometric,
            slope=slope,
            intercept=intercept,
            padding=padding,
            padding_limit=limit,
        )
    except Exception:  # noqa: BLE001 - any doubt: the full-parse path judges the file
        return None


def _pixel_data_problem(ds: pydicom.Dataset, values: HeaderValues, size_bytes: int) -> str:
    """``missing_pixel_data`` / ``truncated`` / "" judged from the deferred element only."""
    if "PixelData" not in ds:
        return "missing_pixel_data"
    raw = ds.get_item("PixelData", keep_deferred=True)  # without it pydicom reads the pixels
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
            int(_get(values, "Rows"))
            * int(_get(values, "Columns"))
            * int(_get(values, "SamplesPerPixel", 1))
            * int(_get(values, "NumberOfFrames", 1) or 1)
            * int(_get(values, "BitsAllocated"))
            // 8
        )
        if length < expected:
            return "truncated"
    return ""


_DICOM_DATE = re.compile(r"[0-9]{8}")


def _identifiers(ds: pydicom.Dataset, values: HeaderValues) -> tuple[str, ...]:
    """Raw identifying strings of a file: every DICOM PS3.15 Annex E attribute's value
    (``cohorts.dicom.deid``), name parts, and each date also in its ISO form.

    Dates are identifiers too (HIPAA Safe Harbor): an export folder named after the study day
    would otherwise carry the real date past the date shift.
    """
    found: set[str] = set()
    for _keyword, vr, value in annex_e_values(ds, values):
        found.add(value)
        if vr == "PN":
            found.update(p for p in value.replace("^", " ").split() if len(p) >= 3)
        elif vr in ("DA", "DT") and _DICOM_DATE.match(value):
            found.add(f"{value[:4]}-{value[4:6]}-{value[6:8]}")
    return tuple(sorted(found))


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


def read_header(path: Path, identifiers: bool = True) -> SliceHeader | tuple[Path, str] | None:
    """Header of one file; ``(path, reason)`` for an unusable file; None for a DICOMDIR.

    ``identifiers=False`` leaves ``SliceHeader.identifiers`` empty: collecting every Annex E
    value is ~15 % of the pass and serves only ``redact_path``, for callers that write paths
    (curation's tables). Serving reports no paths and skips it.
    """
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
        values = HeaderValues(ds)
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            return None
        series_uid = str(_get(values, "SeriesInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - e.g. NotImplementedError for an unknown VR
        return path, "unreadable_header"
    if not series_uid:
        return path, "no_series_uid"
    try:
        problem = _pixel_data_problem(ds, values, stat.st_size)
        study_date = str(_get(values, "StudyDate", "") or _get(values, "SeriesDate", "") or "")
        thickness = _get(values, "SliceThickness")
        return SliceHeader(
            path=path,
            size_bytes=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            series_uid=series_uid,
            study_uid=str(_get(values, "StudyInstanceUID", "") or ""),
            patient_id=str(_get(values, "PatientID", "") or "") or f"no-patient-id:{series_uid}",
            study_date=study_date,
            modality=str(_get(values, "Modality", "") or ""),
            image_type=_strings(_get(values, "ImageType")),
            position_mm=_floats(_get(values, "ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_floats(_get(values, "ImageOrientationPatient"), 6),  # type: ignore[arg-type]
            pixel_spacing_mm=_floats(_get(values, "PixelSpacing"), 2),  # type: ignore[arg-type]
            slice_thickness_mm=_positive_or_none(thickness),
            rows=int(_get(values, "Rows", 0) or 0),
            columns=int(_get(values, "Columns", 0) or 0),
            n_frames=int(_get(values, "NumberOfFrames", 1) or 1),
            problem=problem,
            identifiers=_identifiers(ds, values) if identifiers else (),
            synthetic=str(_get(values, "DeidentificationMethod", "") or "") == SYNTHETIC_DICOM_MARK,
            native=None if problem else _native_pixels(ds, values),
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


def read_header_or_skip(
    path: Path, identifiers: bool = True
) -> SliceHeader | tuple[Path, str] | Path:
    """``read_header`` with a DICOMDIR returned as its bare path (picklable for a pool)."""
    result = read_header(path, identifiers)
    return path if result is None else result


def scan_dicom_tree(root: Path, identifiers: bool = True) -> ScanResult:
    """Serial scan of a tree (the curation driver runs ``read_header_or_skip`` in a pool);
    ``identifiers`` as in ``read_header``."""
    return group_headers(read_header_or_skip(p, identifiers) for p in iter_files(root))

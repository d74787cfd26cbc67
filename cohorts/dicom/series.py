"""Series selection, geometry checks, slice sorting and HU conversion into a ``CTVolume``.

Slices are sorted by ImagePositionPatient projected on the slice normal (row x column
direction cosines), never by InstanceNumber, and gaps and duplicates are found from those
projected positions (readers such as SimpleITK only warn). Every check below is made from
headers alone, so the driver can choose a study's series before decoding any pixels.

Series-level reasons (``index.parquet``; ``reason`` is ``"<token>"`` or ``"<token>: detail"``):

- ``modality: <MR|CR|...>``   not CT
- ``localizer``               ImageType contains LOCALIZER (scout / topogram)
- ``multiframe``              enhanced multi-frame objects are not supported
- ``missing_geometry``        no ImagePositionPatient / ImageOrientationPatient / PixelSpacing
- ``mixed_orientation``       slices disagree on ImageOrientationPatient
- ``mixed_spacing``           slices disagree on PixelSpacing
- ``mixed_size``              slices disagree on Rows / Columns
- ``not_axial``               slice normal more than 30 degrees from the patient z axis
- ``duplicate_slice``         two slices at the same position on the normal
- ``missing_slice``           a step between neighbours above 1.5x the median step
- ``irregular_spacing``       steps that differ by more than 10 % without a missing slice
- ``too_few_slices: n < min`` not a diagnostic volume
- ``bad_rescale``             RescaleSlope / RescaleIntercept not a finite number
- ``unreadable_header``       an element that only fails when the pixels are converted
- ``mixed_series``            (``read_series`` only) the paths hold several series
- ``not_selected: ...``       valid, but the study has a thinner (or longer) series chosen
- file reasons propagated to the series: ``truncated``, ``missing_pixel_data``,
  ``undecodable: <transfer syntax>``
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import get_decoder

from cohorts.dicom.scan import SliceHeader, read_header, stored_value
from cohorts.hu import HU_AIR

HU_MIN = HU_AIR  # air; padding and values outside the scan field of view are set to this
HU_MAX = 32767
_ORIENTATION_TOL = 1e-3
_SPACING_TOL_MM = 1e-3
_DUPLICATE_TOL_MM = 1e-2
_GAP_FACTOR = 1.5
_IRREGULAR_FRACTION = 0.1
_MAX_TILT_COS = np.cos(np.deg2rad(30.0))


class SeriesError(Exception):
    """A series that cannot become a volume; ``reason`` is a token from the module docstring."""

    def __init__(self, reason: str, detail: str = "", files: Sequence[Path] = ()) -> None:
        self.reason = reason
        self.detail = detail
        self.files = tuple(files)
        named = f" ({', '.join(str(f) for f in self.files[:3])})" if self.files else ""
        super().__init__(f"{reason}{': ' + detail if detail else ''}{named}")

    @property
    def index_reason(self) -> str:
        """The reason as stored in the index: token plus a short, path-free detail."""
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


@dataclass
class CTVolume:
    """A CT volume in HU with its patient-space geometry (LPS, mm).

    ``hu`` is int16 z-y-x; ``origin_mm`` the (x, y, z) position of voxel (0, 0, 0);
    ``spacing_mm`` (z, y, x); ``direction`` 3x3 whose columns are the patient-space unit
    vectors of the voxel grid's x, y and z axes, so
    ``world = origin + direction @ (i * sx, j * sy, k * sz)``.
    """

    hu: np.ndarray
    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    direction: np.ndarray
    patient_id_raw: str = ""
    study_uid: str = ""
    series_uid: str = ""
    study_date: str = ""
    modality: str = "CT"
    slice_thickness_mm: float | None = None
    files: list[Path] = field(default_factory=list)

    def index_to_world_mm(self, zyx: np.ndarray) -> np.ndarray:
        """Continuous voxel indices [..., (z, y, x)] to world (x, y, z) mm."""
        zyx = np.asarray(zyx, dtype=np.float64)
        ijk_mm = zyx[..., ::-1] * np.asarray(self.spacing_mm[::-1])
        return np.asarray(self.origin_mm) + ijk_mm @ self.direction.T

    def world_to_index(self, xyz_mm: np.ndarray) -> np.ndarray:
        """World (x, y, z) mm [..., 3] to continuous voxel indices [..., (z, y, x)]."""
        xyz = np.asarray(xyz_mm, dtype=np.float64) - np.asarray(self.origin_mm)
        ijk_mm = xyz @ np.linalg.inv(self.direction).T
        return (ijk_mm / np.asarray(self.spacing_mm[::-1]))[..., ::-1]


@dataclass(frozen=True)
class SeriesGeometry:
    """What header checks learn about a series: slice order and voxel grid."""

    headers: tuple[SliceHeader, ...]  # sorted by position on the normal, ascending
    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    direction: np.ndarray
    shape: tuple[int, int, int]
    slice_thickness_mm: float


def check_type(headers: Sequence[SliceHeader]) -> None:
    """Reject what is not a CT image stack: other modalities, localizers, multi-frame."""
    modalities = sorted({h.modality or "unknown" for h in headers})
    if modalities != ["CT"]:
        raise SeriesError("modality", "/".join(modalities))
    if any("LOCALIZER" in h.image_type for h in headers):
        raise SeriesError("localizer")
    if any(h.n_frames > 1 for h in headers):
        raise SeriesError("multiframe")


def check_files(headers: Sequence[SliceHeader]) -> None:
    """Propagate the first file-level problem found in the headers to the series."""
    for h in headers:
        if h.problem:
            raise SeriesError(h.problem, files=[h.path])


def check_geometry(headers: Sequence[SliceHeader]) -> SeriesGeometry:
    """Sort slices on the normal and check that they form one regular grid."""
    if not headers:
        raise SeriesError("missing_geometry", "no slices")
    missing = [
        h.path for h in headers if None in (h.position_mm, h.orientation, h.pixel_spacing_mm)
    ]
    if missing:
        raise SeriesError("missing_geometry", files=missing)
    degenerate = [
        h.path
        for h in headers
        if min(h.pixel_spacing_mm) <= 0  # type: ignore[arg-type]
        or np.linalg.norm(h.orientation[:3]) < 1e-6  # type: ignore[index]
        or np.linalg.norm(h.orientation[3:]) < 1e-6  # type: ignore[index]
    ]
    if degenerate:
        raise SeriesError("missing_geometry", "zero spacing or orientation", files=degenerate)
    orientations = np.array([h.orientation for h in headers], dtype=np.float64)
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_TOL:
        raise SeriesError("mixed_orientation")
    spacings = np.array([h.pixel_spacing_mm for h in headers], dtype=np.float64)
    if np.abs(spacings - spacings[0]).max() > _SPACING_TOL_MM:
        raise SeriesError("mixed_spacing", f"{sorted({tuple(s) for s in spacings.tolist()})}")
    if len({(h.rows, h.columns) for h in headers}) > 1:
        raise SeriesError("mixed_size")
    row_dir = orientations[0, :3] / np.linalg.norm(orientations[0, :3])
    col_dir = orientations[0, 3:] / np.linalg.norm(orientations[0, 3:])
    normal = np.cross(row_dir, col_dir)
    if abs(normal[2]) < _MAX_TILT_COS:
        raise SeriesError("not_axial")
    positions = np.array([h.position_mm for h in headers], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    sorted_headers = tuple(headers[i] for i in order)
    if len(headers) == 1:
        step_mm = float(sorted_headers[0].slice_thickness_mm or 1.0)
        z_dir = normal
    else:
        steps = np.diff(along)
        if steps.min() < _DUPLICATE_TOL_MM:
            k = int(np.argmin(steps))
            raise SeriesError(
                "duplicate_slice",
                f"two slices at {along[k]:.2f} mm",
                files=[sorted_headers[k].path, sorted_headers[k + 1].path],
            )
        median = float(np.median(steps))
        if steps.max() > _GAP_FACTOR * median:
            k = int(np.argmax(steps))
            raise SeriesError(
                "missing_slice",
                f"gap {steps[k]:.2f} mm after slice {k} (median step {median:.2f} mm)",
                files=[sorted_headers[k].path],
            )
        if np.abs(steps - median).max() > _IRREGULAR_FRACTION * median:
            raise SeriesError("irregular_spacing", f"steps {steps.min():.2f}-{steps.max():.2f} mm")
        span = positions[-1] - positions[0]
        step_mm = float(np.linalg.norm(span) / (len(headers) - 1))  # gantry tilt: span off normal
        z_dir = span / np.linalg.norm(span)
    direction = np.stack([row_dir, col_dir, z_dir], axis=1)
    first = sorted_headers[0]
    thickness = first.slice_thickness_mm or step_mm
    return SeriesGeometry(
        headers=sorted_headers,
        origin_mm=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        spacing_mm=(step_mm, float(spacings[0, 0]), float(spacings[0, 1])),
        direction=direction,
        shape=(len(headers), first.rows, first.columns),
        slice_thickness_mm=float(thickness),
    )


def validate_headers(headers: Sequence[SliceHeader], min_slices: int = 1) -> SeriesGeometry:
    """All header checks in the order a reader would want the reasons."""
    check_type(headers)
    geometry = check_geometry(headers)
    check_files(headers)
    if len(headers) < min_slices:
        raise SeriesError("too_few_slices", f"{len(headers)} < {min_slices}")
    return geometry


def slice_to_hu(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """One slice in HU (float32): padding to air, then per-slice slope and intercept."""
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the same thing
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts))
        raise SeriesError("undecodable", name, files=[path]) from exc
    if stored.ndim != 2:
        raise SeriesError("multiframe", f"pixel array of shape {stored.shape}", files=[path])
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except Exception as exc:  # noqa: BLE001 - text, or an element pydicom cannot convert
        raise SeriesError("bad_rescale", "slope or intercept not a number", files=[path]) from exc
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise SeriesError("bad_rescale", f"slope {slope}, intercept {intercept}", files=[path])
    representation = ds.get("PixelRepresentation", 0)
    padding = stored_value(ds.get("PixelPaddingValue"), representation)
    limit = (
        stored_value(ds.get("PixelPaddingRangeLimit"), representation)
        if padding is not None
        else None
    )
    return _to_hu(stored, slope, intercept, padding, limit)


def _to_hu(
    stored: np.ndarray, slope: float, intercept: float, padding: int | None, limit: int | None
) -> np.ndarray:
    """Stored values -> HU (float32), with the padding value (or range) set to air."""
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if padding is not None:
        hu[_padding_mask(stored, padding, limit)] = HU_MIN
    return hu


def _padding_mask(stored: np.ndarray, padding: int, limit: int | None) -> np.ndarray:
    """Stored values equal to PixelPaddingValue, or within it and PixelPaddingRangeLimit."""
    lo, hi = (padding, padding) if limit is None else sorted((padding, limit))
    return (stored >= lo) & (stored <= hi)


def _stored_hu(hu: np.ndarray) -> np.ndarray:
    """HU as a volume stores them: rounded to the nearest integer, clipped to int16 from air
    (``HU_MIN``) up."""
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)


def _rescale_to_stored_hu(
    stored: np.ndarray, slope: float, intercept: float, padding: int | None, limit: int | None
) -> np.ndarray:
    """``_stored_hu(_to_hu(...))``, in integers where that is exact.

    Why: CT slices almost always carry RescaleSlope 1 and an integer intercept (-1024), and
    then the float32 round trip (convert, multiply, add, round, clip, convert back) changes
    nothing but costs ~0.3 ms a 512 x 512 slice. With stored values of at most 16 bits and
    |intercept| < 2**23 every float32 intermediate is an exact integer (below 2**24), so
    integer addition gives the same int16 values bit for bit (tests/cohorts/test_hu_rescale.py).
    """
    exact = (
        slope == 1.0
        and float(intercept).is_integer()
        and abs(intercept) < 2**23
        and stored.dtype.kind in "iu"
        and stored.dtype.itemsize <= 2
    )
    if not exact:
        return _stored_hu(_to_hu(stored, slope, intercept, padding, limit))
    hu = stored.astype(np.int32)
    hu += int(intercept)
    if padding is not None:
        hu[_padding_mask(stored, padding, limit)] = HU_MIN
    return np.clip(hu, HU_MIN, HU_MAX).astype(np.int16)


def _native_slice_hu(header: SliceHeader) -> np.ndarray | None:
    """The slice in stored HU (int16) from its recorded pixel location, or None to take the
    full-parse path.

    Reads only the PixelData bytes and decodes them with pydicom's own native decoder (same
    bit handling as ``pixel_array``). None when the header pass found no ``NativePixels`` or
    the file changed since (size or mtime differ): the full parse then judges it.
    """
    native = header.native
    if native is None:
        return None
    try:
        with open(header.path, "rb") as fh:
            stat = os.fstat(fh.fileno())
            if stat.st_size != header.size_bytes or stat.st_mtime_ns != header.mtime_ns:
                return None
            fh.seek(native.offset)
            buffer = fh.read(native.length)
        stored, _ = get_decoder(native.transfer_syntax).as_array(
            buffer,
            rows=native.rows,
            columns=native.columns,
            samples_per_pixel=1,
            number_of_frames=1,
            bits_allocated=native.bits_allocated,
            bits_stored=native.bits_stored,
            pixel_representation=native.pixel_representation,
            photometric_interpretation=native.photometric,
            pixel_keyword="PixelData",
        )
    except Exception:  # noqa: BLE001 - anything odd: the full parse names the problem
        return None
    if stored.shape != (native.rows, native.columns):
        return None
    return _rescale_to_stored_hu(
        stored, native.slope, native.intercept, native.padding, native.padding_limit
    )


def _parsed_slice_hu(header: SliceHeader) -> np.ndarray:
    """The slice in HU from a full parse of its file; raises ``SeriesError`` with the reason."""
    try:
        ds = pydicom.dcmread(header.path)
    except Exception as exc:  # noqa: BLE001 - file changed or broke after the header scan
        raise SeriesError("truncated", "pixel data unreadable", files=[header.path]) from exc
    if "PixelData" not in ds:
        raise SeriesError("missing_pixel_data", files=[header.path])
    try:
        return slice_to_hu(ds, header.path)
    except SeriesError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged element read lazily, e.g. padding
        raise SeriesError("unreadable_header", type(exc).__name__, files=[header.path]) from exc


def read_series(paths: Sequence[Path], min_slices: int = 1) -> CTVolume:
    """Read, check, sort and convert one series to an int16 HU volume.

    Raises ``SeriesError`` naming the reason token and the offending file(s).
    """
    headers: list[SliceHeader] = []
    for path in paths:
        result = read_header(Path(path))
        if isinstance(result, SliceHeader):
            headers.append(result)
        elif isinstance(result, tuple):
            raise SeriesError(result[1], files=[result[0]])
    if len({h.series_uid for h in headers}) > 1:
        raise SeriesError(
            "mixed_series", f"{len({h.series_uid for h in headers})} SeriesInstanceUIDs"
        )
    geometry = validate_headers(headers, min_slices)
    return volume_from_geometry(geometry)


def volume_from_geometry(geometry: SeriesGeometry) -> CTVolume:
    """Decode the sorted slices of a checked series into a ``CTVolume``."""
    hu = np.empty(geometry.shape, dtype=np.int16)
    for k, header in enumerate(geometry.headers):
        slice_hu = _native_slice_hu(header)
        if slice_hu is None:
            slice_hu = _stored_hu(_parsed_slice_hu(header))
        if slice_hu.shape != geometry.shape[1:]:
            raise SeriesError("mixed_size", f"pixel array {slice_hu.shape}", files=[header.path])
        hu[k] = slice_hu
    first = geometry.headers[0]
    return CTVolume(
        hu=hu,
        origin_mm=geometry.origin_mm,
        spacing_mm=geometry.spacing_mm,
        direction=geometry.direction,
        patient_id_raw=first.patient_id,
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        study_date=first.study_date,
        modality=first.modality,
        slice_thickness_mm=geometry.slice_thickness_mm,
        files=[h.path for h in geometry.headers],
    )

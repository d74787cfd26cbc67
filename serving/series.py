"""A series' DICOM work for predictions: decode it once and cut the crop of each nodule asked of it.

Why a module: a batch names many series, and decoding each (HU conversion of every slice) and
resampling its crops is per-series work that no batching shares. The service runs it on the
worker processes that read its request folders (``serving.headers``), so the module imports only
the curation code and ``serving.errors``: no onnxruntime, pandas or Feast in those workers. Jobs
and results are small picklable records; what crosses back is the crops, never a volume, and the
patient's pseudonym, never the raw id. The decode, the date shift and the crop are curation's
(``cohorts.dicom``, ``cohorts.privacy``), as in ``serving.predict``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from cohorts.dicom import CTVolume, SeriesError, nodule_crop
from cohorts.dicom.scan import SliceHeader
from cohorts.dicom.series import validate_headers, volume_from_geometry
from cohorts.privacy import date_shift_days, pseudonymise, shift_date
from serving.errors import PredictionError


def parse_date(text: str) -> dt.date:
    """A DICOM ``YYYYMMDD`` or ISO ``YYYY-MM-DD`` date."""
    cleaned = text.strip().replace("-", "")[:8]
    try:
        return dt.datetime.strptime(cleaned, "%Y%m%d").date()
    except ValueError as exc:
        raise PredictionError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def crop_at(
    volume: CTVolume, world_xyz_mm: tuple[float, float, float], size_vox: int, spacing_mm: float
) -> np.ndarray:
    """The (size_vox,) * 3 crop around a world point (mm) at ``spacing_mm``, with curation's
    resampling; ``PredictionError`` when the point is outside the volume."""
    try:
        return nodule_crop(volume, world_xyz_mm, size_vox, spacing_mm)
    except ValueError as exc:
        raise PredictionError(f"nodule outside the volume: {exc}") from exc


@dataclass(frozen=True)
class SeriesJob:
    """One series of a request and the nodules asked of it (picklable).

    ``headers``: the series' files as the header pass found them (empty: not in the folder).
    ``nodules_xyz_mm``: world points in mm, in the request's order. The rest are the settings
    the result depends on: curation's slice minimum, pseudonym key and date shift, and the
    model's crop size (voxels per side) and spacing (mm).
    """

    headers: tuple[SliceHeader, ...]
    nodules_xyz_mm: tuple[tuple[float, float, float], ...]
    min_slices: int
    pseudonym_key: bytes
    date_shift_max_days: int
    crop_size_vox: int
    crop_spacing_mm: float


@dataclass(frozen=True)
class SeriesCrops:
    """What a ``SeriesJob`` gives: the reason the series cannot be used, or its patient's
    pseudonym, its shifted scan date and per nodule a crop (int16 HU, (n, n, n)) or the reason
    there is none."""

    error: str | None = None
    patient_id: str = ""
    scan_date: dt.date | None = None
    crops: tuple[np.ndarray | str, ...] = ()


def series_crops(job: SeriesJob) -> SeriesCrops:
    """Decode the job's series once and cut every nodule's crop; never raises for bad data."""
    if not job.headers:
        return SeriesCrops(error="series not found under --dicom-root")
    try:
        volume = volume_from_geometry(validate_headers(job.headers, job.min_slices))
    except SeriesError as err:
        return SeriesCrops(error=f"not a usable CT series: {err.index_reason}")
    if not volume.study_date.strip():
        return SeriesCrops(error="series has no StudyDate")
    try:
        scan_date = parse_date(volume.study_date)
    except PredictionError as exc:
        return SeriesCrops(error=str(exc))
    shift = date_shift_days(volume.patient_id_raw, job.pseudonym_key, job.date_shift_max_days)
    crops: list[np.ndarray | str] = []
    for xyz in job.nodules_xyz_mm:
        try:
            crops.append(crop_at(volume, xyz, job.crop_size_vox, job.crop_spacing_mm))
        except PredictionError as exc:
            crops.append(str(exc))
    return SeriesCrops(
        patient_id=pseudonymise(volume.patient_id_raw, job.pseudonym_key, "patient"),
        scan_date=shift_date(scan_date, shift),
        crops=tuple(crops),
    )

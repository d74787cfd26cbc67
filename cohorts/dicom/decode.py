"""One series in a curation pool worker: decode it, save its HU volume and nodule crops.

Why a module: this is the only code that runs in the worker processes (``cohorts.parallel``);
jobs and outcomes are small picklable records, and a data problem comes back as the outcome's
``SeriesError`` instead of an exception, so one bad series never stops a pool round. Accepted
volumes also get cheap sanity statistics for the quality suite (``lung_statistics``,
``orientation_max_offdiag``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cohorts.dicom.crops import nodule_crop
from cohorts.dicom.outputs import save_npy_atomic
from cohorts.dicom.series import SeriesError, SeriesGeometry, volume_from_geometry

LUNG_HU_RANGE = (-1000.0, -400.0)  # lung parenchyma (and air) window, HU
BODY_HU_MIN = -500.0  # tissue above this HU marks the body outline


@dataclass(frozen=True)
class DecodeJob:
    """One series to decode in a worker (picklable)."""

    geometry: SeriesGeometry
    series_id: str
    annotations: tuple[tuple[int, float, float, float, float], ...]  # (row, x, y, z, diam)
    out_dir: Path
    crop_size_vox: int
    crop_spacing_mm: float


@dataclass
class DecodeOutcome:
    series_id: str
    error: SeriesError | None
    nodules: list[dict[str, Any]]
    outside: int
    n_slices: int
    lung: dict[str, float | None] = field(default_factory=dict)


def decode_series(job: DecodeJob) -> DecodeOutcome:
    """Decode one series, save its volume and crops; never raises for data problems."""
    try:
        volume = volume_from_geometry(job.geometry)
    except SeriesError as err:
        return DecodeOutcome(job.series_id, err, [], 0, len(job.geometry.headers))
    save_npy_atomic(job.out_dir / "volumes" / f"{job.series_id}.npy", volume.hu)
    lung = lung_statistics(volume.hu)
    nodules: list[dict[str, Any]] = []
    outside = 0
    for n, (row, x, y, z, diameter) in enumerate(job.annotations):
        try:
            crop = nodule_crop(volume, (x, y, z), job.crop_size_vox, job.crop_spacing_mm)
        except ValueError:
            outside += 1
            continue
        rel = f"crops/{job.series_id}_{n}.npy"
        save_npy_atomic(job.out_dir / rel, crop)
        nodules.append(
            {"series_id": job.series_id, "coord_x_mm": x, "coord_y_mm": y, "coord_z_mm": z,
             "diameter_mm": diameter, "crop_path": rel, "annotation_index": row,
             "crop_spacing_mm": job.crop_spacing_mm}
        )  # fmt: skip
    return DecodeOutcome(job.series_id, None, nodules, outside, volume.hu.shape[0], lung)


def lung_statistics(hu: np.ndarray) -> dict[str, float | None]:
    """Median HU and volume fraction of lung voxels inside the body, O(voxels) and no labels.

    Body: on each image row (fixed z, y), the span from the first to the last voxel above
    ``BODY_HU_MIN``; rows with no such voxel are outside. Lungs are walled in left and right
    by the chest, so the spans hold them while dropping the air beside and around the patient.
    Lung: body voxels in ``LUNG_HU_RANGE``. ``lung_fraction`` = lung / body voxels (0.0 with no
    body); ``lung_hu_median`` is None when no voxel is lung, so a phantom without lungs shows as
    a fraction of 0 rather than a made-up HU.

    ``hu``: (z, y, x) int16, as curation stores it; the masks use int16 wrap-around. The
    median is read off a histogram of the lung window's 601 integer HU values, exactly what
    ``np.median`` of the lung voxels gives, without sorting millions of them. Slabs of about
    one 512 x 512 slice keep each mask in cache. Both measured on the curation benchmark's
    512 px volumes (160 slices): 69 ms, against 135 ms with 1 M-voxel slabs and a sort.
    """
    if hu.dtype != np.int16:
        raise TypeError(f"lung_statistics needs an int16 HU volume, got {hu.dtype}")
    step = max(1, _SLAB_VOXELS // max(1, hu.shape[1] * hu.shape[2]))
    counts = np.zeros(_LUNG_HI - _LUNG_LO + 1, dtype=np.int64)  # lung voxels per HU value
    n_body = 0
    for z in range(0, hu.shape[0], step):
        slab_counts, slab_body = _lung_histogram(hu[z : z + step])
        counts += slab_counts
        n_body += slab_body
    n_lung = int(counts.sum())
    return {
        "lung_hu_median": _histogram_median(counts, _LUNG_LO) if n_lung else None,
        "lung_fraction": n_lung / n_body if n_body else 0.0,
    }


_SLAB_VOXELS = 2**18
_LUNG_LO, _LUNG_HI = int(LUNG_HU_RANGE[0]), int(LUNG_HU_RANGE[1])


def _lung_histogram(hu: np.ndarray) -> tuple[np.ndarray, int]:
    """(lung voxels of the slab per HU value from ``_LUNG_LO``, its number of body voxels);
    see ``lung_statistics``."""
    tissue = hu > BODY_HU_MIN
    nx = hu.shape[-1]
    has = tissue.any(axis=-1)
    first = np.argmax(tissue, axis=-1)
    last = nx - 1 - np.argmax(tissue[..., ::-1], axis=-1)
    # the span as an unsigned offset test: an offset left of ``first`` wraps above any width,
    # so one compare per voxel marks the body (two compares and three ands before; same mask)
    width = np.where(has, last - first + 1, 0)  # body voxels per row
    signed, unsigned = (np.int16, np.uint16) if nx < 2**15 else (np.int32, np.uint32)
    offset = np.arange(nx, dtype=signed) - first.astype(signed)[..., None]
    lung = offset.view(unsigned) < width.astype(unsigned)[..., None]
    shifted = (hu - np.int16(_LUNG_LO)).view(np.uint16)  # int16 wraps once: exact
    lung &= shifted <= _LUNG_HI - _LUNG_LO
    counts = np.bincount(shifted[lung], minlength=_LUNG_HI - _LUNG_LO + 1)
    return counts, int(width.sum(dtype=np.int64))


def _histogram_median(counts: np.ndarray, lowest: int) -> float:
    """``np.median`` of the integers that ``counts`` tallies (``counts[i]`` of ``lowest + i``):
    the middle value, or the mean of the two middle values for an even total."""
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    below = int(np.searchsorted(cumulative, (total - 1) // 2, side="right"))
    above = int(np.searchsorted(cumulative, total // 2, side="right"))
    return (2 * lowest + below + above) / 2


def orientation_max_offdiag(direction: np.ndarray) -> float:
    """Largest |off-diagonal| direction cosine: 0 for an axial (possibly flipped) series."""
    d = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    return float((d - np.diag(np.diag(d))).max())

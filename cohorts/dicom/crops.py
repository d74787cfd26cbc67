"""Nodule-centred crops: world mm (LPS) -> voxel indices -> isotropic trilinear resampling."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

from cohorts.dicom.series import HU_MIN, CTVolume


def nodule_crop(
    volume: CTVolume,
    world_xyz_mm: tuple[float, float, float],
    size_vox: int,
    spacing_mm: float,
) -> np.ndarray:
    """A ``size_vox``^3 int16 HU crop (z-y-x) at ``spacing_mm`` centred on a world point.

    The crop axes follow the volume's voxel axes (axial scans: patient x, y, z), its centre
    lies half-way between the middle voxels for an even size, and samples outside the
    volume are air (-1024 HU). Raises ValueError when the centre is outside the volume.
    """
    if size_vox <= 0 or spacing_mm <= 0:
        raise ValueError(f"size_vox and spacing_mm must be positive, got {size_vox}, {spacing_mm}")
    centre_zyx = volume.world_to_index(np.asarray(world_xyz_mm, dtype=np.float64))
    shape = np.asarray(volume.hu.shape)
    if np.any(centre_zyx < -0.5) or np.any(centre_zyx > shape - 0.5):
        raise ValueError(
            f"nodule centre {tuple(round(v, 1) for v in world_xyz_mm)} mm is outside the volume "
            f"(voxel {np.round(centre_zyx, 1).tolist()} in shape {shape.tolist()})"
        )
    offsets_mm = (np.arange(size_vox) - (size_vox - 1) / 2.0) * spacing_mm
    oz, oy, ox = np.meshgrid(offsets_mm, offsets_mm, offsets_mm, indexing="ij")
    # offsets along the volume's axes, expressed in (fractional) voxels of the volume
    sz, sy, sx = volume.spacing_mm
    coords = np.stack(
        [centre_zyx[0] + oz / sz, centre_zyx[1] + oy / sy, centre_zyx[2] + ox / sx]
    ).reshape(3, -1)
    # resample from a bounding window only, so a crop never touches the whole volume
    lo = np.maximum(np.floor(coords.min(axis=1)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(coords.max(axis=1)).astype(int) + 2, shape)
    if np.any(hi <= lo):
        return np.full((size_vox,) * 3, HU_MIN, dtype=np.int16)
    window = volume.hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
    # pad by one voxel of air so trilinear weights fade into air outside the volume
    window = np.pad(window, 1, constant_values=HU_MIN)
    local = coords - lo[:, None] + 1
    values = map_coordinates(window, local, order=1, mode="constant", cval=HU_MIN)
    # points beyond the padded window are fully outside
    return np.rint(values).reshape((size_vox,) * 3).astype(np.int16)

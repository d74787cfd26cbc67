"""A chest CT phantom: body, lungs with texture and vessels, bone, aorta, emphysema, nodules.

Anatomy lives in patient-fixed millimetres (origin mid-chest, LPS axes) so the same patient
looks the same on every scan and at every site; a scan samples it on the scanner's grid,
shifted by where the patient lay on the table, then blurs and adds noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cohorts.synthetic.config import ScannerSite

AIR_HU = -1000.0
LUNG_HU = -850.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
CORTICAL_BONE_HU = 700.0
CANCELLOUS_BONE_HU = 250.0
EMPHYSEMA_HU = -975.0
GGO_HU = -620.0
RESCALE_INTERCEPT_HU = -1024.0


@dataclass(frozen=True)
class Anatomy:
    """Patient-fixed shape parameters in mm (x = patient left, y = posterior, z = superior)."""

    width_mm: float  # reference body width (the field of view the anatomy was sized for)
    height_mm: float  # scanned z extent the anatomy was sized for
    scale: float  # patient build, ~0.9-1.05
    texture_seed: int
    emphysema_fraction: float


@dataclass(frozen=True)
class Nodule:
    """One nodule at one time point, in patient-fixed mm."""

    center_mm: tuple[float, float, float]  # x, y, z
    diameter_mm: float
    nodule_type: str  # solid | part-solid | ground-glass
    spiculation: float  # 0..1 spike length relative to radius
    lobulation: float  # relative radial amplitude of low-order bumps
    shape_seed: int


@dataclass(frozen=True)
class ScanGeometry:
    """Where a scan's voxel grid sits in the patient frame (table shift in mm)."""

    n_px: int
    n_slices: int
    pixel_spacing_mm: float
    slice_spacing_mm: float
    shift_mm: tuple[float, float, float]

    def origin_mm(self) -> tuple[float, float, float]:
        """World position of voxel (slice 0, row 0, col 0); slice 0 is the most superior."""
        half_xy = (self.n_px - 1) / 2.0 * self.pixel_spacing_mm
        half_z = (self.n_slices - 1) / 2.0 * self.slice_spacing_mm
        return (-half_xy + self.shift_mm[0], -half_xy + self.shift_mm[1], half_z + self.shift_mm[2])

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient-frame coordinates of slices (z), rows (y) and columns (x)."""
        x0, y0, z0 = self.origin_mm()
        z = z0 - np.arange(self.n_slices) * self.slice_spacing_mm - self.shift_mm[2]
        y = y0 + np.arange(self.n_px) * self.pixel_spacing_mm - self.shift_mm[1]
        x = x0 + np.arange(self.n_px) * self.pixel_spacing_mm - self.shift_mm[0]
        return z, y, x


def _lung_masks(anatomy: Anatomy, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Boolean lung mask on a z-y-x grid of patient-frame mm (apex tapers, heart carved out)."""
    w, hgt, s = anatomy.width_mm * anatomy.scale, anatomy.height_mm, anatomy.scale
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    apex, base = 0.46 * hgt, -0.48 * hgt
    t = np.clip((zz - base) / (apex - base), 0.0, 1.0)  # 0 at base, 1 at apex
    profile = np.sqrt(np.clip(1.0 - t**2, 0.0, 1.0)) * np.where(zz < base, 0.0, 1.0)
    rx, ry = 0.165 * w * profile + 1e-6, 0.25 * w * profile + 1e-6
    lungs = np.zeros(np.broadcast_shapes(zz.shape, yy.shape, xx.shape), dtype=bool)
    for side in (-1.0, 1.0):
        lungs |= ((xx - side * 0.21 * w) / rx) ** 2 + ((yy + 0.01 * w) / ry) ** 2 < 1.0
    heart = ((xx - 0.04 * w) / (0.13 * w)) ** 2 + ((yy + 0.09 * w) / (0.12 * w)) ** 2 + (
        (zz + 0.25 * hgt) / (0.3 * hgt * s)
    ) ** 2 < 1.0
    spine = (xx / (0.09 * w)) ** 2 + ((yy - 0.2 * w) / (0.09 * w)) ** 2 < 1.0
    return lungs & ~heart & ~spine


def nodule_position_candidates(
    anatomy: Anatomy, clearance_mm: float, z_range_mm: tuple[float, float], step_mm: float = 2.0
) -> np.ndarray:
    """Patient-frame points (N x 3, x-y-z mm) at least `clearance_mm` inside a lung."""
    w = anatomy.width_mm * anatomy.scale
    z = np.arange(z_range_mm[1], z_range_mm[0], -step_mm)
    y = np.arange(-0.4 * w, 0.4 * w, step_mm)
    x = np.arange(-0.45 * w, 0.45 * w, step_mm)
    lungs = _lung_masks(anatomy, z, y, x)
    depth_mm = ndimage.distance_transform_edt(lungs) * step_mm
    kk, jj, ii = np.nonzero(depth_mm > clearance_mm)
    return np.stack([x[ii], y[jj], z[kk]], axis=1)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]
) -> np.ndarray:
    """Unit-variance Gaussian random field (why: texture, vessels, emphysema blobs)."""
    field = ndimage.gaussian_filter(
        rng.standard_normal(shape, dtype=np.float32), sigma_vox, truncate=3.0
    )
    return field / (field.std() + 1e-6)


def _radial_extent(direction: np.ndarray, nodule: Nodule) -> np.ndarray:
    """Surface radius (mm) along unit directions: sphere + lobulation bumps + spicules."""
    rng = np.random.default_rng(nodule.shape_seed)
    radius = nodule.diameter_mm / 2.0
    lobes = rng.standard_normal((4, 3))
    lobes /= np.linalg.norm(lobes, axis=1, keepdims=True)
    bump = sum(np.cos(3.0 * np.arccos(np.clip(direction @ v, -1, 1))) for v in lobes) / 4.0
    extent = radius * (1.0 + nodule.lobulation * bump)
    if nodule.spiculation > 0.05:
        spikes = rng.standard_normal((int(6 + 10 * nodule.spiculation), 3))
        spikes /= np.linalg.norm(spikes, axis=1, keepdims=True)
        peak = np.max(np.clip(direction @ spikes.T, 0.0, 1.0) ** 80, axis=-1)
        extent = extent + radius * 1.2 * nodule.spiculation * peak
    return extent


def _paint_nodule(volume_hu: np.ndarray, geometry: ScanGeometry, nodule: Nodule) -> None:
    """Blend one nodule into the (un-blurred) volume in place, with a soft 0.5 mm edge."""
    z, y, x = geometry.axes_mm()
    cx, cy, cz = nodule.center_mm
    reach = nodule.diameter_mm / 2.0 * (2.4 + nodule.lobulation) + 2.0
    ks = np.nonzero(np.abs(z - cz) <= reach)[0]
    js = np.nonzero(np.abs(y - cy) <= reach)[0]
    is_ = np.nonzero(np.abs(x - cx) <= reach)[0]
    if len(ks) == 0 or len(js) == 0 or len(is_) == 0:
        return
    dz, dy, dx = np.meshgrid(z[ks] - cz, y[js] - cy, x[is_] - cx, indexing="ij")
    dist = np.sqrt(dx**2 + dy**2 + dz**2) + 1e-6
    direction = np.stack([dx, dy, dz], axis=-1) / dist[..., None]
    extent = _radial_extent(direction, nodule)
    inside = np.clip((extent - dist) / 1.0 + 0.5, 0.0, 1.0)
    block = volume_hu[np.ix_(ks, js, is_)]
    if nodule.nodule_type == "ground-glass":
        block = block + inside * (GGO_HU - block) * 0.9
    elif nodule.nodule_type == "part-solid":
        block = block + inside * (GGO_HU - block) * 0.9
        core = np.clip((0.45 * extent - dist) / 1.0 + 0.5, 0.0, 1.0)
        block = block + core * (SOFT_TISSUE_HU - block)
    else:
        block = block + inside * (SOFT_TISSUE_HU - block)
    volume_hu[np.ix_(ks, js, is_)] = block


def render_scan(
    anatomy: Anatomy,
    nodules: list[Nodule],
    geometry: ScanGeometry,
    site: ScannerSite,
    noise_seed: int,
) -> np.ndarray:
    """A CT volume in HU (float32, z-y-x, slice 0 superior) as the site's scanner sees it."""
    z, y, x = geometry.axes_mm()
    w, s = anatomy.width_mm * anatomy.scale, anatomy.scale
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    shape = (len(z), len(y), len(x))
    tex = np.random.default_rng(anatomy.texture_seed)  # patient-fixed texture
    vox = (
        geometry.slice_spacing_mm,
        geometry.pixel_spacing_mm,
        geometry.pixel_spacing_mm,
    )

    def sigma(mm: float) -> tuple[float, float, float]:
        return tuple(mm / v for v in vox)

    body = (xx / (0.46 * w)) ** 2 + (yy / (0.34 * w)) ** 2 < 1.0
    muscle = (xx / (0.42 * w)) ** 2 + (yy / (0.30 * w)) ** 2 < 1.0
    vol = np.full(shape, AIR_HU, dtype=np.float32)
    vol[np.broadcast_to(body, shape)] = FAT_HU
    vol[np.broadcast_to(muscle, shape)] = SOFT_TISSUE_HU
    # ribs: a bony shell just inside the muscle wall, in bands along z
    ring = ((xx / (0.40 * w)) ** 2 + (yy / (0.28 * w)) ** 2 < 1.0) & ~(
        (xx / (0.38 * w)) ** 2 + (yy / (0.26 * w)) ** 2 < 1.0
    )
    ribs = ring & (np.cos(2 * np.pi * zz / (22.0 * s)) > 0.3) & (yy > -0.15 * w)
    vol[np.broadcast_to(ribs, shape)] = CANCELLOUS_BONE_HU

    lungs = _lung_masks(anatomy, z, y, x)
    texture = _smooth_noise(tex, shape, sigma(2.0))
    vol[lungs] = LUNG_HU + 25.0 * texture[lungs]
    # vessels: intersections of two zero level sets are curves; denser near the hilum
    f1, f2 = _smooth_noise(tex, shape, sigma(6.0)), _smooth_noise(tex, shape, sigma(6.0))
    hilum = np.exp(-(((np.abs(xx) - 0.1 * w) / (0.2 * w)) ** 2 + (yy / (0.25 * w)) ** 2))
    width = 0.1 + 0.15 * hilum
    vessels = lungs & (np.abs(f1) < width) & (np.abs(f2) < width)
    vol[vessels] = SOFT_TISSUE_HU - 10.0
    # emphysema: low-attenuation blobs, upper-lobe predominant, covering the latent fraction
    if anatomy.emphysema_fraction > 0.002:
        blobs = _smooth_noise(tex, shape, sigma(3.0)) + 0.6 * (zz / anatomy.height_mm)
        lung_values = blobs[lungs]
        cut = np.quantile(lung_values, 1.0 - anatomy.emphysema_fraction)
        laa = lungs & (blobs > cut) & ~vessels
        vol[laa] = EMPHYSEMA_HU + 10.0 * texture[laa]
    else:
        tex.standard_normal(shape)  # keep the texture stream aligned across patients
    # spine, aorta
    spine = (xx / (0.07 * s * w / 0.78)) ** 2 + ((yy - 0.22 * w) / (0.07 * w)) ** 2 < 1.0
    canal = (xx / (0.025 * w)) ** 2 + ((yy - 0.27 * w) / (0.025 * w)) ** 2 < 1.0
    cortex = spine & ~((xx / (0.06 * w)) ** 2 + ((yy - 0.22 * w) / (0.058 * w)) ** 2 < 1.0)
    vol[np.broadcast_to(spine, shape)] = CANCELLOUS_BONE_HU
    vol[np.broadcast_to(cortex, shape)] = CORTICAL_BONE_HU
    vol[np.broadcast_to(canal, shape)] = SOFT_TISSUE_HU - 20.0
    aorta = ((xx - 0.06 * w) / (0.04 * w)) ** 2 + ((yy - 0.13 * w) / (0.04 * w)) ** 2 < 1.0
    vol[np.broadcast_to(aorta, shape) & ~lungs] = SOFT_TISSUE_HU

    for nodule in nodules:
        _paint_nodule(vol, geometry, nodule)

    # scanner: in-plane blur, slice-profile blur, correlated noise
    vol = ndimage.gaussian_filter(
        vol,
        (
            0.35 * site.slice_spacing_mm / vox[0],
            site.blur_sigma_mm / vox[1],
            site.blur_sigma_mm / vox[2],
        ),
    )
    noise = _smooth_noise(np.random.default_rng(noise_seed), shape, (0.0, 0.6, 0.6))
    return vol + site.noise_sd_hu * noise


def to_stored_values(volume_hu: np.ndarray) -> np.ndarray:
    """HU -> uint16 stored values with intercept -1024, clipped to 12 bits."""
    return np.clip(np.rint(volume_hu - RESCALE_INTERCEPT_HU), 0, 4095).astype(np.uint16)

"""The training-examples contract: ``examples/<cohort>.npz`` as one typed, validated container.

Why here, numpy-only: the examples are written by the data layer (``cohorts.examples``), read
by training (``models/``), by the quality suite and, as one padded row, built by the torch-free
serving path. One class for all of them means one set of dtypes, shapes, padding and checks;
torch views live in ``models.data``.

One row per patient: the index nodule tracked over up to T scans (oldest first, latest last,
left-padded). See docs/ARCHITECTURE.md, "Training examples". Models take HU and raw EHR
features; nothing here normalises, so the exported model carries its own constants. The crop
spacing travels with the crops, so every consumer (the Brock baseline's size measure, the
ONNX metadata serving crops by) reads the spacing the crops were cut at, never a setting of
its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from cohorts.files import atomic_output
from cohorts.hu import HU_AIR

FIELDS: tuple[str, ...] = ("crops_hu", "months_before_latest", "scan_mask", "ehr", "ehr_mask")
"""The model's positional inputs, in this order (also the ONNX input names)."""

PADDING_HU = HU_AIR
"""The crop of an absent time point: air, masked off by ``scan_mask``."""

UNLABELED = -1

_DTYPES: dict[str, np.dtype] = {
    "crops_hu": np.dtype(np.int16),
    "scan_mask": np.dtype(bool),
    "months_before_latest": np.dtype(np.float32),
    "ehr": np.dtype(np.float32),
    "ehr_mask": np.dtype(bool),
    "diameter_mm": np.dtype(np.float32),
    "label": np.dtype(np.int8),
}
_SCALARS = ("crop_spacing_mm",)
_SHARED = ("ehr_feature_names", *_SCALARS)  # per set, not per patient: kept by subset/concat


def padded_inputs(
    n: int, timepoints: int, crop_shape_zyx: Sequence[int], n_features: int
) -> dict[str, np.ndarray]:
    """The model inputs (FIELDS) for ``n`` patients with every time point absent.

    Crops are PADDING_HU, masks False, times and EHR zero: writers fill the slots they have,
    so a padded slot looks the same whether training examples or a served request built it.
    """
    return {
        "crops_hu": np.full((n, timepoints, *crop_shape_zyx), PADDING_HU, dtype=np.int16),
        "months_before_latest": np.zeros((n, timepoints), dtype=np.float32),
        "scan_mask": np.zeros((n, timepoints), dtype=bool),
        "ehr": np.zeros((n, timepoints, n_features), dtype=np.float32),
        "ehr_mask": np.zeros((n, timepoints), dtype=bool),
    }


@dataclass
class ExampleSet:
    """Per-patient arrays of one cohort; shapes use N patients, T time points, S crop edge, F features.

    patient_id [N] str; crops_hu [N,T,S,S,S] int16 HU (z-y-x), cut at ``crop_spacing_mm`` per
    voxel; scan_mask [N,T] bool; months_before_latest [N,T] float32 (0 = latest scan);
    ehr [N,T,F] float32 raw features; ehr_mask [N,T] bool; ehr_feature_names [F] str;
    diameter_mm [N,T] float32; label [N] int8 (1 malignant, 0 benign, -1 unlabeled);
    crop_spacing_mm: the isotropic voxel size of every crop, mm.
    """

    patient_id: np.ndarray
    crops_hu: np.ndarray
    scan_mask: np.ndarray
    months_before_latest: np.ndarray
    ehr: np.ndarray
    ehr_mask: np.ndarray
    ehr_feature_names: np.ndarray
    diameter_mm: np.ndarray
    label: np.ndarray
    crop_spacing_mm: float

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError when an array breaks the npz contract (dtype, rank, agreeing sizes)."""
        for name, dtype in _DTYPES.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != dtype:
                got = getattr(value, "dtype", type(value).__name__)
                raise ValueError(f"examples: {name} must be {dtype}, got {got}")
        for name in ("patient_id", "ehr_feature_names"):
            if getattr(self, name).dtype.kind != "U":
                raise ValueError(f"examples: {name} must be a unicode string array")
        spacing = self.crop_spacing_mm
        if isinstance(spacing, bool) or not isinstance(spacing, (int, float)):
            raise ValueError(f"examples: crop_spacing_mm must be a number, got {spacing!r}")
        if not (math.isfinite(spacing) and spacing > 0):
            raise ValueError(f"examples: crop_spacing_mm must be > 0 mm, got {spacing}")
        n = self.patient_id.shape[0]
        if self.crops_hu.ndim != 5 or len(set(self.crops_hu.shape[2:])) != 1:
            raise ValueError(f"examples: crops_hu must be [N,T,S,S,S], got {self.crops_hu.shape}")
        t = self.crops_hu.shape[1]
        f = self.ehr_feature_names.shape[0]
        expected = {
            "patient_id": (n,),
            "crops_hu": (n, t, *self.crops_hu.shape[2:]),
            "scan_mask": (n, t),
            "months_before_latest": (n, t),
            "ehr": (n, t, f),
            "ehr_mask": (n, t),
            "ehr_feature_names": (f,),
            "diameter_mm": (n, t),
            "label": (n,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"examples: {name} has shape {getattr(self, name).shape}, expected {shape}"
                )
        if not np.isin(self.label, (UNLABELED, 0, 1)).all():
            raise ValueError("examples: label must be -1, 0 or 1")

    def __len__(self) -> int:
        return int(self.patient_id.shape[0])

    @property
    def timepoints(self) -> int:
        """T, the (padded) number of scans per patient."""
        return int(self.crops_hu.shape[1])

    @property
    def crop_size_vox(self) -> int:
        """S, the crop edge in voxels."""
        return int(self.crops_hu.shape[2])

    @property
    def n_ehr_features(self) -> int:
        """F, the number of raw EHR features."""
        return int(self.ehr_feature_names.shape[0])

    def subset(self, idx: np.ndarray) -> ExampleSet:
        """Rows `idx` (integer indices or a boolean mask over patients); per-set values shared."""
        idx = np.asarray(idx)
        values = {
            f.name: getattr(self, f.name) if f.name in _SHARED else getattr(self, f.name)[idx]
            for f in fields(self)
        }
        return ExampleSet(**values)

    @staticmethod
    def concat(parts: Sequence[ExampleSet]) -> ExampleSet:
        """The rows of every part, in order; the parts must share T, S, spacing and EHR features."""
        if not parts:
            raise ValueError("concat needs at least one ExampleSet")
        first = parts[0]
        for part in parts[1:]:
            if not np.array_equal(part.ehr_feature_names, first.ehr_feature_names):
                raise ValueError("examples: cannot concatenate sets with different EHR features")
            if part.crops_hu.shape[1:] != first.crops_hu.shape[1:]:
                raise ValueError(
                    f"examples: cannot concatenate crops {part.crops_hu.shape[1:]} and "
                    f"{first.crops_hu.shape[1:]}"
                )
            if part.crop_spacing_mm != first.crop_spacing_mm:
                raise ValueError(
                    f"examples: cannot concatenate crops cut at {part.crop_spacing_mm} mm and "
                    f"{first.crop_spacing_mm} mm"
                )
        values = {
            f.name: getattr(first, f.name)
            if f.name in _SHARED
            else np.concatenate([getattr(p, f.name) for p in parts])
            for f in fields(ExampleSet)
        }
        return ExampleSet(**values)

    def save(self, path: Path) -> Path:
        """Write the npz atomically (uncompressed: crops are the bulk and barely compress)."""
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}
        with atomic_output(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return Path(path)


def load_examples(path: Path) -> ExampleSet:
    """Load and validate `examples/<cohort>.npz` without pickle; errors name the file."""
    try:
        with np.load(Path(path), allow_pickle=False) as npz:
            missing = [f.name for f in fields(ExampleSet) if f.name not in npz.files]
            if missing:
                raise ValueError(f"missing keys {missing} (written by an older version: rebuild)")
            values = {f.name: npz[f.name] for f in fields(ExampleSet)}
        for name in _SCALARS:
            values[name] = float(values[name])
        return ExampleSet(**values)
    except ValueError as err:
        raise ValueError(f"examples {path}: {err}") from err


def random_examples(
    n: int,
    timepoints: int = 3,
    crop_size_vox: int = 32,
    n_ehr: int = 12,
    seed: int = 0,
    labeled: bool = True,
    crop_spacing_mm: float = 1.0,
) -> ExampleSet:
    """Synthetic examples with a planted, learnable signal, for tests and benchmarks.

    Each crop holds a soft sphere (~+40 HU nodule) in lung background (~-850 HU, noisy).
    Malignant nodules tend to be larger (7-16 vs 3-10 mm, overlapping) and grow over time;
    benign ones are stable. EHR feature 0
    ("pack_years") is shifted up for malignant patients, feature 1 ("age_years") slightly;
    the rest are noise. Patients have 1..T scans (left-padded), and ~25% of present time
    points lack EHR. Unlabeled sets carry label -1 but keep the same structure. Sizes are in
    voxels (the sphere's diameter in mm equals its diameter in voxels at 1 mm spacing).
    """
    if n < 1 or timepoints < 1 or crop_size_vox < 4 or n_ehr < 2:
        raise ValueError("random_examples: need n >= 1, timepoints >= 1, crop >= 4, n_ehr >= 2")
    rng = np.random.default_rng(seed)
    s = crop_size_vox
    malignant = rng.random(n) < 0.4
    n_scans = rng.integers(1, timepoints + 1, size=n)
    scan_mask = np.arange(timepoints)[None, :] >= (timepoints - n_scans)[:, None]
    gaps = rng.uniform(3.0, 12.0, size=(n, timepoints))
    months = np.cumsum(gaps[:, ::-1], axis=1)[:, ::-1] - gaps[:, -1:]  # 0 at the last column
    months = np.where(scan_mask, months, 0.0).astype(np.float32)

    base_mm = np.where(malignant, rng.uniform(7.0, 16.0, n), rng.uniform(3.0, 10.0, n))
    growth_per_month = np.where(malignant, rng.uniform(0.05, 0.2, n), 0.0)
    diameter = base_mm[:, None] - growth_per_month[:, None] * months  # earlier = smaller
    diameter = np.clip(diameter, 2.0, 0.8 * s).astype(np.float32)
    diameter = np.where(scan_mask, diameter, 0.0).astype(np.float32)

    grid = np.arange(s, dtype=np.float32) - (s - 1) / 2.0
    radius_vox = np.sqrt(
        grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2
    )
    crops = np.zeros((n, timepoints, s, s, s), dtype=np.int16)
    for i in range(n):
        for t in np.flatnonzero(scan_mask[i]):
            inside = 1.0 / (1.0 + np.exp((radius_vox - diameter[i, t] / 2.0) / 0.7))
            hu = -850.0 + 890.0 * inside + rng.normal(0.0, 60.0, size=inside.shape)
            crops[i, t] = np.clip(hu, -1024, 3071).astype(np.int16)

    ehr = rng.normal(0.0, 1.0, size=(n, timepoints, n_ehr)).astype(np.float32)
    pack_years = np.where(malignant, rng.normal(45.0, 12.0, n), rng.normal(20.0, 12.0, n))
    age_years = np.where(malignant, rng.normal(68.0, 7.0, n), rng.normal(62.0, 7.0, n))
    ehr[..., 0] = np.clip(pack_years, 0.0, None)[:, None]
    ehr[..., 1] = age_years[:, None] - months / 12.0
    ehr_mask = scan_mask & (rng.random((n, timepoints)) >= 0.25)
    ehr = np.where(ehr_mask[..., None], ehr, 0.0).astype(np.float32)
    names = np.array(
        ["pack_years", "age_years", *(f"signature_{k:02d}" for k in range(n_ehr - 2))], dtype=str
    )
    label = np.where(malignant, 1, 0) if labeled else np.full(n, UNLABELED)
    return ExampleSet(
        patient_id=np.array([f"synthetic-{seed}-{i:06d}" for i in range(n)], dtype=str),
        crops_hu=crops,
        scan_mask=scan_mask,
        months_before_latest=months,
        ehr=ehr,
        ehr_mask=ehr_mask,
        ehr_feature_names=names,
        diameter_mm=diameter,
        label=label.astype(np.int8),
        crop_spacing_mm=float(crop_spacing_mm),
    )

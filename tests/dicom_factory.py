"""Write small, valid CT series with pydicom, with knobs that produce every bad case.

Tests plant PHI (name, birth date, MRN, accession, institution, UIDs) through these knobs
and check it never reaches curated outputs. Expected HU are returned in the order a correct
reader must produce (slices ascending along the slice normal), whatever the file order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from cohorts.dicom import CurationConfig

PHI = {
    "patient_name": "Doe^Janet^Quincy",
    "birth_date": "19470322",
    "patient_id": "MRN-7734219",
    "accession": "ACC-55128841",
    "institution": "Saint Elsewhere General Hospital",
    "referring": "Hawkeye^Pierce",
}


@dataclass
class SeriesSpec:
    """What was written: files (in write order), expected HU z-y-x, geometry and raw ids."""

    paths: list[Path]
    hu: np.ndarray
    series_uid: str
    study_uid: str
    patient_id: str
    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    slopes: list[float] = field(default_factory=list)
    intercepts: list[float] = field(default_factory=list)


def phantom_hu(
    shape: tuple[int, int, int],
    origin_mm: Sequence[float],
    spacing_mm: Sequence[float],
    sphere: tuple[tuple[float, float, float], float, float] | None,
    direction: np.ndarray | None = None,
) -> np.ndarray:
    """A z-dependent ramp (so slice order is checkable) with an optional bright sphere."""
    nz, ny, nx = shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    hu = (-900 + 9 * k + (j + 2 * i) % 40).astype(np.float64)
    if sphere is not None:
        (cx, cy, cz), radius_mm, sphere_hu = sphere
        d = np.eye(3) if direction is None else direction
        offsets = [i * spacing_mm[2], j * spacing_mm[1], k * spacing_mm[0]]
        x, y, z = (origin_mm[a] + sum(d[a, b] * offsets[b] for b in range(3)) for a in range(3))
        hu[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius_mm**2] = sphere_hu
    return hu


def write_ct_series(
    folder: Path,
    *,
    n_slices: int = 20,
    rows: int = 32,
    columns: int = 32,
    slice_spacing_mm: float = 2.0,
    pixel_spacing_mm: tuple[float, float] = (0.8, 0.7),
    origin_mm: tuple[float, float, float] = (-10.0, -8.0, -20.0),
    orientation: tuple[float, float, float, float, float, float] = (1, 0, 0, 0, 1, 0),
    patient_id: str = PHI["patient_id"],
    study_uid: str | None = None,
    series_uid: str | None = None,
    study_date: str = "20200115",
    slope: float = 1.0,
    intercept: float = -1024.0,
    alternate_intercept: float | None = None,
    signed: bool = False,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    transfer_syntax: str = "explicit",
    shuffle: bool = True,
    reverse_instance_numbers: bool = True,
    missing_slice: int | None = None,
    duplicate_slice: int | None = None,
    mixed_spacing_slice: int | None = None,
    no_pixel_slice: int | None = None,
    corrupt_slice: int | None = None,
    padding_value: int | None = None,
    padding_pixels: int = 0,
    sphere: tuple[tuple[float, float, float], float, float] | None = None,
    file_stem: str = "",
    extension: str = "",
    seed: int = 0,
) -> SeriesSpec:
    """Write one CT series into ``folder`` and return what a correct reader must produce.

    ``transfer_syntax``: "explicit", "rle" or "j2k". Bad-case knobs name a slice index
    (ascending z) to drop, duplicate, give another pixel spacing, strip of pixels or corrupt.
    ``padding_value`` (stored units) is written into the first ``padding_pixels`` rows.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    spacing = (slice_spacing_mm, pixel_spacing_mm[0], pixel_spacing_mm[1])
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    direction = np.stack([row_dir, col_dir, np.cross(row_dir, col_dir)], axis=1)
    hu = phantom_hu((n_slices, rows, columns), origin_mm, spacing, sphere, direction)
    expected: list[np.ndarray] = []
    slopes: list[float] = []
    intercepts: list[float] = []
    datasets: list[tuple[int, Dataset]] = []
    for k in range(n_slices):
        if k == missing_slice:
            continue
        k_intercept = (
            alternate_intercept if (alternate_intercept is not None and k % 2) else intercept
        )
        stored = np.rint((hu[k] - k_intercept) / slope)
        if padding_value is not None and padding_pixels:
            stored[:padding_pixels] = padding_value
        dtype = np.int16 if signed else np.uint16
        info = np.iinfo(dtype)
        stored = np.clip(stored, info.min, info.max).astype(dtype)
        slice_hu = np.rint(stored.astype(np.float64) * slope + k_intercept)
        if padding_value is not None and padding_pixels:
            slice_hu[:padding_pixels] = -1024
        expected.append(np.clip(slice_hu, -1024, 32767).astype(np.int16))
        slopes.append(slope)
        intercepts.append(k_intercept)
        position = np.asarray(origin_mm) + direction[:, 2] * k * slice_spacing_mm
        ds = _ct_dataset(
            modality=modality,
            image_type=image_type,
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            study_date=study_date,
            position_mm=(float(position[0]), float(position[1]), float(position[2])),
            orientation=orientation,
            pixel_spacing_mm=pixel_spacing_mm,
            slice_thickness_mm=slice_spacing_mm,
            instance_number=(n_slices - k) if reverse_instance_numbers else k + 1,
            slope=slope,
            intercept=k_intercept,
            stored=stored,
            signed=signed,
        )
        if padding_value is not None:
            ds.PixelPaddingValue = int(padding_value)
        if k == mixed_spacing_slice:
            ds.PixelSpacing = [pixel_spacing_mm[0] * 1.5, pixel_spacing_mm[1] * 1.5]
        if transfer_syntax == "rle":
            ds.compress(RLELossless, stored)
        elif transfer_syntax == "j2k":
            ds.compress(JPEG2000Lossless, stored, encoding_plugin="pylibjpeg")
        elif transfer_syntax != "explicit":
            raise ValueError(f"unknown transfer_syntax {transfer_syntax!r}")
        if k == corrupt_slice:
            ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])
        if k == no_pixel_slice:
            del ds.PixelData
        datasets.append((k, ds))
        if k == duplicate_slice:
            twin = pydicom.Dataset(ds)
            twin.file_meta = ds.file_meta
            twin.SOPInstanceUID = generate_uid()
            twin.file_meta = FileMetaDataset(ds.file_meta)
            twin.file_meta.MediaStorageSOPInstanceUID = twin.SOPInstanceUID
            datasets.append((k, twin))
    order = list(range(len(datasets)))
    if shuffle:
        random.Random(seed).shuffle(order)
    paths: list[Path] = []
    for n, idx in enumerate(order):
        _, ds = datasets[idx]
        path = folder / f"{file_stem}{n:04d}{extension}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return SeriesSpec(
        paths=paths,
        hu=np.stack(expected) if expected else np.zeros((0, rows, columns), np.int16),
        series_uid=series_uid,
        study_uid=study_uid,
        patient_id=patient_id,
        origin_mm=origin_mm,
        spacing_mm=spacing,
        slopes=slopes,
        intercepts=intercepts,
    )


def _ct_dataset(
    *,
    modality: str,
    image_type: Sequence[str],
    patient_id: str,
    study_uid: str,
    series_uid: str,
    study_date: str,
    position_mm: tuple[float, float, float],
    orientation: Sequence[float],
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
    instance_number: int,
    slope: float,
    intercept: float,
    stored: np.ndarray,
    signed: bool,
) -> Dataset:
    """One image with the CT Image IOD's mandatory modules and planted PHI."""
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = PHI["accession"]
    ds.Modality = modality
    ds.Manufacturer = "LungJEPA test factory"
    ds.InstitutionName = PHI["institution"]
    ds.ReferringPhysicianName = PHI["referring"]
    ds.PatientName = PHI["patient_name"]
    ds.PatientID = patient_id
    ds.PatientBirthDate = PHI["birth_date"]
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position_mm]
    ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
    ds.SliceLocation = f"{position_mm[2]:.4f}"
    ds.SliceThickness = f"{slice_thickness_mm:.4f}"
    ds.PixelSpacing = [f"{v:.4f}" for v in pixel_spacing_mm]
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    return ds


def curation_config(**overrides: object) -> CurationConfig:
    """A curation config at test sizes (the pipeline's comes from params.yaml ``curate``)."""
    values: dict[str, object] = {
        "crop_size_vox": 16,
        "crop_spacing_mm": 1.0,
        "min_slices": 8,
        "workers": 1,
        "nodule_match_tolerance_mm": 10.0,
        "date_shift_max_days": 0,
    }
    values.update(overrides)
    return CurationConfig(**values)  # type: ignore[arg-type]

"""DICOM files as a hospital PACS exports them: CT series, localizers, secondary captures.

UIDs are name-based UUIDs (2.25.<int>) of seed-derived strings and all
dates/times from the patient timeline, so the same config gives byte-identical files.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)

from cohorts.privacy import SYNTHETIC_DICOM_MARK
from cohorts.synthetic.config import ScannerSite
from cohorts.synthetic.phantom import RESCALE_INTERCEPT_HU, ScanGeometry

# tags that change from slice to slice, in ascending order
_PER_SLICE_TAGS: tuple[BaseTag, ...] = (
    Tag(0x0008, 0x0018),  # SOPInstanceUID
    Tag(0x0020, 0x0013),  # InstanceNumber
    Tag(0x0020, 0x0032),  # ImagePositionPatient
    Tag(0x0020, 0x1041),  # SliceLocation
    Tag(0x7FE0, 0x0010),  # PixelData
)


def _encode(ds: Dataset) -> bytes:
    """Explicit VR little endian encoding of a (sub)dataset, without preamble or meta."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def stable_uid(*parts: object) -> str:
    """A 2.25.<uuid-int> UID (ISO/IEC 9834-8) that depends only on `parts`.

    Why not `generate_uid(prefix=None, entropy_srcs=...)`: with prefix=None pydicom ignores
    the entropy and returns a random uuid4, which breaks byte-identical regeneration.
    """
    name = "|".join(str(p) for p in parts)
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'lungjepa-synthetic|' + name).int}")


@dataclass(frozen=True)
class StudyInfo:
    """Patient and study attributes shared by every file of one study."""

    patient_id: str
    patient_name: str
    birth_date: str  # YYYYMMDD
    sex: str  # F | M
    age_years: int
    study_uid: str
    frame_of_reference_uid: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    accession_number: str
    study_id: str


def _base_dataset(info: StudyInfo, site: ScannerSite, sop_class: str, sop_uid: str) -> Dataset:
    """Patient, General Study, General Equipment and SOP Common modules."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "LUNGJEPA_SYN"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = info.study_date
    ds.StudyTime = info.study_time
    ds.AccessionNumber = info.accession_number
    ds.ReferringPhysicianName = "REFERRER^PULMONARY"
    ds.InstitutionName = site.institution
    ds.Manufacturer = site.manufacturer
    ds.ManufacturerModelName = site.model
    ds.StudyDescription = "CT CHEST WO CONTRAST"
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    # the generator's mark: the demo key may pseudonymise this series (cohorts/privacy.py)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = SYNTHETIC_DICOM_MARK
    ds.PatientBirthDate = info.birth_date
    ds.PatientSex = info.sex
    ds.PatientAge = f"{min(info.age_years, 999):03d}Y"
    ds.StudyInstanceUID = info.study_uid
    ds.StudyID = info.study_id
    return ds


def _series_attrs(
    ds: Dataset,
    modality: str,
    series_uid: str,
    series_number: int,
    description: str,
    info: StudyInfo,
) -> None:
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate = info.study_date
    ds.SeriesTime = info.study_time
    ds.BodyPartExamined = "CHEST"


def _pixel_attrs(ds: Dataset, pixels: np.ndarray, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OW" if pixels.dtype.itemsize > 1 else "OB"


def _ct_attrs(ds: Dataset, site: ScannerSite, image_type: list[str], info: StudyInfo) -> None:
    ds.ImageType = image_type
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "FFS"
    ds.KVP = site.kvp
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = info.study_date
    ds.ContentDate = info.study_date
    ds.ContentTime = info.study_time
    ds.RescaleIntercept = RESCALE_INTERCEPT_HU
    ds.RescaleSlope = 1
    ds.WindowCenter = -600
    ds.WindowWidth = 1600


class CTSeriesWriter:
    """Writes the slices of one axial CT series from a single template dataset.

    Why a template: building and validating ~40 elements per slice dominated generation time;
    only SOPInstanceUID, InstanceNumber, position and pixels change from slice to slice.
    """

    def __init__(
        self,
        stored: np.ndarray,
        geometry: ScanGeometry,
        site: ScannerSite,
        info: StudyInfo,
        series_uid: str,
        series_number: int,
        uid_parts: tuple[object, ...],
    ) -> None:
        self.stored = stored
        self.geometry = geometry
        self.uid_parts = uid_parts
        ds = _base_dataset(info, site, CTImageStorage, stable_uid(*uid_parts, "ct", 0))
        _series_attrs(ds, "CT", series_uid, series_number, "CHEST 1.0 LUNG", info)
        _ct_attrs(ds, site, ["ORIGINAL", "PRIMARY", "AXIAL"], info)
        ds.InstanceNumber = 1
        x0, y0, z0 = geometry.origin_mm()
        ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(z0, 4)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = round(z0, 4)
        ds.PixelSpacing = [geometry.pixel_spacing_mm, geometry.pixel_spacing_mm]
        ds.SliceThickness = site.slice_spacing_mm
        ds.ConvolutionKernel = "LUNG"
        ds.RescaleType = "HU"
        _pixel_attrs(ds, stored[0], bits_stored=12)
        self.template = ds
        self._segments: list[bytes] | None = None

    def sop_uid(self, k: int) -> str:
        """SOPInstanceUID of slice k (0 = most superior)."""
        return stable_uid(*self.uid_parts, "ct", k)

    def _static_segments(self) -> list[bytes]:
        """Encoded runs of the template's fixed elements between the per-slice tags."""
        segments, run = [], Dataset()
        for elem in self.template:
            if elem.tag in _PER_SLICE_TAGS:
                segments.append(_encode(run))
                run = Dataset()
            else:
                run.add(elem)
        segments.append(_encode(run))
        return segments

    def write_slice(self, k: int, path: Path) -> None:
        """Write slice k as one Part-10 file (fixed elements encoded once per series)."""
        ds = self.template
        x0, y0, z0 = self.geometry.origin_mm()
        z_mm = round(z0 - k * self.geometry.slice_spacing_mm, 4)
        uid = self.sop_uid(k)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), z_mm]
        ds.SliceLocation = z_mm
        ds.PixelData = np.ascontiguousarray(self.stored[k]).tobytes()
        ds["PixelData"].VR = "OW"
        if self._segments is None:
            self._segments = self._static_segments()
        meta = DicomBytesIO()
        meta.is_implicit_VR, meta.is_little_endian = False, True
        write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        parts = [b"\x00" * 128, b"DICM", meta.getvalue(), self._segments[0]]
        for tag, segment in zip(_PER_SLICE_TAGS, self._segments[1:], strict=True):
            single = Dataset()
            single.add(ds[tag])
            parts += [_encode(single), segment]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(parts))


def localizer_dataset(
    volume_hu: np.ndarray,
    geometry: ScanGeometry,
    site: ScannerSite,
    info: StudyInfo,
    series_uid: str,
    uid_parts: tuple[object, ...],
) -> Dataset:
    """A coronal scout (mean HU along y): CT Image with ImageType ...\\LOCALIZER."""
    x0, _y0, z0 = geometry.origin_mm()
    projection = volume_hu.mean(axis=1) * 1.5 + 400.0  # z-x, brighter like a radiograph
    stored = np.clip(np.rint(projection - RESCALE_INTERCEPT_HU), 0, 4095).astype(np.uint16)
    ds = _base_dataset(info, site, CTImageStorage, stable_uid(*uid_parts, "localizer-image"))
    _series_attrs(ds, "CT", series_uid, 1, "TOPOGRAM", info)
    _ct_attrs(ds, site, ["ORIGINAL", "PRIMARY", "LOCALIZER"], info)
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [round(x0, 4), 0.0, round(z0, 4)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.PixelSpacing = [geometry.slice_spacing_mm, geometry.pixel_spacing_mm]
    ds.SliceThickness = geometry.pixel_spacing_mm * geometry.n_px
    _pixel_attrs(ds, stored, bits_stored=12)
    return ds


def secondary_capture_dataset(
    site: ScannerSite, info: StudyInfo, series_uid: str, uid_parts: tuple[object, ...]
) -> Dataset:
    """A dose-report screen capture (Modality OT): not CT, curation must skip it."""
    rng = np.random.default_rng(int(stable_uid(*uid_parts).rsplit(".", 1)[-1]) % 2**32)
    page = np.full((64, 96), 16, dtype=np.uint8)
    for row in range(6, 60, 8):  # text-like bars
        length = int(rng.integers(20, 90))
        page[row : row + 3, 4 : 4 + length] = 220
    ds = _base_dataset(info, site, SecondaryCaptureImageStorage, stable_uid(*uid_parts, "sc-image"))
    _series_attrs(ds, "OT", series_uid, 999, "DOSE REPORT", info)
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY", "DOSE_INFO"]
    ds.ContentDate = info.study_date
    ds.ContentTime = info.study_time
    _pixel_attrs(ds, page, bits_stored=8)
    return ds


def write_dicom_file(ds: Dataset, path: Path) -> None:
    """Write one Part-10 file (128-byte preamble, explicit VR little endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)

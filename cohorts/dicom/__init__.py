"""DICOM CT curation: header scan, series checks, HU volumes, nodule crops, cohort driver."""

from cohorts.dicom.crops import nodule_crop
from cohorts.dicom.curate import CurationConfig, CurationSummary, curate_cohort
from cohorts.dicom.inputs import RawCohort
from cohorts.dicom.series import CTVolume, SeriesError, read_series

__all__ = [
    "CTVolume",
    "CurationConfig",
    "CurationSummary",
    "RawCohort",
    "SeriesError",
    "curate_cohort",
    "nodule_crop",
    "read_series",
]

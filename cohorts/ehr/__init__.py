"""EHR features: OMOP reading and validation, clinical covariates, code intensities, signatures."""

from cohorts.ehr.features import (
    AGE_AT_SCAN,
    BIRTH_REFERENCE_DAY,
    CLINICAL_HISTORY,
    CLINICAL_SIGNATURES,
    DEMOGRAPHICS,
    EHR_FEATURE_NAMES,
    VIEWS,
    CohortFeatures,
    add_age_at_scan,
    birth_reference_days,
    build_feature_tables,
    combine_cohorts,
    ehr_feature_names,
    fit_signatures,
    scan_timestamp,
)
from cohorts.ehr.omop import OmopFormatError, OmopQuality, OmopTables, read_omop
from cohorts.ehr.signatures import ClinicalSignatures, signature_names

__all__ = [
    "AGE_AT_SCAN",
    "BIRTH_REFERENCE_DAY",
    "CLINICAL_HISTORY",
    "CLINICAL_SIGNATURES",
    "DEMOGRAPHICS",
    "EHR_FEATURE_NAMES",
    "VIEWS",
    "ClinicalSignatures",
    "CohortFeatures",
    "OmopFormatError",
    "OmopQuality",
    "OmopTables",
    "add_age_at_scan",
    "birth_reference_days",
    "build_feature_tables",
    "combine_cohorts",
    "ehr_feature_names",
    "fit_signatures",
    "read_omop",
    "scan_timestamp",
    "signature_names",
]

"""The attributes of DICOM PS3.15 Annex E, Table E.1-1 (Basic Application Level
Confidentiality Profile): what a de-identifier must remove or replace, by keyword.

Curation writes none of their values: ids become keyed pseudonyms, dates are shifted, and a
path component that holds one of them is redacted (``cohorts.dicom.scan.redact_path``). The
list is also what the reliability suite's privacy scan reads back from the raw input to look
for in every output, Dagster event and log line (tests/reliability/test_privacy_scan.py).

Keywords as pydicom's data dictionary spells them; every one is a known keyword (a test
checks it). Private attributes, which the profile also removes, are never read by curation.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag

from cohorts.dicom.values import HeaderValues, memoizable

ANNEX_E_BASIC_PROFILE: tuple[str, ...] = (
    "AccessionNumber", "AcquisitionComments", "AcquisitionContextSequence", "AcquisitionDate",
    "AcquisitionDateTime", "AcquisitionDeviceProcessingDescription",
    "AcquisitionProtocolDescription", "AcquisitionTime", "ActualHumanPerformersSequence",
    "AdditionalPatientHistory", "AdmissionID", "AdmittingDate", "AdmittingDiagnosesCodeSequence",
    "AdmittingDiagnosesDescription", "AdmittingTime", "AffectedSOPInstanceUID", "Allergies",
    "AuthorObserverSequence", "BranchOfService", "CassetteID",
    "CommentsOnThePerformedProcedureStep", "ConcatenationUID",
    "ConfidentialityConstraintOnPatientDataDescription", "ContentCreatorName",
    "ContentCreatorIdentificationCodeSequence", "ContentDate", "ContentSequence", "ContentTime",
    "ContextGroupExtensionCreatorUID", "ContrastBolusAgent", "ContributionDescription",
    "CountryOfResidence", "CreatorVersionUID", "CurrentPatientLocation", "CurveDate", "CurveTime",
    "CustodialOrganizationSequence", "DataSetTrailingPadding", "DerivationDescription",
    "DetectorID", "DeviceSerialNumber", "DeviceUID", "DigitalSignatureUID",
    "DigitalSignaturesSequence", "DimensionOrganizationUID", "DischargeDiagnosisDescription",
    "DistributionAddress", "DistributionName", "DoseReferenceUID", "EthnicGroup",
    "FailedSOPInstanceUIDList", "FiducialUID", "FillerOrderNumberImagingServiceRequest",
    "FrameComments", "FrameOfReferenceUID", "GantryID", "GeneratorID",
    "GraphicAnnotationSequence", "HumanPerformerName", "HumanPerformerOrganization",
    "IconImageSequence", "IdentifyingComments", "ImageComments", "ImagePresentationComments",
    "ImagingServiceRequestComments", "Impressions", "InstanceCreatorUID", "InstitutionAddress",
    "InstitutionCodeSequence", "InstitutionName", "InstitutionalDepartmentName",
    "InsurancePlanIdentification", "IntendedRecipientsOfResultsIdentificationSequence",
    "InterpretationApproverSequence", "InterpretationAuthor",
    "InterpretationDiagnosisDescription", "InterpretationIDIssuer", "InterpretationRecorder",
    "InterpretationText", "InterpretationTranscriber", "IrradiationEventUID",
    "IssuerOfAdmissionID", "IssuerOfPatientID", "IssuerOfServiceEpisodeID",
    "LargePaletteColorLookupTableUID", "MAC", "MediaStorageSOPInstanceUID", "MedicalAlerts",
    "MedicalRecordLocator", "MilitaryRank", "ModifiedAttributesSequence",
    "ModifiedImageDescription", "ModifyingDeviceID", "ModifyingDeviceManufacturer",
    "NameOfPhysiciansReadingStudy", "NamesOfIntendedRecipientsOfResults", "Occupation",
    "OperatorIdentificationSequence", "OperatorsName", "OriginalAttributesSequence",
    "OrderCallbackPhoneNumber", "OrderEnteredBy", "OrderEntererLocation", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "OverlayDate", "OverlayTime",
    "PaletteColorLookupTableUID", "ParticipantSequence", "PatientAddress", "PatientAge",
    "PatientBirthDate", "PatientBirthName", "PatientBirthTime", "PatientComments", "PatientID",
    "PatientInsurancePlanCodeSequence", "PatientMotherBirthName", "PatientName",
    "PatientPrimaryLanguageCodeSequence", "PatientReligiousPreference", "PatientSex",
    "PatientSexNeutered", "PatientSize", "PatientState", "PatientTelephoneNumbers",
    "PatientTransportArrangements", "PatientWeight", "PerformedLocation",
    "PerformedProcedureStepDescription", "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedStationAETitle", "PerformedStationGeographicLocationCodeSequence",
    "PerformedStationName", "PerformedStationNameCodeSequence",
    "PerformingPhysicianIdentificationSequence", "PerformingPhysicianName", "PersonAddress",
    "PersonIdentificationCodeSequence", "PersonName", "PersonTelephoneNumbers",
    "PhysicianApprovingInterpretation", "PhysiciansReadingStudyIdentificationSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "PlacerOrderNumberImagingServiceRequest", "PlateID", "PreMedication", "PregnancyStatus",
    "ProtocolName", "ReasonForTheImagingServiceRequest", "ReasonForStudy",
    "ReferencedDigitalSignatureSequence", "ReferencedFrameOfReferenceUID",
    "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID", "ReferencedImageSequence",
    "ReferencedPatientAliasSequence", "ReferencedPatientSequence",
    "ReferencedPerformedProcedureStepSequence", "ReferencedSOPInstanceMACSequence",
    "ReferencedSOPInstanceUID", "ReferencedSOPInstanceUIDInFile", "ReferencedStudySequence",
    "ReferringPhysicianAddress", "ReferringPhysicianIdentificationSequence",
    "ReferringPhysicianName", "ReferringPhysicianTelephoneNumbers", "RegionOfResidence",
    "RelatedFrameOfReferenceUID", "RequestAttributesSequence", "RequestedContrastAgent",
    "RequestedProcedureComments", "RequestedProcedureDescription", "RequestedProcedureID",
    "RequestedProcedureLocation", "RequestedSOPInstanceUID", "RequestingPhysician",
    "RequestingService", "ResponsibleOrganization", "ResponsiblePerson", "ResultsComments",
    "ResultsDistributionListSequence", "ResultsIDIssuer", "ReviewerName",
    "ScheduledHumanPerformersSequence", "ScheduledPatientInstitutionResidence",
    "ScheduledPerformingPhysicianIdentificationSequence", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime",
    "ScheduledProcedureStepDescription", "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
    "ScheduledStationAETitle", "ScheduledStationGeographicLocationCodeSequence",
    "ScheduledStationName", "ScheduledStationNameCodeSequence", "ScheduledStudyLocation",
    "ScheduledStudyLocationAETitle", "SeriesDate", "SeriesDescription", "SeriesInstanceUID",
    "SeriesTime", "ServiceEpisodeDescription", "ServiceEpisodeID", "SmokingStatus",
    "SOPInstanceUID", "SourceImageSequence", "SpecialNeeds", "StationName",
    "StorageMediaFileSetUID", "StudyComments", "StudyDate", "StudyDescription", "StudyID",
    "StudyIDIssuer", "StudyInstanceUID", "StudyTime", "SynchronizationFrameOfReferenceUID",
    "TemplateExtensionCreatorUID", "TemplateExtensionOrganizationUID", "TextComments",
    "TextString", "TimezoneOffsetFromUTC", "TopicAuthor", "TopicKeywords", "TopicSubject",
    "TopicTitle", "TransactionUID", "UID", "VerifyingObserverIdentificationCodeSequence",
    "VerifyingObserverName", "VerifyingObserverSequence", "VerifyingOrganization",
    "VisitComments",
)  # fmt: skip
_KEYWORDS = frozenset(ANNEX_E_BASIC_PROFILE)


@lru_cache(maxsize=4096)
def _tag_kind(tag: int) -> tuple[str, str]:
    """(kind, keyword): kind "listed" (an Annex E keyword), "skip" (a known non-sequence),
    or "look" (a known sequence, or a tag the dictionary does not know, private say, whose
    element must be converted to see whether it is a sequence to descend into)."""
    try:
        keyword, vr = keyword_for_tag(tag), dictionary_VR(tag)
    except KeyError:
        return "look", ""
    if keyword in _KEYWORDS:
        return "listed", keyword
    return ("look" if "SQ" in vr else "skip"), keyword


def annex_e_values(
    ds: pydicom.Dataset, values: HeaderValues | None = None
) -> Iterator[tuple[str, str, str]]:
    """(keyword, VR, value) of every Annex E attribute in ``ds``, sequences included.

    Multi-valued elements give one value each; a listed sequence gives every value inside
    it (e.g. the names in OperatorIdentificationSequence). Empty values are skipped.

    Only listed elements and possible sequences are converted from their raw bytes (the rest
    are recognised by tag and VR), listed plain values through ``HeaderValues``' memo; an
    element whose file VR says SQ is descended into whatever the dictionary says. ``values``:
    the caller's ``HeaderValues`` of ``ds``, when it has one.
    """
    values = values if values is not None else HeaderValues(ds)
    for tag, raw in list(ds.items()):  # raw or converted elements; iterating ds converts all
        kind, keyword = _tag_kind(int(tag))
        if kind == "skip" and getattr(raw, "VR", None) != "SQ":
            continue
        vr = memoizable(raw) if kind == "listed" else None
        if vr is not None:
            yield from _values_of(keyword, vr, values.get(int(tag)))
            continue
        element = ds[tag]
        keyword = element.keyword
        if element.VR == "SQ":
            for item in element.value or ():
                if keyword in _KEYWORDS:
                    yield from _all_values(item, keyword)
                else:
                    yield from annex_e_values(item)
        elif keyword in _KEYWORDS:
            yield from _values(keyword, element)


def _all_values(ds: pydicom.Dataset, parent: str) -> Iterator[tuple[str, str, str]]:
    for element in ds:
        if element.VR == "SQ":
            for item in element.value or ():
                yield from _all_values(item, parent)
        else:
            yield from _values(parent, element)


def _values(keyword: str, element: pydicom.DataElement) -> Iterator[tuple[str, str, str]]:
    return _values_of(keyword, element.VR, element.value)


def _values_of(keyword: str, vr: str, raw: object) -> Iterator[tuple[str, str, str]]:
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return  # binary (e.g. DataSetTrailingPadding, MAC): no text to look for
    values = raw if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw]
    for value in values:
        text = str(value).strip() if value is not None else ""
        if text:
            yield keyword, vr, text

"""`lungjepa predict`: one malignancy probability from a DICOM folder, a nodule and a patient id.

Why a module of plain functions: a hospital inference box has onnxruntime, pydicom and the
feature store, not a training stack, so nothing here imports torch or Dagster. The series is
read with the curation code (same checks, same HU conversion, same crop), the EHR features
come from the Feast online store (or a JSON file) in the order the model's metadata names
(``serving.features``, which opens the store with torch imports refused), and the model runs
through ``load_verified_session`` (``serving.model``), which refuses a file whose sha256 is
not its card's. Many rows of an annotations.csv at once: ``serving.batch``, which reads its
series with the settings here and the decode, date and crop rules of ``serving.series``.

Ids on input are the hospital's (MRN, DICOM UIDs); everything printed uses the pseudonyms
curation writes (``cohorts.privacy``), so the output joins the curated data and holds no PHI.

Each entry point has a ``*_loaded`` twin that takes an open session and a feature-store
opener, so ``serving.service`` can keep both open between requests; the CLI opens them per
call.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cohorts.dicom import CTVolume, SeriesError
from cohorts.dicom.scan import ScanResult
from cohorts.dicom.select import first_decodable
from cohorts.dicom.series import validate_headers, volume_from_geometry
from cohorts.example_set import padded_inputs
from cohorts.privacy import date_shift_days, pseudonymise, resolve_key, shift_date
from models.onnx_runtime import predict_onnx
from serving.errors import PredictionError
from serving.features import (
    EhrInput,
    StoreOpener,
    json_ehr,
    mapping_ehr,
    online_ehr,
    open_feature_store,
)
from serving.headers import FolderReader, read_folder
from serving.model import ModelSpec, load_model
from serving.series import crop_at, parse_date


@dataclass(frozen=True)
class CurationSettings:
    """The curation knobs that must match training: slice minimum, pseudonym key, date shift.

    pseudonym_key None (the default): resolved from the input like curation does
    (cohorts/privacy.py): the demo key only when every series carries the generator's mark.
    """

    min_slices: int
    date_shift_max_days: int  # params.yaml privacy: no default, so no caller forgets the shift
    pseudonym_key: bytes | None = field(default=None, repr=False)

    def for_model(self, spec: ModelSpec) -> CurationSettings:
        """These settings with the date shift the model's training cohorts were made with (it
        travels in the ONNX metadata): a scan's shifted date must be shifted as theirs were."""
        if spec.date_shift_max_days is None:
            return self
        return replace(self, date_shift_max_days=spec.date_shift_max_days)

    def for_tree(self, tree: ScanResult) -> CurationSettings:
        """These settings with the key resolved for the series found in `tree`.

        A request folder has no marker file (curation's ``cohort_is_synthetic`` requires one),
        so the demo key applies only when it holds series and every file carries the mark.
        """
        if self.pseudonym_key is not None:
            return self
        synthetic = bool(tree.series) and tree.unmarked_series() == 0
        return replace(self, pseudonym_key=resolve_key(synthetic))


@dataclass
class Scan:
    """The chosen CT series of the folder, with its (shifted) ISO scan date."""

    volume: CTVolume
    scan_date: dt.date
    warnings: list[str] = field(default_factory=list)
    pseudonym_key: bytes = field(default=b"", repr=False)  # the key resolved for this folder
    date_shift_days: int = field(default=0, repr=False)  # the patient's shift (never output)


# ---------------------------------------------------------------- the DICOM series


def parse_nodule(text: str) -> tuple[float, float, float]:
    """``"X,Y,Z"`` world coordinates in mm (DICOM patient LPS, as in annotations.csv)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise PredictionError(f"--nodule must be X,Y,Z in mm, got {text!r}") from exc
    if len(values) != 3 or not all(np.isfinite(values)):
        raise PredictionError(f"--nodule must be three finite numbers X,Y,Z in mm, got {text!r}")
    return values  # type: ignore[return-value]


def read_scan(
    dicom_dir: Path,
    patient_id: str,
    settings: CurationSettings,
    at: dt.date | None = None,
    read: FolderReader = read_folder,
) -> Scan:
    """The CT series to predict on: the patient's study on ``at`` (default: the latest).

    Walks the folder like curation, checks every series with the curation checks, and picks
    within the study the series curation would (thinnest first). Raises PredictionError with
    each series' reason when no series is a usable CT, and when the folder's PatientID is not
    ``patient_id`` (a prediction must never mix two patients). ``read`` reads the folder's
    headers (``serving.headers``: in-process, or the service's pool).
    """
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise PredictionError(f"DICOM folder not found: {dicom_dir}")
    tree = read(dicom_dir)
    if not tree.series:
        bad = ", ".join(sorted({reason for _, reason in tree.bad_files})) or "no files"
        raise PredictionError(f"no DICOM image series in {dicom_dir} ({bad})")
    settings = settings.for_tree(tree)
    key = settings.pseudonym_key
    patients = {h.patient_id for headers in tree.series.values() for h in headers}
    if len(patients) > 1:
        raise PredictionError(
            f"{dicom_dir} holds {len(patients)} patients; give one patient's folder"
        )
    folder_patient = patients.pop()
    if folder_patient != patient_id:
        raise PredictionError(
            f"--patient-id {pseudonymise(patient_id, key)} (pseudonym) does not match the "
            f"series' PatientID {pseudonymise(folder_patient, key)} (pseudonym)"
        )
    shift = date_shift_days(patient_id, key, settings.date_shift_max_days)
    rejected: list[str] = []
    studies: dict[str, dict[str, Any]] = {}
    dates: dict[str, dt.date | None] = {}
    for series_uid in sorted(tree.series):
        headers = tree.series[series_uid]
        series_id = pseudonymise(series_uid, key, "series")
        try:
            geometry = validate_headers(headers, settings.min_slices)
        except SeriesError as err:
            rejected.append(f"{series_id}: {err.index_reason}")
            continue
        study = headers[0].study_uid or series_uid
        studies.setdefault(study, {})[series_id] = geometry  # pseudonyms: curation's tie-break
        raw_date = headers[0].study_date
        dates[study] = shift_date(parse_date(raw_date), shift) if raw_date.strip() else None
    if not studies:
        raise PredictionError(
            f"no usable CT series in {dicom_dir}: "
            + "; ".join(rejected)
            + " (a CT image stack is needed: not MR, not a localizer, no missing slices)"
        )
    warnings = [f"series not used: {r}" for r in rejected]
    if at is not None:  # the real date the user knows; the folder's dates are shifted here
        shifted_at = shift_date(at, shift)
        chosen = [
            s for s, d in dates.items() if d == shifted_at or (d is None and len(studies) == 1)
        ]
        if not chosen:
            raise PredictionError(
                f"no CT study on {at} in {dicom_dir} ({len(studies)} CT stud"
                f"{'y' if len(studies) == 1 else 'ies'} on other days)"
            )
        study = chosen[0]
    else:
        dated = [s for s, d in dates.items() if d is not None]
        if len(dated) < len(studies):
            raise PredictionError("a CT study has no StudyDate; give the scan date with --at")
        study = max(dated, key=lambda s: (dates[s], s))
    if len(studies) > 1:
        warnings.append(
            f"{len(studies) - 1} other CT stud{'y' if len(studies) == 2 else 'ies'} in the "
            "folder not used: the model is given the chosen study as its only time point"
        )
    _, volume, failed = first_decodable(studies[study], volume_from_geometry)
    errors = [f"{series_id}: {err.index_reason}" for series_id, err in failed]
    if volume is not None:
        scan_date = dates[study] or (shift_date(at, shift) if at is not None else None)
        assert scan_date is not None  # a single undated study needs --at (checked above)
        return Scan(
            volume=volume,
            scan_date=scan_date,
            warnings=warnings + errors,
            pseudonym_key=key,
            date_shift_days=shift,
        )
    raise PredictionError(f"no CT series of the study could be decoded: {'; '.join(errors)}")


def crop_nodule(
    volume: CTVolume, world_xyz_mm: tuple[float, float, float], spec: ModelSpec
) -> np.ndarray:
    """The model's crop (shape and spacing from its metadata) with curation's resampling."""
    return crop_at(volume, world_xyz_mm, spec.crop_shape_zyx[0], spec.crop_spacing_mm)


# ---------------------------------------------------------------- inputs and the run


def model_inputs(crop_hu: np.ndarray, ehr: EhrInput, spec: ModelSpec) -> tuple[np.ndarray, ...]:
    """One patient, one time point (the latest slot; earlier slots padded and masked off)."""
    arrays = padded_inputs(1, spec.max_timepoints, spec.crop_shape_zyx, len(spec.ehr_feature_names))
    arrays["crops_hu"][0, -1] = crop_hu
    arrays["scan_mask"][0, -1] = True
    if ehr.available:
        arrays["ehr"][0, -1] = [ehr.values[n] for n in spec.ehr_feature_names]
        arrays["ehr_mask"][0, -1] = True
    unknown = [name for name in spec.inputs if name not in arrays]
    if unknown:
        raise PredictionError(
            f"model {spec.onnx_path} takes inputs this path cannot build: {unknown}"
        )
    return tuple(arrays[name] for name in spec.inputs)


@dataclass(frozen=True)
class PredictRequest:
    """Everything `lungjepa predict` takes (paths already resolved)."""

    dicom_dir: Path
    nodule_xyz_mm: tuple[float, float, float]
    patient_id: str  # the hospital MRN (DICOM PatientID); never printed
    model_path: Path
    data_dir: Path
    feature_repo_dir: Path
    curation: CurationSettings
    at: dt.date | None = None
    diameter_mm: float | None = None
    features_json: Path | None = None
    allow_missing_ehr: bool = False
    features: dict[str, Any] | None = None  # inline {name: value}, instead of features_json


def predict(request: PredictRequest) -> dict[str, Any]:
    """Read, crop, fetch features, run the verified model; the JSON-ready result."""
    session, spec = load_model(request.model_path)
    return predict_loaded(
        request,
        session,
        spec,
        lambda: open_feature_store(request.data_dir, request.feature_repo_dir),
    )


def predict_loaded(
    request: PredictRequest,
    session: Any,
    spec: ModelSpec,
    store: StoreOpener,
    read: FolderReader = read_folder,
) -> dict[str, Any]:
    """``predict`` with the verified session already open, the store behind ``store`` and the
    folder's headers read by ``read``."""
    curation = request.curation.for_model(spec)
    scan = read_scan(request.dicom_dir, request.patient_id, curation, request.at, read)
    key = scan.pseudonym_key
    patient = pseudonymise(request.patient_id, key, "patient")
    crop = crop_nodule(scan.volume, request.nodule_xyz_mm, spec)
    warnings = list(scan.warnings)
    names = spec.ehr_feature_names
    mismatch: str | None = None
    if request.features is not None:
        ehr: EhrInput | None = mapping_ehr(
            request.features, names, scan.scan_date, scan.date_shift_days, "features"
        )
    elif request.features_json is not None:
        ehr = json_ehr(request.features_json, names, scan.scan_date, scan.date_shift_days)
    elif (mismatch := spec.key_mismatch(key)) is not None:
        ehr = None
    else:
        ehr = online_ehr(store(), patient, names, scan.scan_date)
    if ehr is None:
        why = mismatch or "no EHR features in the online store"
        if not request.allow_missing_ehr:
            raise PredictionError(
                f"unknown patient {patient} (pseudonym): {why}; pass --features-json FILE, or "
                "--allow-missing-ehr to predict from imaging alone"
            )
        ehr = EhrInput({n: 0.0 for n in names}, False, "none", [mismatch] if mismatch else [])
    if not ehr.available:
        warnings.append("no EHR features: predicted with ehr_mask False (imaging only)")
    elif ehr.source == "feast_online" and request.at is not None:
        warnings.append(
            f"EHR features are the online store's latest, not as of {scan.scan_date}; for a "
            "past scan give --features-json with the values of that day"
        )
    warnings += ehr.warnings
    field_of_view_mm = spec.crop_shape_zyx[0] * spec.crop_spacing_mm
    if request.diameter_mm is not None and request.diameter_mm > field_of_view_mm:
        warnings.append(
            f"nodule diameter {request.diameter_mm} mm exceeds the crop's field of view "
            f"{field_of_view_mm} mm"
        )
    probability = predict_onnx(session, model_inputs(crop, ehr, spec))
    volume = scan.volume
    return {
        "probability": float(probability[0]),
        "model": {
            "name": spec.name,
            "version": spec.version,
            "encoder_version": spec.encoder_version,
            "sha256": spec.sha256,
            "path": str(spec.onnx_path),
        },
        "inputs": {
            "patient_id": patient,
            "series_id": pseudonymise(volume.series_uid, key, "series"),
            "study_id": pseudonymise(volume.study_uid or volume.series_uid, key, "study"),
            "scan_date": scan.scan_date.isoformat(),
            "nodule_world_mm": list(request.nodule_xyz_mm),
            "diameter_mm": request.diameter_mm,
            "volume_shape_zyx": list(volume.hu.shape),
            "volume_spacing_mm_zyx": [round(s, 4) for s in volume.spacing_mm],
            "crop_shape_zyx": list(spec.crop_shape_zyx),
            "crop_spacing_mm": spec.crop_spacing_mm,
            "time_points": 1,
            "ehr_source": ehr.source,
            "ehr_mask": ehr.available,
            "ehr_features": {n: ehr.values[n] for n in names},
        },
        "warnings": warnings,
    }

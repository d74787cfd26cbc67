"""`lungjepa predict`: one malignancy probability from a DICOM folder, a nodule and a patient id.

Why a module of plain functions: a hospital inference box has onnxruntime, pydicom and the
feature store, not a training stack, so nothing here imports torch or Dagster. The series is
read with the curation code (same checks, same HU conversion, same crop), the EHR features
come from the Feast online store (or a JSON file) in the order the model's metadata names,
and the model runs through ``load_verified_session``, which refuses a file whose sha256 is
not its card's. Feast imports torch eagerly when it is installed (feast/torch_wrapper.py);
the store is opened with torch imports refused, so the predict process never loads it.

Ids on input are the hospital's (MRN, DICOM UIDs); everything printed uses the pseudonyms
curation writes (``cohorts.privacy``), so the output joins the curated data and holds no PHI.

Each entry point has a ``*_loaded`` twin that takes an open session and a feature-store
opener, so ``serving.service`` can keep both open between requests; the CLI opens them per
call.

Size: over 450 lines because single and batch prediction share their readers here; issue 18
splits the DICOM reading (shared with curation's series-selection rule) from the features.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.abc
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohorts.dicom import CTVolume, SeriesError, nodule_crop
from cohorts.dicom.scan import ScanResult, scan_dicom_tree
from cohorts.dicom.select import first_decodable
from cohorts.dicom.series import validate_headers, volume_from_geometry
from cohorts.ehr.features import (
    AGE_AT_SCAN,
    BIRTH_REFERENCE_DAY,
    add_age_at_scan,
    birth_reference_days,
    scan_timestamp,
)
from cohorts.example_set import padded_inputs
from cohorts.privacy import date_shift_days, pseudonymise, resolve_key, shift_date
from models.onnx_runtime import load_verified_session, predict_onnx

DEFAULT_MODEL = "jepa"
YEAR_OF_BIRTH = "year_of_birth"


class PredictionError(ValueError):
    """An input the predict path cannot use; the message says which and why."""


@dataclass(frozen=True)
class ModelSpec:
    """What the ONNX metadata says the model takes (written by the `onnx_model` asset)."""

    onnx_path: Path
    sha256: str
    name: str
    version: str
    encoder_version: str
    inputs: tuple[str, ...]
    crop_shape_zyx: tuple[int, int, int]
    crop_spacing_mm: float
    max_timepoints: int
    ehr_feature_names: tuple[str, ...]


@dataclass(frozen=True)
class CurationSettings:
    """The curation knobs that must match training: slice minimum, pseudonym key, date shift.

    pseudonym_key None (the default): resolved from the input like curation does
    (cohorts/privacy.py): the demo key only when every series carries the generator's mark.
    """

    min_slices: int
    pseudonym_key: bytes | None = field(default=None, repr=False)
    date_shift_max_days: int = 0

    def for_tree(self, tree: ScanResult) -> CurationSettings:
        """These settings with the key resolved for the series found in `tree`."""
        if self.pseudonym_key is not None:
            return self
        marks = [h.synthetic for headers in tree.series.values() for h in headers]
        return replace(self, pseudonym_key=resolve_key(bool(marks) and all(marks)))


@dataclass
class Scan:
    """The chosen CT series of the folder, with its (shifted) ISO scan date."""

    volume: CTVolume
    scan_date: dt.date
    warnings: list[str] = field(default_factory=list)
    pseudonym_key: bytes = field(default=b"", repr=False)  # the key resolved for this folder
    date_shift_days: int = field(default=0, repr=False)  # the patient's shift (never output)


@dataclass
class EhrInput:
    """One EHR vector in the model's feature order, and where it came from."""

    values: dict[str, float]
    available: bool
    source: str
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- model


def resolve_model_path(model: str | None, artifacts_dir: Path) -> Path:
    """A model file path, or a model name in artifacts/models/production.json (default jepa)."""
    if model and (model.endswith(".onnx") or Path(model).exists()):
        path = Path(model)
        if not path.is_file():
            raise PredictionError(f"model file not found: {path}")
        return path
    return production_model_path(model or DEFAULT_MODEL, artifacts_dir)


def production_model_path(name: str, artifacts_dir: Path) -> Path:
    """The ONNX file production.json names ``name`` (never a path the caller gave)."""
    pointer_path = Path(artifacts_dir) / "models" / "production.json"
    if not pointer_path.is_file():
        raise PredictionError(
            f"no production model: {pointer_path} not found (run `lungjepa export`, or pass "
            "--model PATH/TO/model.onnx)"
        )
    pointer = json.loads(pointer_path.read_text())
    if name not in pointer.get("models", {}):
        raise PredictionError(
            f"production model {pointer.get('version')} has no model {name!r}; "
            f"known: {sorted(pointer.get('models', {}))}"
        )
    return Path(artifacts_dir) / pointer["models"][name]


def load_model(onnx_path: Path) -> tuple[Any, ModelSpec]:
    """Open the model only if its sha256 matches its card; read the input spec it carries."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise PredictionError(f"model file not found: {onnx_path}")
    if not (onnx_path.parent / "card.json").is_file():
        raise PredictionError(f"model {onnx_path} has no card.json beside it; refusing to run it")
    session, card = load_verified_session(onnx_path)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    required = ("inputs", "crop_shape_zyx", "crop_spacing_mm", "max_timepoints")
    missing = [k for k in (*required, "ehr_feature_names") if k not in meta]
    if missing:
        raise PredictionError(f"model {onnx_path} lacks metadata {missing}; re-export it")
    shape = tuple(int(v) for v in json.loads(meta["crop_shape_zyx"]))
    if len(shape) != 3 or len(set(shape)) != 1:
        raise PredictionError(f"model {onnx_path}: crop shape {shape} is not a cube")
    spec = ModelSpec(
        onnx_path=onnx_path,
        sha256=str(card["sha256"]),
        name=meta.get("model", onnx_path.parent.name),
        version=meta.get("model_version", ""),
        encoder_version=meta.get("encoder_version", ""),
        inputs=tuple(json.loads(meta["inputs"])),
        crop_shape_zyx=shape,  # type: ignore[arg-type]
        crop_spacing_mm=float(meta["crop_spacing_mm"]),
        max_timepoints=int(meta["max_timepoints"]),
        ehr_feature_names=tuple(json.loads(meta["ehr_feature_names"])),
    )
    return session, spec


# ---------------------------------------------------------------- DICOM


def parse_nodule(text: str) -> tuple[float, float, float]:
    """``"X,Y,Z"`` world coordinates in mm (DICOM patient LPS, as in annotations.csv)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise PredictionError(f"--nodule must be X,Y,Z in mm, got {text!r}") from exc
    if len(values) != 3 or not all(np.isfinite(values)):
        raise PredictionError(f"--nodule must be three finite numbers X,Y,Z in mm, got {text!r}")
    return values  # type: ignore[return-value]


def parse_date(text: str) -> dt.date:
    """A DICOM ``YYYYMMDD`` or ISO ``YYYY-MM-DD`` date."""
    cleaned = text.strip().replace("-", "")[:8]
    try:
        return dt.datetime.strptime(cleaned, "%Y%m%d").date()
    except ValueError as exc:
        raise PredictionError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def read_scan(
    dicom_dir: Path, patient_id: str, settings: CurationSettings, at: dt.date | None = None
) -> Scan:
    """The CT series to predict on: the patient's study on ``at`` (default: the latest).

    Walks the folder like curation, checks every series with the curation checks, and picks
    within the study the series curation would (thinnest first). Raises PredictionError with
    each series' reason when no series is a usable CT, and when the folder's PatientID is not
    ``patient_id`` (a prediction must never mix two patients).
    """
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise PredictionError(f"DICOM folder not found: {dicom_dir}")
    tree = scan_dicom_tree(dicom_dir)
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
    try:
        return nodule_crop(volume, world_xyz_mm, spec.crop_shape_zyx[0], spec.crop_spacing_mm)
    except ValueError as exc:
        raise PredictionError(f"nodule outside the volume: {exc}") from exc


# ---------------------------------------------------------------- EHR


class _RefuseTorch(importlib.abc.MetaPathFinder):
    """Makes ``import torch`` fail, so an optional torch import elsewhere stays off."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(
                f"torch is not loaded on the predict path ({name})", name=name
            )
        return None


@contextlib.contextmanager
def refuse_torch() -> Iterator[None]:
    """While active, importing torch raises ModuleNotFoundError (unless already imported)."""
    finder = _RefuseTorch()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def age_at_scan_years(birth_reference_day: float, scan_date: dt.date) -> float:
    """Age the way training computed it (``add_age_at_scan``), both dates shifted alike."""
    frame = pd.DataFrame(
        {
            "event_timestamp": [scan_timestamp(scan_date)],
            BIRTH_REFERENCE_DAY: [birth_reference_day],
        }
    )
    return float(add_age_at_scan(frame)[AGE_AT_SCAN].iloc[0])


def _birth_day(raw: dict[str, Any], shift_days: int) -> float:
    """The birth reference day of a feature row: the store's, or from a typed year of birth
    (the real year, shifted here by the patient's shift like the store's); NaN when absent."""
    if _present(raw.get(BIRTH_REFERENCE_DAY)):
        return float(raw[BIRTH_REFERENCE_DAY])
    if _present(raw.get(YEAR_OF_BIRTH)):
        year = pd.Series([int(float(raw[YEAR_OF_BIRTH]))])
        return float(birth_reference_days(year, shift_days).iloc[0])
    return float("nan")


def ehr_vector(
    raw: dict[str, Any],
    names: Sequence[str],
    scan_date: dt.date,
    source: str,
    shift_days: int = 0,
) -> EhrInput:
    """Model-ordered features from a feature row; the missing-value rule of training.

    All features missing: ``available`` False (ehr_mask False, zeros). Some missing: zeros
    for those, with a warning naming them (as ``assemble_examples`` fills NaN with 0).
    ``scan_date`` is the shifted date; ``shift_days`` the patient's shift, used only to place
    a typed ``year_of_birth`` on the same shifted calendar.
    """
    values: dict[str, float] = {}
    for name in names:
        if name == AGE_AT_SCAN and AGE_AT_SCAN not in raw:
            birth = _birth_day(raw, shift_days)
            value = age_at_scan_years(birth, scan_date) if _present(birth) else float("nan")
        else:
            value = float(raw[name]) if _present(raw.get(name)) else float("nan")
        values[name] = value
    missing = [n for n, v in values.items() if np.isnan(v)]
    warnings: list[str] = []
    if len(missing) == len(names):
        return EhrInput({n: 0.0 for n in names}, False, source, warnings)
    if missing:
        warnings.append(f"EHR features missing, set to 0 as in training: {missing}")
    return EhrInput(
        {n: (0.0 if np.isnan(v) else v) for n, v in values.items()}, True, source, warnings
    )


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def open_feature_store(data_dir: Path, repo_dir: Path) -> Any:
    """The Feast store of ``data_dir`` (torch imports refused); PredictionError if none."""
    with refuse_torch():
        from feature_repo.store import feast_dir, has_registry, open_store
    if not has_registry(data_dir):
        raise PredictionError(
            f"no feature store under {feast_dir(data_dir)} (run `lungjepa features`, or pass "
            "--features-json)"
        )
    return open_store(repo_dir, data_dir)


def online_rows(store: Any, patient_pseudonyms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each patient's latest online features (one Feast read for all of them)."""
    with refuse_torch():
        from feature_repo.store import online_feature_rows
    return online_feature_rows(store, list(patient_pseudonyms))


def online_ehr(
    store: Any, patient_pseudonym: str, names: Sequence[str], scan_date: dt.date
) -> EhrInput | None:
    """The patient's latest features from the Feast online store; None when it has no row."""
    row = online_rows(store, [patient_pseudonym])[patient_pseudonym]
    feature_values = {k: v for k, v in row.items() if k != "patient_id"}
    if not any(_present(v) for v in feature_values.values()):
        return None
    unknown = [n for n in names if n != AGE_AT_SCAN and n not in feature_values]
    if unknown:
        raise PredictionError(f"the feature store does not serve the model's features {unknown}")
    return ehr_vector(feature_values, names, scan_date, "feast_online")


def json_ehr(path: Path, names: Sequence[str], scan_date: dt.date, shift_days: int = 0) -> EhrInput:
    """Features from a JSON object {name: value}; age may come as year_of_birth instead."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PredictionError(f"--features-json {path}: {exc}") from exc
    return mapping_ehr(raw, names, scan_date, shift_days, f"--features-json {path}")


def mapping_ehr(
    raw: object, names: Sequence[str], scan_date: dt.date, shift_days: int, where: str
) -> EhrInput:
    """Features given by the caller as {name: value} (``where`` names them in errors)."""
    if not isinstance(raw, dict):
        raise PredictionError(f"{where}: expected an object of name: value")
    needed = [n for n in names if n not in raw and not (n == AGE_AT_SCAN and YEAR_OF_BIRTH in raw)]
    if needed:
        raise PredictionError(f"{where} lacks the model's features {needed}")
    return ehr_vector(raw, names, scan_date, "features_json", shift_days)


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


StoreOpener = Callable[[], Any]
"""Returns the open Feast store; called only when a prediction needs online features."""


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
    request: PredictRequest, session: Any, spec: ModelSpec, store: StoreOpener
) -> dict[str, Any]:
    """``predict`` with the verified session already open and the store behind ``store``."""
    scan = read_scan(request.dicom_dir, request.patient_id, request.curation, request.at)
    key = scan.pseudonym_key
    patient = pseudonymise(request.patient_id, key, "patient")
    crop = crop_nodule(scan.volume, request.nodule_xyz_mm, spec)
    warnings = list(scan.warnings)
    names = spec.ehr_feature_names
    if request.features is not None:
        ehr: EhrInput | None = mapping_ehr(
            request.features, names, scan.scan_date, scan.date_shift_days, "features"
        )
    elif request.features_json is not None:
        ehr = json_ehr(request.features_json, names, scan.scan_date, scan.date_shift_days)
    else:
        ehr = online_ehr(store(), patient, names, scan.scan_date)
    if ehr is None:
        if not request.allow_missing_ehr:
            raise PredictionError(
                f"unknown patient {patient} (pseudonym): no EHR features in the online store; "
                "pass --features-json FILE, or --allow-missing-ehr to predict from imaging alone"
            )
        ehr = EhrInput({n: 0.0 for n in names}, False, "none")
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


# ---------------------------------------------------------------- batch over annotations.csv


@dataclass(frozen=True)
class BatchRequest:
    """`lungjepa predict --annotations CSV --dicom-root DIR`: one prediction per CSV row."""

    annotations_csv: Path | None
    dicom_root: Path
    model_path: Path
    data_dir: Path
    feature_repo_dir: Path
    curation: CurationSettings
    allow_missing_ehr: bool = False
    annotations: tuple[dict[str, Any], ...] | None = None  # inline rows, instead of the CSV


ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")


def _read_annotation_rows(request: BatchRequest) -> pd.DataFrame:
    """The batch's rows, from the CSV or given inline; PredictionError names what is wrong."""
    if request.annotations is not None:
        where = "annotations"
        if not all(isinstance(row, dict) for row in request.annotations):
            raise PredictionError("annotations: expected a list of objects")
        frame = pd.DataFrame(list(request.annotations))
    else:
        where = f"--annotations {request.annotations_csv}"
        try:
            frame = pd.read_csv(request.annotations_csv, dtype={"seriesuid": str})  # type: ignore[arg-type]
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise PredictionError(f"{where}: {exc}") from exc
    missing = [c for c in ANNOTATION_COLUMNS if c not in frame.columns]
    if missing:
        raise PredictionError(f"{where} lacks columns {missing} (LUNA16 format)")
    coords = frame[["coordX", "coordY", "coordZ"]].apply(pd.to_numeric, errors="coerce")
    bad = [int(i) for i in coords.index[~np.isfinite(coords.to_numpy(float)).all(axis=1)]]
    if bad:
        raise PredictionError(f"{where}: rows {bad[:5]} have coordinates that are not numbers")
    return frame.assign(seriesuid=frame["seriesuid"].astype(str))


def predict_batch(request: BatchRequest) -> list[dict[str, Any]]:
    """One result per annotation row (LUNA16 CSV), in row order; a bad row gets ``error``.

    Headers are scanned once, each series is decoded once, the online store is read once for
    all patients, and the model runs on the whole batch.
    """
    session, spec = load_model(request.model_path)
    return predict_batch_loaded(
        request,
        session,
        spec,
        lambda: open_feature_store(request.data_dir, request.feature_repo_dir),
    )


def predict_batch_loaded(
    request: BatchRequest, session: Any, spec: ModelSpec, store: StoreOpener
) -> list[dict[str, Any]]:
    """``predict_batch`` with the verified session already open and the store behind ``store``."""
    frame = _read_annotation_rows(request)
    if not Path(request.dicom_root).is_dir():
        raise PredictionError(f"DICOM folder not found: {request.dicom_root}")
    tree = scan_dicom_tree(Path(request.dicom_root))
    settings = request.curation.for_tree(tree)
    key = settings.pseudonym_key
    volumes: dict[str, tuple[CTVolume, dt.date] | str] = {}
    results: list[dict[str, Any]] = []
    ready: list[tuple[int, np.ndarray, str, dt.date]] = []
    for row, rec in enumerate(frame.itertuples(index=False)):
        uid = str(rec.seriesuid)
        series_id = pseudonymise(uid, key, "series")
        xyz = (float(rec.coordX), float(rec.coordY), float(rec.coordZ))
        results.append({"row": row, "series_id": series_id, "nodule_world_mm": list(xyz)})
        if uid not in volumes:
            volumes[uid] = _batch_volume(tree.series.get(uid), settings)
        loaded = volumes[uid]
        if isinstance(loaded, str):
            results[-1]["error"] = loaded
            continue
        volume, scan_date = loaded
        try:
            crop = crop_nodule(volume, xyz, spec)
        except PredictionError as exc:
            results[-1]["error"] = str(exc)
            continue
        patient = pseudonymise(volume.patient_id_raw, key, "patient")
        results[-1].update({"patient_id": patient, "scan_date": scan_date.isoformat()})
        ready.append((row, crop, patient, scan_date))
    if not ready:
        return results
    online = online_rows(store(), sorted({patient for _, _, patient, _ in ready}))
    batch: list[tuple[np.ndarray, ...]] = []
    rows: list[int] = []
    for row, crop, patient, scan_date in ready:
        raw = {k: v for k, v in online[patient].items() if k != "patient_id"}
        ehr: EhrInput | None = None
        if any(_present(v) for v in raw.values()):
            ehr = ehr_vector(raw, spec.ehr_feature_names, scan_date, "feast_online")
        if ehr is None:
            if not request.allow_missing_ehr:
                results[row]["error"] = f"unknown patient {patient} (pseudonym): no EHR features"
                continue
            ehr = EhrInput({n: 0.0 for n in spec.ehr_feature_names}, False, "none")
            ehr.warnings.append("no EHR features: predicted with ehr_mask False (imaging only)")
        results[row].update({"ehr_mask": ehr.available, "warnings": ehr.warnings})
        batch.append(model_inputs(crop, ehr, spec))
        rows.append(row)
    if batch:
        stacked = tuple(np.concatenate(parts) for parts in zip(*batch, strict=True))
        probabilities = predict_onnx(session, stacked)
        for row, p in zip(rows, probabilities, strict=True):
            results[row]["probability"] = float(p)
            results[row]["model"] = {"name": spec.name, "version": spec.version}
    return results


def _batch_volume(
    headers: list | None, settings: CurationSettings
) -> tuple[CTVolume, dt.date] | str:
    """A decoded series and its (shifted) date, or the reason it cannot be used."""
    if not headers:
        return "series not found under --dicom-root"
    try:
        volume = volume_from_geometry(validate_headers(headers, settings.min_slices))
    except SeriesError as err:
        return f"not a usable CT series: {err.index_reason}"
    if not volume.study_date.strip():
        return "series has no StudyDate"
    shift = date_shift_days(
        volume.patient_id_raw, settings.pseudonym_key, settings.date_shift_max_days
    )
    return volume, shift_date(parse_date(volume.study_date), shift)

"""A prediction service that stays up: verified ONNX sessions and the Feast store kept open.

Why: `lungjepa predict` pays for imports, a sha256 of the model and a fresh Feast store on every
call (6.1 s from the CLI, 211 ms in-process against 2.85 ms for the model call itself). A
clinic's PACS integration asks many times a day, so this object opens each model once (the
same ``load_model`` check: a file whose sha256 is not its card's is refused), opens the store
once, and answers from both until ``production.json`` changes, when it drops its sessions
and opens the new production models on next use. The header pass over a request's folder,
most of a request's time, runs on ``header_workers`` processes it also keeps open
(``serving.headers``).

Plain Python (no web framework, no Dagster, no torch): ``serving.http`` puts HTTP on it and
the tests call it directly. Requests arrive as JSON-like mappings with the fields of
`lungjepa predict`; a field that is missing, of the wrong type or not usable raises
``PredictionError`` naming it, which the HTTP layer answers with a 4xx.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.batch import BatchRequest, predict_batch_loaded
from serving.errors import PredictionError
from serving.features import open_feature_store
from serving.headers import folder_reader, series_map
from serving.model import DEFAULT_MODEL, ModelSpec, load_model, production_model_path
from serving.predict import (
    CurationSettings,
    PredictRequest,
    parse_date,
    parse_nodule,
    predict_loaded,
)

CASE_FIELDS = {
    "dicom_dir": "a folder of the patient's DICOM files, on this machine",
    "nodule_xyz_mm": "[X, Y, Z] world coordinates in mm (or 'X,Y,Z')",
    "patient_id": "the hospital patient id (DICOM PatientID)",
    "at": "optional scan date YYYY-MM-DD (default: the latest study)",
    "diameter_mm": "optional nodule diameter in mm",
    "features": "optional {name: value} EHR features instead of the online store",
    "allow_missing_ehr": "optional bool: predict from imaging alone for an unknown patient",
    "model": "optional production model name (default jepa)",
}
BATCH_FIELDS = {
    "dicom_root": "a folder holding the series, on this machine",
    "annotations": "[{seriesuid, coordX, coordY, coordZ}, ...] (LUNA16 rows)",
    "annotations_csv": "or a LUNA16 annotations.csv path on this machine",
    "allow_missing_ehr": "optional bool",
    "model": "optional production model name (default jepa)",
}


class PathNotAllowed(PredictionError):
    """A request named a folder outside the service's ``allowed_dirs`` (HTTP 403)."""


@dataclass(frozen=True)
class ServiceConfig:
    """Where the production pointer, the feature store and the curation settings live."""

    artifacts_dir: Path
    data_dir: Path
    feature_repo_dir: Path
    curation: CurationSettings
    header_workers: int  # params.yaml serve: processes reading request folders (1 = in-thread)
    allowed_dirs: tuple[Path, ...] = ()  # DICOM folders requests may name; () = any


class PredictionService:
    """Open models and store, reused across requests; reloads when production.json changes.

    Thread-safe: a lock serialises predictions. The machine this targets has two cores, which
    onnxruntime and numpy already use inside one request, and Feast's SQLite online store
    keeps one connection; queueing requests is what a bounded service should do.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._sessions: dict[Path, tuple[Any, ModelSpec]] = {}
        self._store: Any = None
        self._pointer_state: tuple[int, int, int] | None = None
        self.reloads = 0
        self.started = dt.datetime.now(dt.UTC)
        self._read = folder_reader(config.header_workers)
        self._series = series_map(self._read)  # a batch's decode and crops, same workers

    def close(self) -> None:
        """Stop the header workers, if any (a later request starts them again)."""
        close = getattr(self._read, "close", None)
        if close is not None:
            close()

    # ------------------------------------------------------------ state

    @property
    def pointer_path(self) -> Path:
        return Path(self.config.artifacts_dir) / "models" / "production.json"

    def _check_pointer(self) -> None:
        """Drop open sessions when production.json was replaced (promote, rollback, export)."""
        try:
            stat = self.pointer_path.stat()
            state: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            state = None
        if state != self._pointer_state:
            if self._sessions:
                self.reloads += 1
            self._sessions.clear()
            self._pointer_state = state

    def _model(self, name: object) -> tuple[Any, ModelSpec]:
        if name is not None and not isinstance(name, str):
            raise PredictionError(f"model: expected a production model name, got {name!r}")
        if name is not None and (name.endswith(".onnx") or "/" in name):
            raise PredictionError("model: give a production model name, not a path")
        self._check_pointer()
        path = production_model_path(name or DEFAULT_MODEL, self.config.artifacts_dir)
        if path not in self._sessions:
            self._sessions[path] = load_model(path)
        return self._sessions[path]

    def _feature_store(self) -> Any:
        if self._store is None:
            self._store = open_feature_store(self.config.data_dir, self.config.feature_repo_dir)
        return self._store

    def production(self) -> dict[str, Any]:
        """The production pointer's content, or {} when there is none."""
        try:
            return json.loads(self.pointer_path.read_text())
        except FileNotFoundError:
            return {}

    def _open_specs(self) -> list[ModelSpec]:
        """The models open now (a snapshot: read without the prediction lock)."""
        return [spec for _, spec in list(self._sessions.values())]

    def health(self) -> dict[str, Any]:
        """Up, and which production version it answers with (models load on first use).

        Never waits for a running prediction (no lock): ``models_open`` and ``reloads`` are
        as of the last request, since a changed pointer takes effect on the next prediction.
        """
        pointer = self.production()
        return {
            "status": "ok" if pointer else "no production model",
            "production_version": pointer.get("version"),
            "models_open": sorted(spec.name for spec in self._open_specs()),
            "reloads": self.reloads,
            "torch_loaded": "torch" in sys.modules,  # the serving path never loads it
            "header_workers": self.config.header_workers,
            "header_pool_restarts": getattr(self._read, "restarts", 0),
            "up_since": self.started.isoformat(timespec="seconds"),
        }

    def models(self) -> dict[str, Any]:
        """The production pointer and, per open model, what its card and metadata say (no
        lock, like ``health``)."""
        return {
            "production": self.production(),
            "open": {
                spec.name: {
                    "version": spec.version,
                    "encoder_version": spec.encoder_version,
                    "sha256": spec.sha256,
                    "inputs": list(spec.inputs),
                    "crop_shape_zyx": list(spec.crop_shape_zyx),
                    "crop_spacing_mm": spec.crop_spacing_mm,
                    "ehr_feature_names": list(spec.ehr_feature_names),
                }
                for spec in self._open_specs()
            },
        }

    # ------------------------------------------------------------ predictions

    def predict(self, case: Mapping[str, Any]) -> dict[str, Any]:
        """One nodule: the same result as `lungjepa predict` (probability, model, inputs)."""
        with self._lock:
            session, spec = self._model(_mapping(case, "request").get("model"))
            request = self._case_request(case, spec)
            return predict_loaded(request, session, spec, self._feature_store, self._read)

    def predict_batch(self, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One result per annotation row, in order; a row that cannot be predicted has
        ``error`` (as `lungjepa predict --annotations`)."""
        with self._lock:
            batch = _mapping(batch, "request")
            _only(batch, BATCH_FIELDS)
            session, spec = self._model(batch.get("model"))
            rows, csv = batch.get("annotations"), batch.get("annotations_csv")
            if (rows is None) == (csv is None):
                raise PredictionError("give annotations (a list of rows) or annotations_csv")
            if rows is not None and not isinstance(rows, list):
                raise PredictionError("annotations: expected a list of rows")
            request = BatchRequest(
                annotations_csv=self._folder(batch, "annotations_csv") if csv is not None else None,
                annotations=tuple(rows) if rows is not None else None,
                dicom_root=self._folder(batch, "dicom_root"),
                model_path=spec.onnx_path,
                data_dir=self.config.data_dir,
                feature_repo_dir=self.config.feature_repo_dir,
                curation=self.config.curation,
                allow_missing_ehr=_flag(batch, "allow_missing_ehr"),
            )
            return predict_batch_loaded(
                request, session, spec, self._feature_store, self._read, self._series
            )

    def _folder(self, request: Mapping[str, Any], name: str) -> Path:
        """A folder the request names, refused outside ``allowed_dirs`` (when configured)."""
        path = Path(_text(request, name))
        if self.config.allowed_dirs:
            resolved = path.resolve()
            if not any(resolved.is_relative_to(d.resolve()) for d in self.config.allowed_dirs):
                raise PathNotAllowed(f"{name}: not under a folder this service may read")
        return path

    def _case_request(self, case: Mapping[str, Any], spec: ModelSpec) -> PredictRequest:
        _only(case, CASE_FIELDS)
        features = case.get("features")
        if features is not None and not isinstance(features, dict):
            raise PredictionError("features: expected an object of name: value")
        diameter = case.get("diameter_mm")
        if diameter is not None and (
            isinstance(diameter, bool) or not isinstance(diameter, int | float)
        ):
            raise PredictionError(f"diameter_mm: expected a number, got {diameter!r}")
        at = case.get("at")
        if at is not None and not isinstance(at, str):
            raise PredictionError(f"at: expected a date YYYY-MM-DD, got {at!r}")
        return PredictRequest(
            dicom_dir=self._folder(case, "dicom_dir"),
            nodule_xyz_mm=_nodule(case.get("nodule_xyz_mm")),
            patient_id=_text(case, "patient_id"),
            model_path=spec.onnx_path,
            data_dir=self.config.data_dir,
            feature_repo_dir=self.config.feature_repo_dir,
            curation=self.config.curation,
            at=parse_date(at) if at else None,
            diameter_mm=float(diameter) if diameter is not None else None,
            features=features,
            allow_missing_ehr=_flag(case, "allow_missing_ehr"),
        )


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PredictionError(f"{what}: expected a JSON object")
    return value


def _only(request: Mapping[str, Any], fields: Mapping[str, str]) -> None:
    unknown = sorted(set(request) - set(fields))
    if unknown:
        raise PredictionError(f"unknown field(s) {unknown}; known: {sorted(fields)}")


def _text(request: Mapping[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value.strip():
        raise PredictionError(f"{name}: required, a non-empty string")
    return value


def _flag(request: Mapping[str, Any], name: str) -> bool:
    value = request.get(name, False)
    if not isinstance(value, bool):
        raise PredictionError(f"{name}: expected true or false, got {value!r}")
    return value


def _nodule(value: object) -> tuple[float, float, float]:
    if isinstance(value, str):
        return parse_nodule(value)
    if not isinstance(value, list) or len(value) != 3:
        raise PredictionError("nodule_xyz_mm: required, [X, Y, Z] in mm")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
        raise PredictionError(f"nodule_xyz_mm: three numbers, got {value!r}")
    return parse_nodule(",".join(str(float(v)) for v in value))

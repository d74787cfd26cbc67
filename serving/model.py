"""The verified ONNX model: which file production names, and what its metadata says it takes.

The model runs only through ``load_verified_session`` (models/onnx_runtime.py, torch-free),
which refuses a file whose sha256 is not its card's. ``ModelSpec`` is what the `onnx_model`
asset wrote into the metadata: the input names, the crop's shape and spacing, the number of
time points and the EHR features in the order the model takes them; the single case
(``serving.predict``) and the batch (``serving.batch``) build their inputs from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohorts.privacy import key_fingerprint
from models.onnx_runtime import load_verified_session
from serving.errors import PredictionError

DEFAULT_MODEL = "jepa"


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
    # How the training cohorts' ids and dates were made (cohorts/privacy.py), never the key:
    # the fingerprints of the keys they were pseudonymised with, and their date shift.
    # Empty / None for a model exported before these travelled with it.
    key_fingerprints: tuple[str, ...] = ()
    date_shift_max_days: int | None = None

    def key_mismatch(self, key: bytes) -> str | None:
        """Why the feature store cannot know ids pseudonymised with ``key``, or None.

        The store holds the training cohorts' pseudonyms; ids made with another key (another
        installation's, or the private key on data the model's cohorts got the demo key for)
        never match them, so a lookup would only say "unknown patient".
        """
        fingerprint = key_fingerprint(key)
        if not self.key_fingerprints or fingerprint in self.key_fingerprints:
            return None
        return (
            f"this folder's ids are pseudonymised with key {fingerprint}, the model "
            f"{self.version}'s cohorts with {sorted(set(self.key_fingerprints))}, so the feature "
            "store cannot know this patient (use the curation's key: LUNGJEPA_PSEUDONYM_KEY or "
            "LUNGJEPA_KEY_FILE)"
        )


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
        key_fingerprints=tuple(
            sorted({f for f in json.loads(meta.get("key_fingerprints", "{}")).values() if f})
        ),
        date_shift_max_days=(
            int(meta["date_shift_max_days"]) if "date_shift_max_days" in meta else None
        ),
    )
    return session, spec

"""Loading and running an exported ONNX model without torch.

Why a separate module: the predict path (a service, a batch job) should need only
onnxruntime and numpy, and must refuse a model file that is not the one its card
describes. Nothing here imports torch; tests assert that.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

INPUT_FIELDS: tuple[str, ...] = (
    "crops_hu",
    "months_before_latest",
    "scan_mask",
    "ehr",
    "ehr_mask",
)
OUTPUT_NAME = "probability"

_ORT_TO_NUMPY: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(float16)": np.float16,
}


class ModelIntegrityError(ValueError):
    """The ONNX file on disk is not the file its card describes."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_card_path(onnx_path: Path) -> Path:
    """The card next to a model: `artifacts/models/<version>/card.json` (ARCHITECTURE.md)."""
    return Path(onnx_path).parent / "card.json"


def session_options() -> ort.SessionOptions:
    """The options of every session opened here: intra-op threads that sleep when idle.

    Why: by default onnxruntime's worker threads spin for a while after each run, holding a
    core. The prediction service does its other work (the next request's DICOM header pass)
    in worker processes on the same two cores, and measured on the demo case the header
    pass after a model call took 54 ms with spinning and 25 ms without; the model call
    itself costs ~1.5 ms more (5.5 -> 7 ms at batch 1).
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_verified_session(
    onnx_path: Path, card_path: Path | None = None
) -> tuple[ort.InferenceSession, dict[str, Any]]:
    """Open an InferenceSession only if the file's SHA-256 equals the card's.

    Raises ModelIntegrityError on a mismatch (a tampered, truncated or swapped model).
    """
    onnx_path = Path(onnx_path)
    card_path = default_card_path(onnx_path) if card_path is None else Path(card_path)
    card = json.loads(card_path.read_text())
    expected = card.get("sha256")
    if not expected:
        raise ModelIntegrityError(f"card {card_path} has no sha256; refusing {onnx_path}")
    actual = sha256_file(onnx_path)
    if actual != expected:
        raise ModelIntegrityError(
            f"refusing {onnx_path}: sha256 {actual} does not match card {card_path} ({expected})"
        )
    session = ort.InferenceSession(
        str(onnx_path), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    return session, card


def session_feed(session: ort.InferenceSession, inputs: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Map positional arrays to the session's inputs, cast to the declared dtypes.

    Lets callers pass the npz arrays as stored (e.g. crops_hu int16) to a float32 graph.
    """
    declared = session.get_inputs()
    if len(inputs) != len(declared):
        raise ValueError(f"model takes {len(declared)} inputs, got {len(inputs)}")
    feed: dict[str, Any] = {}
    for spec, array in zip(declared, inputs, strict=True):
        dtype = _ORT_TO_NUMPY.get(spec.type)
        if dtype is None:
            raise ValueError(f"input {spec.name} has unsupported type {spec.type}")
        feed[spec.name] = np.ascontiguousarray(np.asarray(array), dtype=dtype)
    return feed


def predict_onnx(session: ort.InferenceSession, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    """Run the model's first output (the malignancy probability per patient)."""
    return np.asarray(session.run(None, session_feed(session, inputs))[0])


def read_onnx_metadata(onnx_path: Path) -> dict[str, str]:
    """The model's metadata_props as a dict (via onnxruntime, so still without torch)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)

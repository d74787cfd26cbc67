"""ONNX export of a diagnostic model, with embedded metadata, a sidecar card and a parity check.

Why: the deployed artifact is the ONNX file, so it must say what it expects (crop shape and
spacing, EHR feature order, versions) inside itself, be verifiable against its card
(sha256), and be shown to compute what the torch model computes (parity).

Works for any nn.Module whose deterministic forward takes the five positional inputs of
INPUT_FIELDS (crops_hu [B,T,S,S,S] f32 HU, months_before_latest [B,T], scan_mask [B,T] bool,
ehr [B,T,F], ehr_mask [B,T] bool) and returns a probability [B].

Exporter choice: TorchScript (`dynamo=False`) first. It handles 5-D inputs, boolean masks
used through torch.where and a symbolic batch axis (`dynamic_axes`) in about 0.1 s without
tracing guards. It is deprecated upstream, so when it fails (or is removed) we fall back to
the torch.export-based exporter (`dynamo=True`, `dynamic_shapes`); the card records which
exporter produced the file.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from cohorts.files import atomic_write_bytes, atomic_write_json
from models.onnx_runtime import (
    INPUT_FIELDS,
    OUTPUT_NAME,
    default_card_path,
    session_feed,
    sha256_file,
)

FIELDS: tuple[str, ...] = INPUT_FIELDS


@dataclass(frozen=True)
class ExportSettings:
    """params.yaml `export`: how the diagnostic models become ONNX files.

    opset: the ONNX operator set the graph is written in (onnxruntime must support it).
    parity_tolerance: the largest |torch - onnxruntime| probability (0-1 scale) an export may
        show on held-out cases and still be published.
    """

    opset: int
    parity_tolerance: float


@dataclass(frozen=True)
class ExportCard:
    """What the sidecar card.json says about an exported ONNX file."""

    onnx_file: str
    sha256: str
    opset: int
    exporter: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    metadata: dict[str, str]
    torch_version: str
    onnx_version: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the card file's content)."""
        return asdict(self)


@dataclass(frozen=True)
class ParityResult:
    """Largest |torch - onnxruntime| over `n_cases` examples, and whether it is within tolerance."""

    max_abs_diff: float
    n_cases: int
    passed: bool
    tolerance: float


def _tensor_spec(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    shape: list[int | str] = ["batch", *list(tensor.shape[1:])]
    return {"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": shape}


def _deterministic_forward(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Eval forward run twice; refuses a model whose inference is random (e.g. JEPA masking)."""
    with torch.no_grad():
        first = model(*inputs)
        second = model(*inputs)
    if not torch.equal(first, second):
        raise ValueError("model forward is not deterministic in eval mode; export inference only")
    if first.ndim != 1 or first.shape[0] != inputs[0].shape[0]:
        raise ValueError(f"model must return one probability per example, got {tuple(first.shape)}")
    return first


def _export_to(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    target: Path,
    opset: int,
    input_names: tuple[str, ...],
    dynamo: bool,
) -> None:
    """One call of torch.onnx.export with the batch axis symbolic, `dynamo` explicit."""
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated on every call; the module
        # docstring explains why we still try it first.
        warnings.simplefilter("ignore", DeprecationWarning)
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                example_inputs,
                str(target),
                dynamo=True,
                opset_version=opset,
                input_names=list(input_names),
                output_names=[OUTPUT_NAME],
                dynamic_shapes=tuple({0: batch} for _ in example_inputs),
                external_data=False,
            )
        else:
            axes = {name: {0: "batch"} for name in (*input_names, OUTPUT_NAME)}
            torch.onnx.export(
                model,
                example_inputs,
                str(target),
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
            )


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    metadata: dict[str, str],
    opset: int,
    input_names: tuple[str, ...] = FIELDS,
    dynamo: bool | None = None,
    card_path: Path | None = None,
) -> ExportCard:
    """Export the eval forward to `path` (atomic) with `metadata` in metadata_props, write the card.

    metadata: string key/values embedded in the model (model and encoder versions, data
    versions, input spec such as crop shape and spacing, EHR feature names in order,
    preprocessing constants). dynamo: False or True forces an exporter; None tries False
    first and falls back to True. The example batch must be >= 2 so no exporter can
    specialise the batch axis to 1. The card goes to `card_path` (default card.json next
    to the model).
    """
    path = Path(path)
    card_path = default_card_path(path) if card_path is None else Path(card_path)
    if len(example_inputs) != len(input_names):
        raise ValueError(f"{len(example_inputs)} example inputs for {len(input_names)} names")
    if example_inputs[0].shape[0] < 2:
        raise ValueError("use an example batch of at least 2 so the batch axis stays dynamic")
    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"ONNX metadata values must be strings (json.dumps them): {bad}")

    was_training = model.training
    model.eval()
    try:
        reference = _deterministic_forward(model, example_inputs)
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "model.onnx"
            attempts = [False, True] if dynamo is None else [dynamo]
            errors: list[str] = []
            last_error: Exception | None = None
            used: bool | None = None
            for choice in attempts:
                try:
                    _export_to(model, example_inputs, target, opset, input_names, choice)
                    used = choice
                    break
                except Exception as exc:  # exporters raise many types; all are reported below
                    errors.append(f"dynamo={choice}: {type(exc).__name__}: {exc}")
                    last_error = exc
            if used is None:
                raise RuntimeError("ONNX export failed: " + " | ".join(errors)) from last_error
            proto = onnx.load(str(target))
    finally:
        model.train(was_training)

    onnx.helper.set_model_props(proto, dict(metadata))
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())

    card = ExportCard(
        onnx_file=path.name,
        sha256=sha256_file(path),
        opset=opset,
        exporter="dynamo" if used else "torchscript",
        inputs=[_tensor_spec(n, t) for n, t in zip(input_names, example_inputs, strict=True)],
        outputs=[
            {
                "name": OUTPUT_NAME,
                "dtype": str(reference.dtype).removeprefix("torch."),
                "shape": ["batch"],
            }
        ],
        metadata=dict(metadata),
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
    )
    atomic_write_json(card_path, card.to_dict())
    return card


def verify_parity(
    model: nn.Module,
    onnx_path: Path,
    inputs: tuple[np.ndarray, ...],
    tolerance: float,
) -> ParityResult:
    """Compare torch (eval, no grad) with onnxruntime on the same inputs.

    Inputs are cast to the ONNX graph's declared dtypes first (so int16 HU crops from the
    npz work) and the same cast arrays feed both runtimes.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = session_feed(session, inputs)
    onnx_out = np.asarray(session.run(None, feed)[0], dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch_out = model(*(torch.from_numpy(a) for a in feed.values()))
    finally:
        model.train(was_training)
    torch_np = torch_out.detach().cpu().numpy().astype(np.float64)
    if torch_np.shape != onnx_out.shape:
        raise ValueError(f"output shapes differ: torch {torch_np.shape}, onnx {onnx_out.shape}")
    max_diff = float(np.max(np.abs(torch_np - onnx_out))) if torch_np.size else 0.0
    return ParityResult(
        max_abs_diff=max_diff,
        n_cases=int(torch_np.shape[0]),
        passed=bool(np.isfinite(max_diff) and max_diff <= tolerance),
        tolerance=tolerance,
    )


def update_card(card_path: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Merge JSON-ready `extra` (parity, metrics) into a card's "extra" block, atomically.

    The sha256 and model fields are left alone, so the card still verifies the same file.
    """
    card = json.loads(Path(card_path).read_text())
    card.setdefault("extra", {}).update(extra)
    atomic_write_json(Path(card_path), card)
    return card


def record_parity(card_path: Path, parity: ParityResult) -> dict[str, Any]:
    """Add the parity result to an existing card (atomic rewrite); returns the new card."""
    return update_card(card_path, {"parity": asdict(parity)})

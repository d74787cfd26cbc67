"""What names a pretraining run: the encoder version, and what a checkpoint must match to resume.

The version is a short sha256 of the code that defines an encoder, the data, the params and
the encoder sizes; it is known before training, so a killed run resumes in the same folder
(artifacts/encoders/<version>/), and a warm start's source encoder enters it by sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohorts.example_set import ExampleSet
from models.jepa.config import PretrainConfig, encoder_config_for

CODE_FILES: tuple[str, ...] = ("data.py", "encoders.py", "schedules.py")
"""Files outside models/jepa whose source defines what a pretrained encoder is."""


def code_version() -> str:
    """sha256 of the source that defines what a pretrained encoder is (models/jepa + encoder, data)."""
    models_dir = Path(__file__).resolve().parent.parent
    files = sorted(Path(__file__).resolve().parent.glob("*.py"))
    files += [models_dir / name for name in CODE_FILES]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def data_hash(examples: ExampleSet) -> str:
    """sha256 over every array of the example set (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for f in dataclasses.fields(examples):
        arr = np.ascontiguousarray(getattr(examples, f.name))
        digest.update(f"{f.name}:{arr.dtype.str}:{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def weights_digest(*modules: torch.nn.Module) -> str:
    """sha256 of the modules' state dicts (bitwise: equal digests mean identical weights)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (an encoder a run warm-starts from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_version(
    examples: ExampleSet,
    config: PretrainConfig,
    data: str | None = None,
    world_size: int = 1,
    init_encoder: Path | None = None,
) -> str:
    """Short sha256 of code version + data hash + params (+ the encoder sizes they imply).

    Known before training, so a caller can train straight into artifacts/encoders/<version>/
    (and a rerun of the same inputs resumes there). data: a precomputed `data_hash`.
    world_size: DDP ranks; they change per-rank batches and sampling, so the weights, hence
    the version (single-process versions hash as before: the key is only added above 1).
    init_encoder: the encoder.safetensors a warm start begins from; its sha256 enters the
    version (a cold start hashes as before).
    """
    fields: dict[str, Any] = {
        "code": code_version(),
        "data": data or data_hash(examples),
        "params": run_params(config),
        "encoder": encoder_config_for(examples, config).to_dict(),
    }
    if world_size != 1:
        fields["world_size"] = world_size
    if init_encoder is not None:
        fields["init_encoder"] = file_sha256(init_encoder)
    source = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def run_params(config: PretrainConfig) -> dict[str, Any]:
    """Params that define the result; device and compile are how it runs, not what it is."""
    return {k: v for k, v in config.to_dict().items() if k not in ("device", "compile")}


def resume_fingerprint(
    config: PretrainConfig, data: str, world_size: int, init: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What must match for a checkpoint to be resumable into this run."""
    fingerprint = {"params": run_params(config), "data_hash": data, "world_size": world_size}
    if init is not None:
        fingerprint["init_encoder"] = init["sha256"]
    return fingerprint

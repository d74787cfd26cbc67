"""Weights on disk: safetensors with one JSON header, so files are byte-reproducible.

safetensors keeps string metadata in a map whose order changes from process to process;
several keys would make the same weights hash differently on every run (and every DVC
reproduction look like a change). One key holding sorted JSON keeps the bytes stable.
No pickle anywhere: tensors and JSON only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cohorts.files import atomic_output

HEADER_KEY = "lungjepa"


def save_weights(state: dict[str, torch.Tensor], path: Path, header: dict[str, Any]) -> None:
    """Atomically write tensors and a JSON-serialisable header to ``path``."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {HEADER_KEY: json.dumps(header, sort_keys=True)}
    with atomic_output(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_header(path: Path) -> dict[str, Any]:
    """The header save_weights stored (empty when the file has none)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return json.loads(metadata.get(HEADER_KEY, "{}"))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))

"""Atomic checkpoints: a crash mid-write never leaves a truncated file where a good one was."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohorts.files import atomic_output


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save the state dict atomically (temp file, fsync, os.replace)."""
    with atomic_output(Path(path)) as tmp, tmp.open("wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at path, or None when there is none yet (fresh start).

    Loaded with weights_only=True: tensors and plain containers only, no pickled code.
    """
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain values (weights_only-safe),
    so a resumed run draws what it would have."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

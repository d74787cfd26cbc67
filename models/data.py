"""Torch views of the training examples (the contract itself is ``cohorts.example_set``).

Models take HU and raw EHR features; nothing here normalises the stored data, so the exported
model carries its own constants (``ehr_normalisation`` is fitted on a training split and
stored in the model).
"""

from __future__ import annotations

import numpy as np
import torch

from cohorts.example_set import FIELDS, ExampleSet


def example_tensors(examples: ExampleSet) -> dict[str, torch.Tensor]:
    """Torch views of the model inputs (FIELDS) plus `label` and `diameter_mm`.

    crops_hu stays int16 (the model casts and windows it inside); no copy is made.
    """
    out = {name: torch.from_numpy(np.ascontiguousarray(getattr(examples, name))) for name in FIELDS}
    out["label"] = torch.from_numpy(np.ascontiguousarray(examples.label))
    out["diameter_mm"] = torch.from_numpy(np.ascontiguousarray(examples.diameter_mm))
    return out


def ehr_normalisation(examples: ExampleSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std [F] (raw units) over time points with EHR available, finite values only.

    Features never observed get mean 0, std 1. Fitted on a training split and stored in the model.
    """
    available = examples.scan_mask & examples.ehr_mask
    values = examples.ehr[available].astype(np.float64)  # [M, F]
    values = np.where(np.isfinite(values), values, np.nan)
    mean = np.zeros(examples.n_ehr_features)
    std = np.ones(examples.n_ehr_features)
    if values.shape[0]:
        counts = np.isfinite(values).sum(axis=0)
        seen = counts > 0
        mean[seen] = np.nanmean(values[:, seen], axis=0)
        std[seen] = np.nanstd(values[:, seen], axis=0)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

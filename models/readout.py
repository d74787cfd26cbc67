"""Where a model reads the nodule from: the latest scan's tokens, its centre patches, attention.

Why: the index nodule (~5-15 mm) sits in the centre of its crop, inside the centre patch(es)
of the patch grid, while the other patches hold lung, vessels and chest wall. A mean over
all of the latest scan's tokens dilutes it about 1:26 (3x3x3 grid) and loses its size;
reading the centre patch keeps it, and a learned attention query over the rest adds the
context (neighbouring patches of a large nodule, EHR tokens) the model finds useful.

Shapes: B patients, N tokens, D width, T time points, P patches per scan.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.encoders import IMAGE, MASK_BIAS, MultimodalEncoder

READOUTS: tuple[str, ...] = ("mean", "centre", "attention", "centre_attention", "growth_attention")
"""mean: mean of the latest scan's readable tokens (the lung-cplp readout, the old default);
centre: mean of its centre image patch(es); attention: a learned-query attention pool over
its readable tokens; centre_attention: centre and attention pool side by side (2D wide);
growth_attention: centre_attention plus the change of the centre token since the patient's
earliest scan (zero with one scan): growth is what separates malignant nodules over time."""


def latest_timepoint(scan_mask: torch.Tensor) -> torch.Tensor:
    """Index of each patient's latest present scan: scan_mask [B, T] bool -> [B] long (0 if none)."""
    t = scan_mask.shape[1]
    present = scan_mask.bool().flip(1).long()
    return (t - 1) - present.argmax(dim=1)


def centre_patches(patch_grid: tuple[int, int, int]) -> torch.Tensor:
    """[P] bool: the patch(es) holding the crop centre (1 for an odd grid, 2 per even axis)."""
    axes = []
    for g in patch_grid:
        index = torch.arange(g)
        axes.append((index == (g - 1) // 2) | (index == g // 2))
    z, y, x = axes
    return (z[:, None, None] & y[None, :, None] & x[None, None, :]).reshape(-1)


def earliest_timepoint(scan_mask: torch.Tensor) -> torch.Tensor:
    """Index of each patient's earliest present scan: scan_mask [B, T] bool -> [B] long (0 if none)."""
    return scan_mask.bool().long().argmax(dim=1)


def latest_scan_tokens(
    encoder: MultimodalEncoder, scan_mask: torch.Tensor, ehr_mask: torch.Tensor
) -> torch.Tensor:
    """[B, N] bool: valid tokens of each patient's latest present scan (image and EHR)."""
    latest = latest_timepoint(scan_mask)
    valid = encoder.valid_tokens(scan_mask, ehr_mask)
    return valid & (encoder.token_time_index[None, :] == latest[:, None])


def centre_token_mask(encoder: MultimodalEncoder) -> torch.Tensor:
    """[N] bool: image tokens at a centre patch, any time point."""
    centre = centre_patches(encoder.config.patch_grid).to(encoder.token_patch_index.device)
    return (encoder.token_modality == IMAGE) & centre[encoder.token_patch_index]


def masked_mean(tokens: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """Mean of tokens [B, N, D] over select [B, N] bool -> [B, D] (zeros where none)."""
    weights = select.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class AttentionPool(nn.Module):
    """One learned query attends over the selected tokens: [B, N, D], [B, N] -> [B, D].

    Multi-head (heads | D); keys and values are linear maps of the LayerNormed tokens. A row
    with nothing selected attends uniformly (MASK_BIAS keeps it finite; callers mask it out).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.query = nn.Parameter(torch.zeros(dim))
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        h = self.heads
        x = self.norm(tokens)
        keys = self.key(x).reshape(b, n, h, d // h)  # [B, N, H, d]
        values = self.value(x).reshape(b, n, h, d // h)
        query = self.query.reshape(1, 1, h, d // h)
        scores = (keys * query).sum(-1) * self.scale  # [B, N, H]
        zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
        bias = torch.where(select, zero, torch.full_like(zero, MASK_BIAS)).unsqueeze(-1)
        weights = torch.softmax(scores + bias, dim=1)
        return (weights.unsqueeze(-1) * values).sum(dim=1).reshape(b, d)


def readout_width(readout: str, dim: int) -> int:
    """Width of the pooled feature a readout hands to the head."""
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    return {"centre_attention": 2 * dim, "growth_attention": 3 * dim}.get(readout, dim)

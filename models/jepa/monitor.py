"""Representation-collapse statistics: per-dimension std and effective rank of embeddings.

A JEPA can collapse to a constant embedding (zero loss, no information); these numbers, logged
every epoch, make that visible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class CollapseStats:
    """Summary of one set of embeddings [M, D]."""

    std_mean: float
    std_min: float
    effective_rank: float
    n_embeddings: int
    collapsed: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Per-dimension std over embeddings [M, D] -> [D] (I-JEPA/VICReg collapse signal)."""
    return embeddings.float().std(dim=0, unbiased=embeddings.shape[0] > 1)


def effective_rank(embeddings: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred embeddings [M, D] (RankMe).

    1 for a single direction (or constant embeddings), up to min(M, D) for isotropic ones.
    """
    x = embeddings.float()
    x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if total <= torch.finfo(s.dtype).eps * max(1, s.numel()):
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def is_collapsed(std: torch.Tensor, threshold: float = 1e-3) -> bool:
    """True when the mean per-dimension std is below threshold (all inputs map to ~one point)."""
    return bool(std.float().mean() < threshold)


def collapse_stats(embeddings: torch.Tensor, threshold: float = 1e-3) -> CollapseStats:
    """All collapse numbers for embeddings [M, D]."""
    std = embedding_std(embeddings)
    return CollapseStats(
        std_mean=float(std.mean()),
        std_min=float(std.min()),
        effective_rank=effective_rank(embeddings),
        n_embeddings=int(embeddings.shape[0]),
        collapsed=is_collapsed(std, threshold),
    )

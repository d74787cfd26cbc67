"""JEPA regression loss on masked target tokens only, with I-JEPA's layer-normalised targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES: tuple[str, ...] = ("smooth_l1", "l2")


@torch.no_grad()
def normalise_targets(target_tokens: torch.Tensor) -> torch.Tensor:
    """LayerNorm over features (no affine) and stop-gradient; [B, N, D] -> [B, N, D] float32."""
    tokens = target_tokens.float()
    return F.layer_norm(tokens, (tokens.shape[-1],)).detach()


def jepa_loss(
    predicted: torch.Tensor,
    targets: torch.Tensor,
    target_mask: torch.Tensor,
    kind: str = "smooth_l1",
) -> torch.Tensor:
    """Mean over target tokens and features of smooth L1 (or L2) between predicted and targets.

    predicted, targets: [B, N, D]; target_mask: [B, N] bool. Predictions at non-target positions
    never enter the loss, so only the masked tokens teach the predictor.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    if not bool(target_mask.any()):
        raise ValueError("target_mask selects no tokens")
    pred = predicted[target_mask].float()  # [M, D]
    tgt = targets[target_mask].float().detach()  # [M, D]
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, tgt)
    return F.mse_loss(pred, tgt)

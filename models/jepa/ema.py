"""EMA target encoder: the slowly moving copy that produces JEPA targets (never trained by SGD)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from models.schedules import linear


def momentum_at(step: int, total_steps: int, momentum: tuple[float, float]) -> float:
    """EMA momentum, linear from momentum[0] at step 0 to momentum[1] at total_steps (I-JEPA)."""
    return float(linear(step, total_steps, momentum[0], momentum[1]))


def make_target_encoder(encoder: nn.Module) -> nn.Module:
    """A frozen deep copy of the context encoder: requires_grad False, so no gradient reaches it."""
    target = copy.deepcopy(encoder)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- m * target + (1 - m) * online for parameters; buffers (e.g. normalisation
    constants) are copied, since averaging them has no meaning."""
    target_params = dict(target.named_parameters())
    for name, param in online.named_parameters():
        target_params[name].mul_(momentum).add_(
            param.detach().to(target_params[name].dtype), alpha=1.0 - momentum
        )
    target_buffers = dict(target.named_buffers())
    for name, buffer in online.named_buffers():
        target_buffers[name].copy_(buffer)

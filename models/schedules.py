"""Per-step schedules (learning rate, weight decay, EMA momentum) and AdamW parameter groups.

Shared by supervised finetuning and JEPA pretraining, so both follow the lab's recipe:
AdamW (0.9, 0.95), linear warm-up then cosine decay, no weight decay on biases, norms and
embedding tables. Schedules are pure functions of the step so a resumed run recomputes them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ADAMW_BETAS: tuple[float, float] = (0.9, 0.95)


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    peak: float,
    start: float = 0.0,
    final: float = 0.0,
) -> float:
    """Value at `step`: linear `start` -> `peak` over `warmup_steps`, then cosine `peak` -> `final`.

    Steps past `total_steps` stay at `final`; warmup_steps >= total_steps gives pure warm-up.
    """
    if total_steps <= 0:
        raise ValueError("warmup_cosine: total_steps must be positive")
    if step < warmup_steps:
        return start + (peak - start) * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def cosine(step: int, total_steps: int, start: float, final: float) -> float:
    """Half-cosine from `start` (step 0) to `final` (step >= total_steps), e.g. weight decay 0.04 -> 0.2."""
    progress = min(max(step, 0) / max(total_steps, 1), 1.0)
    return final + 0.5 * (start - final) * (1.0 + math.cos(math.pi * progress))


def linear(step: int, total_steps: int, start: float, final: float) -> float:
    """Straight line from `start` to `final`, clamped at the ends, e.g. EMA momentum 0.996 -> 1.0."""
    progress = min(max(step, 0) / max(total_steps, 1), 1.0)
    return start + (final - start) * progress


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm scales (1-d) and bare embedding tables / tokens (`*_embedding`, `*_token`) skip decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf.endswith(("embedding", "token"))


def param_groups(
    module: nn.Module, weight_decay: float, lr_scale: float = 1.0, prefix: str = ""
) -> list[dict]:
    """AdamW groups for the trainable parameters of `module`: decayed and not decayed.

    Each group carries `lr_scale` (multiplied into every scheduled lr by `apply_lr`) and
    `decay` (whether `apply_weight_decay` may change its weight decay). Empty groups are
    dropped so the optimiser never sees them.
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters(prefix=prefix):
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale, "decay": True},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale, "decay": False},
    ]
    return [g for g in groups if g["params"]]


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to `lr * group['lr_scale']` (scale 1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def apply_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Set weight decay on groups marked `decay` (biases/norms stay at 0)."""
    for group in optimizer.param_groups:
        if group.get("decay", True):
            group["weight_decay"] = weight_decay

"""EMA target encoder: the slowly moving copy that produces JEPA targets (never trained by SGD)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from models.schedules import linear


def momentum_at(step: int, total_steps: int, momentum: tuple[float, float]) -> float:
    """EMA momentum, linear from momentum[0] at step 0 to momentum[1] at total_steps (I-JEPA)."""
    return float(linear(step, total_steps, momentum[0], momentum[1]))


def scaled_momentum(
    total_steps: int, momentum: tuple[float, float], init_weight: float
) -> tuple[float, float]:
    """(start, end) momentum whose linear ramp leaves at most `init_weight` of the random init.

    The target after T steps holds prod_t m_t of its initial weights; for a linear ramp that is
    about exp(-T * ((1 - m0) + (1 - m1)) / 2). I-JEPA's 0.996 -> 1.0 over ~10^5 steps leaves
    e^-200; over a few hundred steps it leaves ~30%, a target half-way between its random init
    and the trained encoder. The start is lowered (never raised) until the init's share is
    `init_weight`; with init_weight <= 0 the schedule is returned unchanged.
    """
    m0, m1 = float(momentum[0]), float(momentum[1])
    if init_weight <= 0 or total_steps < 1:
        return m0, m1
    needed = 2.0 * -math.log(init_weight) / total_steps - (1.0 - m1)
    return min(m0, 1.0 - max(0.0, needed)), m1


def init_weight_left(total_steps: int, momentum: tuple[float, float]) -> float:
    """prod over the run's steps of the momentum used: the random init's share in the target."""
    log_sum = sum(
        math.log(max(momentum_at(s, total_steps, momentum), 1e-12)) for s in range(total_steps)
    )
    return float(math.exp(log_sum))


@torch.no_grad()
def relative_distances(target: nn.Module, online: nn.Module, init: nn.Module) -> dict[str, float]:
    """||target - init|| and ||target - online||, each over ||online - init|| (all parameters).

    Near 1 and 0: the target has left its random init and tracks the trained encoder; near 0
    and 1: the exported encoder is still mostly its initialisation.
    """

    def flat(module: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().float().reshape(-1).cpu() for p in module.parameters()])

    t, o, i = flat(target), flat(online), flat(init)
    scale = float(torch.linalg.vector_norm(o - i)) or 1.0
    return {
        "target_to_init": float(torch.linalg.vector_norm(t - i)) / scale,
        "target_to_online": float(torch.linalg.vector_norm(t - o)) / scale,
    }


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

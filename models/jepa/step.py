"""One JEPA training step, and the modules it updates: the loop and the benchmark both call it.

Why a module of its own: the pretraining loop (models/jepa/pretrain.py) adds sampling,
resume, checkpoints and monitoring around the step; the throughput benchmark
(benchmarks/jepa.py) times the step alone. Both must time and train the same thing, with the
same schedules, masks, loss, clipping and EMA update, so the step lives here once.

A step: learning rate and weight decay from their schedules -> context and target masks for
this step (deterministic in step and rank) -> EMA target encoder on the full input
(stop-gradient, normalised) -> context encoder + predictor on the context -> loss on the
target tokens -> AdamW step (gradient clipped) -> EMA update of the target encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from models.encoders import MultimodalEncoder
from models.jepa.ema import ema_update, make_target_encoder, momentum_at, scaled_momentum
from models.jepa.loss import jepa_loss, normalise_targets
from models.jepa.masks import MultimodalMaskGenerator
from models.jepa.model import MultimodalJEPA
from models.jepa.predictor import JEPAPredictor
from models.schedules import ADAMW_BETAS, apply_lr, apply_weight_decay, cosine, param_groups
from models.schedules import warmup_cosine as lr_at

if TYPE_CHECKING:
    from models.jepa.config import PretrainConfig


@dataclass
class Training:
    """What a step reads and updates.

    encoder: the online (context) encoder, inside ``model``; target: its EMA copy; step_module:
    ``model`` or its DistributedDataParallel / torch.compile wrapper, the module the step calls.
    """

    encoder: MultimodalEncoder
    model: MultimodalJEPA
    target: MultimodalEncoder
    optimizer: torch.optim.Optimizer
    masks: MultimodalMaskGenerator
    step_module: torch.nn.Module


@dataclass(frozen=True)
class Schedule:
    """The run's length in steps and its EMA momentum per step (``scaled_momentum``)."""

    total_steps: int
    warmup_steps: int
    ema: tuple[float, float]

    @classmethod
    def for_run(cls, config: PretrainConfig, steps_per_epoch: int) -> Schedule:
        total = config.epochs * steps_per_epoch
        momentum = scaled_momentum(total, config.ema_momentum, config.ema_init_weight)
        return cls(total, config.warmup_epochs * steps_per_epoch, tuple(momentum))  # type: ignore[arg-type]


@dataclass(frozen=True)
class StepOutput:
    """The step's loss and the schedule values it used."""

    loss: float
    lr: float
    weight_decay: float
    momentum: float


def new_training(
    encoder: MultimodalEncoder, config: PretrainConfig, device: torch.device
) -> Training:
    """Predictor, target copy, optimizer and masks around ``encoder``, in the loop's order (the
    seeded weights of a run depend on it)."""
    predictor = JEPAPredictor(
        config.embed_dim, config.predictor_dim, config.predictor_depth, config.heads
    )
    model = MultimodalJEPA(encoder, predictor).to(device)
    target = make_target_encoder(encoder).to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay[0]), lr=config.lr, betas=ADAMW_BETAS
    )
    masks = MultimodalMaskGenerator.from_layout(encoder.layout, config.mask_config())
    return Training(encoder, model, target, optimizer, masks, model)


def train_step(
    training: Training,
    batch: list[torch.Tensor],
    step: int,
    schedule: Schedule,
    config: PretrainConfig,
    rank: int = 0,
) -> StepOutput:
    """One optimisation step on ``batch`` (the examples' FIELDS, on the device); bf16
    autocast on CUDA. A batch with no maskable sample takes a zero step (DDP lockstep)."""
    device = batch[0].device
    lr = lr_at(step, schedule.total_steps, schedule.warmup_steps, config.lr, 0.0, config.final_lr)
    wd = cosine(step, schedule.total_steps, *config.weight_decay)
    apply_lr(training.optimizer, lr)
    apply_weight_decay(training.optimizer, wd)
    valid = training.encoder.valid_tokens(batch[2], batch[4])
    context, target_mask = training.masks(valid, step, rank)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        with torch.no_grad():
            targets = normalise_targets(training.target(*batch))  # [B, N, D], stop-gradient
        predicted = training.step_module(*batch, context, target_mask)
    if target_mask.any():
        loss = jepa_loss(predicted.float(), targets, target_mask, config.loss)
    else:  # every sample too small to mask: a zero step keeps DDP ranks in lockstep
        loss = predicted.float().sum() * 0.0
    training.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(training.model.parameters(), config.grad_clip)
    training.optimizer.step()
    momentum = momentum_at(step, schedule.total_steps, schedule.ema)
    ema_update(training.target, training.encoder, momentum)
    return StepOutput(float(loss.detach()), lr, wd, momentum)

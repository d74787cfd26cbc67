"""Multimodal JEPA pretraining loop (its torchrun CLI: models/jepa/cli.py).

    python -m models.jepa.cli --examples data/examples/archive.npz --out DIR [flags]
    torchrun --nproc_per_node 2 -m models.jepa.cli --examples X.npz --out DIR

One step: draw context/target masks (deterministic in seed, step, rank) -> target encoder on
the full input, layer-normalised, stop-gradient -> context encoder on the context tokens ->
predictor at the target tokens -> smooth L1 on targets only -> AdamW step (cosine LR with
warm-up, cosine weight-decay schedule, gradient clipping) -> EMA update of the target encoder.

Fault tolerance: rank 0 writes out_dir/checkpoint.pt atomically every `checkpoint_every_steps`
steps; a rerun with the same out_dir resumes from it (same weights, optimiser, RNG, data
order and masks as an uninterrupted run). The artifact is the target encoder (as in I-JEPA):
out_dir/encoder.safetensors + out_dir/card.json.

The knobs are models/jepa/config.py, the single step step.py, the version versioning.py,
the curves curves.py and the command line cli.py.

Size: about 440 lines because ``_pretrain`` keeps the loop with resume, DDP and the card in
one function, so the order of a step and its checkpoint stays visible in one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from cohorts.example_set import FIELDS, ExampleSet
from cohorts.files import atomic_write_text
from models.data import example_tensors
from models.encoders import MultimodalEncoder, load_encoder, save_encoder
from models.jepa.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from models.jepa.config import PretrainConfig, build_encoder
from models.jepa.curves import write_curves
from models.jepa.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from models.jepa.ema import (
    init_weight_left,
    relative_distances,
)
from models.jepa.monitor import collapse_stats
from models.jepa.probe import check_probe_set, diameter_probe_r2, linear_probe_auc
from models.jepa.step import Schedule, new_training, train_step
from models.jepa.versioning import (
    artifact_version,
    code_version,
    data_hash,
    file_sha256,
    resume_fingerprint,
    weights_digest,
)
from models.weights import read_header


@dataclass(frozen=True)
class PretrainResult:
    """What a finished pretraining run produced (paths on rank 0; numbers on every rank)."""

    out_dir: Path
    encoder_path: Path
    card_path: Path
    version: str
    steps: int
    final_loss: float
    samples_per_s: float
    monitor: dict[str, Any]
    probe: dict[str, float] | None
    resumed_from_step: int | None
    weights_digest: str
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no history); what the CLI prints as its last stdout line."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "history"}
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> PretrainResult:
        """The result a torchrun child reported (`summary()`), without the per-epoch history."""
        paths = {"out_dir", "encoder_path", "card_path"}
        names = {f.name for f in dataclasses.fields(cls)} - {"history"}
        missing = sorted(names - set(summary))
        if missing:
            raise ValueError(f"pretraining summary lacks {missing}")
        return cls(**{k: Path(summary[k]) if k in paths else summary[k] for k in names})


@torch.no_grad()
def monitor_target(
    target: MultimodalEncoder,
    tensors: dict[str, torch.Tensor],
    n_examples: int,
    device: torch.device,
    threshold: float,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Collapse statistics of the target encoder's valid tokens on the first n_examples."""
    was_training = target.training
    target.eval()
    chunks: list[torch.Tensor] = []
    n = min(n_examples, tensors["scan_mask"].shape[0])
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = [tensors[k][start:stop].to(device) for k in FIELDS]
        tokens = target(*batch).float()
        valid = target.valid_tokens(batch[2], batch[4])
        chunks.append(tokens[valid].cpu())
    target.train(was_training)
    embeddings = torch.cat(chunks)
    if embeddings.shape[0] > 4096:  # fixed subsample: the SVD stays cheap
        pick = torch.randperm(embeddings.shape[0], generator=torch.Generator().manual_seed(0))
        embeddings = embeddings[pick[:4096]]
    return collapse_stats(embeddings, threshold).to_dict()


def warm_start(encoder: MultimodalEncoder, path: Path) -> dict[str, Any]:
    """Load the weights of the encoder at ``path`` into ``encoder``; what the card records.

    The encoder sizes must match (the run's params and data shapes decide them); the EHR
    normalisation comes with the weights, since they were learned with it. The predictor is
    not in an encoder file and starts afresh.
    """
    start = load_encoder(path)
    if start.config != encoder.config:
        ours = encoder.config.to_dict()
        differ = {
            k: (v, ours.get(k)) for k, v in start.config.to_dict().items() if ours.get(k) != v
        }
        raise ValueError(
            f"cannot warm-start from {path}: its encoder sizes differ from this run's "
            f"(file, run): {differ}"
        )
    encoder.load_state_dict(start.state_dict(), strict=True)
    header = read_header(Path(path))  # the card the run that made it saved alongside
    return {
        "path": str(path),
        "sha256": file_sha256(path),
        "encoder_version": header.get("card", {}).get("version"),
    }


def pretrain(
    examples: ExampleSet,
    out_dir: Path,
    config: PretrainConfig | None = None,
    progress: bool = True,
    probe_sets: tuple[ExampleSet, ExampleSet] | None = None,
    inputs: Mapping[str, Any] | None = None,
    init_encoder: Path | None = None,
) -> PretrainResult:
    """Pretrain a multimodal JEPA on examples; resume from out_dir/checkpoint.pt if present.

    init_encoder: an encoder.safetensors to warm-start from (online and EMA target encoders
    start from its weights; a retraining from the production encoder); None: random init.

    Runs single-process, or one process per rank under torchrun (DDP). probe_sets =
    (labeled train, labeled test) adds linear-probe AUCs (pretrained vs random encoder) to the
    card. Returns the run summary; rank 0 writes encoder.safetensors, card.json,
    pretrain.csv and pretrain.png into out_dir. inputs: what the card records of where the
    examples came from (the cohort manifests' versions); it does not enter the version.
    """
    config = config or PretrainConfig()
    out_dir = Path(out_dir)
    if probe_sets is not None:  # fail before training, not after it
        check_probe_set(probe_sets[0], "train")
        check_probe_set(probe_sets[1], "test")
    ctx = init_distributed(None if config.device == "auto" else config.device)
    try:
        return _pretrain(
            examples, out_dir, config, progress, probe_sets, ctx, inputs or {}, init_encoder
        )
    finally:
        cleanup_distributed(ctx)


def _pretrain(
    examples: ExampleSet,
    out_dir: Path,
    config: PretrainConfig,
    progress: bool,
    probe_sets: tuple[ExampleSet, ExampleSet] | None,
    ctx: DistContext,
    inputs: Mapping[str, Any] | None = None,
    init_encoder: Path | None = None,
) -> PretrainResult:
    device = ctx.device
    out_dir.mkdir(parents=True, exist_ok=True)
    data = data_hash(examples)

    # identical seeds on every rank -> identical initial weights
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)

    encoder = build_encoder(examples, config)
    init = warm_start(encoder, Path(init_encoder)) if init_encoder is not None else None
    fingerprint = resume_fingerprint(config, data, ctx.world_size, init)
    training = new_training(encoder, config, device)
    model, target, optimizer = training.model, training.target, training.optimizer

    per_rank_batch = max(1, config.batch_size // ctx.world_size)
    sampler = DistributedSampler(
        range(len(examples)),
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=config.seed,
    )
    steps_per_epoch = math.ceil(len(sampler) / per_rank_batch)
    schedule = Schedule.for_run(config, steps_per_epoch)
    total_steps, warmup_steps, ema_schedule = (
        schedule.total_steps,
        schedule.warmup_steps,
        schedule.ema,
    )

    # resume
    step, epoch_loss_sum, epoch_loss_count = 0, 0.0, 0
    train_seconds, samples_seen = 0.0, 0
    history: list[dict[str, Any]] = []
    resumed_from: int | None = None
    checkpoint_path = out_dir / "checkpoint.pt"
    if ctx.is_main:  # temp files of a save that a crash interrupted: never resumable
        for stale in out_dir.glob(f".{checkpoint_path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
    state = load_checkpoint(checkpoint_path)
    if state is not None:
        if state["fingerprint"] != fingerprint:
            raise ValueError(
                f"{checkpoint_path} belongs to another run (params, data or world size differ); "
                "use a fresh out_dir"
            )
        model.load_state_dict(state["model"])
        target.load_state_dict(state["target"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        epoch_loss_sum, epoch_loss_count = state["epoch_loss_sum"], int(state["epoch_loss_count"])
        train_seconds, samples_seen = state["train_seconds"], int(state["samples_seen"])
        history = list(state["history"])
        set_rng_state(state["rng"])
        resumed_from = step
        if ctx.is_main:
            print(f"pretrain: resumed from step {step} of {total_steps}", file=sys.stderr)

    def save(at_step: int) -> None:
        nonlocal epoch_loss_sum
        # every rank folds its partial epoch loss into the global mean (linear, so exact)
        epoch_loss_sum = all_reduce_mean(epoch_loss_sum, ctx)
        if ctx.is_main:
            save_checkpoint(
                checkpoint_path,
                {
                    "fingerprint": fingerprint,
                    "model": model.state_dict(),
                    "target": target.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": at_step,
                    "epoch": at_step // steps_per_epoch,
                    "scheduler": {"total_steps": total_steps, "warmup_steps": warmup_steps},
                    "epoch_loss_sum": epoch_loss_sum,
                    "epoch_loss_count": epoch_loss_count,
                    "train_seconds": train_seconds,
                    "samples_seen": samples_seen,
                    "history": history,
                    "rng": rng_state(),
                },
            )
        barrier(ctx)

    if ctx.is_distributed:
        training.step_module = DistributedDataParallel(
            model, device_ids=[ctx.local_rank] if device.type == "cuda" else None
        )
    if config.compile:
        training.step_module = torch.compile(training.step_module)  # type: ignore[assignment]
    tensors = example_tensors(examples)
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="pretrain",
        unit="step",
        disable=not (progress and ctx.is_main),
        dynamic_ncols=True,
    )
    model.train()
    target.train()
    lr = wd = momentum = 0.0
    for epoch in range(step // steps_per_epoch, config.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long)
        for i in range(step - epoch * steps_per_epoch, steps_per_epoch):
            started = time.perf_counter()
            idx = order[i * per_rank_batch : (i + 1) * per_rank_batch]
            batch = [tensors[k][idx].to(device, non_blocking=True) for k in FIELDS]
            out = train_step(training, batch, step, schedule, config, ctx.rank)
            lr, wd, momentum = out.lr, out.weight_decay, out.momentum
            step += 1
            loss_value = out.loss
            epoch_loss_sum += loss_value
            epoch_loss_count += 1
            train_seconds += time.perf_counter() - started
            samples_seen += int(idx.numel()) * ctx.world_size
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            at_epoch_end = step % steps_per_epoch == 0
            if step % config.checkpoint_every_steps == 0 and not at_epoch_end:
                save(step)
        epoch_loss = all_reduce_mean(epoch_loss_sum / max(epoch_loss_count, 1), ctx)
        stats = (
            monitor_target(
                target, tensors, config.monitor_examples, device, config.collapse_threshold
            )
            if ctx.is_main
            else {}
        )
        if ctx.is_main:
            history.append(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "loss": epoch_loss,
                    "lr": lr,
                    "weight_decay": wd,
                    "ema_momentum": momentum,
                    "target_std_mean": stats["std_mean"],
                    "target_std_min": stats["std_min"],
                    "effective_rank": stats["effective_rank"],
                    "collapsed": stats["collapsed"],
                    "samples_per_s": samples_seen / max(train_seconds, 1e-9),
                }
            )
            write_curves(out_dir, history, plot=False)  # the PNG is drawn once, at the end
            if stats["collapsed"]:
                print(f"pretrain: epoch {epoch + 1}: target embeddings collapsed", file=sys.stderr)
        epoch_loss_sum, epoch_loss_count = 0.0, 0
        if step % config.checkpoint_every_steps == 0 and step < total_steps:
            save(step)  # at an epoch boundary: after its row is in the history
    bar.close()
    if resumed_from is None or resumed_from < total_steps:
        save(step)

    digest = weights_digest(model, target)
    throughput = samples_seen / max(train_seconds, 1e-9)
    monitor = monitor_target(
        target, tensors, config.monitor_examples, device, config.collapse_threshold
    )
    probe: dict[str, float] | None = None
    if probe_sets is not None and ctx.is_main:
        torch.manual_seed(config.seed + 1)
        random_encoder = build_encoder(examples, config).to(device)
        probe = {
            "pretrained_auc": linear_probe_auc(target, *probe_sets, seed=config.seed),
            "random_auc": linear_probe_auc(random_encoder, *probe_sets, seed=config.seed),
            "pretrained_diameter_r2": diameter_probe_r2(target, *probe_sets),
            "random_diameter_r2": diameter_probe_r2(random_encoder, *probe_sets),
            "n_train": int((probe_sets[0].label >= 0).sum()),
            "n_test": int((probe_sets[1].label >= 0).sum()),
        }
    torch.manual_seed(config.seed)  # the exact initial weights of this run (seeded first)
    initial = build_encoder(examples, config).to(device)
    ema_card = {
        "configured_momentum": list(config.ema_momentum),
        "momentum": list(ema_schedule),
        "init_weight_left": init_weight_left(total_steps, ema_schedule),
        **relative_distances(target, encoder, initial),
    }
    encoder_config = target.config.to_dict()
    version = artifact_version(examples, config, data, ctx.world_size, init_encoder)
    losses = [r["loss"] for r in history]
    card = {
        "kind": "lungjepa.encoder",
        "version": version,
        "code_version": code_version(),
        "data_hash": data,
        "inputs": dict(inputs or {}),
        "n_examples": len(examples),
        "params": config.to_dict(),
        "encoder_config": encoder_config,
        "steps": step,
        "epochs": config.epochs,
        "world_size": ctx.world_size,
        "device": device.type,
        "loss": {
            "kind": config.loss,
            "first": losses[0] if losses else None,
            "last": losses[-1] if losses else None,
            "min": min(losses) if losses else None,
            "per_epoch": losses,
        },
        "throughput_samples_per_s": throughput,
        "train_seconds": train_seconds,  # the training loop's time, summed over resumes
        "monitor": monitor,
        "probe": probe,
        "ema": ema_card,
        "weights": "EMA target encoder",
        "init": init or {"kind": "random"},
    }
    encoder_path, card_path = out_dir / "encoder.safetensors", out_dir / "card.json"
    if ctx.is_main:
        write_curves(out_dir, history)
        save_encoder(target, encoder_path, card)
        atomic_write_text(card_path, json.dumps(card, indent=2, sort_keys=True) + "\n")
    barrier(ctx)
    return PretrainResult(
        out_dir=out_dir,
        encoder_path=encoder_path,
        card_path=card_path,
        version=version,
        steps=step,
        final_loss=losses[-1] if losses else float("nan"),
        samples_per_s=throughput,
        monitor=monitor,
        probe=probe,
        resumed_from_step=resumed_from,
        weights_digest=digest,
        history=history,
    )

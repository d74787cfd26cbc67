"""Multimodal JEPA pretraining loop and its torchrun CLI.

    python -m models.jepa.pretrain --examples data/examples/archive.npz --out DIR [flags]
    torchrun --nproc_per_node 2 -m models.jepa.pretrain --examples X.npz --out DIR

One step: draw context/target masks (deterministic in seed, step, rank) -> target encoder on
the full input, layer-normalised, stop-gradient -> context encoder on the context tokens ->
predictor at the target tokens -> smooth L1 on targets only -> AdamW step (cosine LR with
warm-up, cosine weight-decay schedule, gradient clipping) -> EMA update of the target encoder.

Fault tolerance: rank 0 writes out_dir/checkpoint.pt atomically every `checkpoint_every_steps`
steps; a rerun with the same out_dir resumes from it (same weights, optimiser, RNG, data
order and masks as an uninterrupted run). The artifact is the target encoder (as in I-JEPA):
out_dir/encoder.safetensors + out_dir/card.json.

Size: over 450 lines because config, versioning, curves, the loop and the CLI still live
together (the training step is models/jepa/step.py); issue 18 splits the rest by concept
(config, the loop with resume, the card).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from cohorts.files import atomic_write_bytes, atomic_write_text
from models.data import FIELDS, ExampleSet, ehr_normalisation, load_examples
from models.encoders import EncoderConfig, MultimodalEncoder, load_encoder, save_encoder
from models.jepa.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
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
from models.jepa.loss import LOSSES
from models.jepa.masks import MaskConfig
from models.jepa.monitor import collapse_stats
from models.jepa.probe import check_probe_set, diameter_probe_r2, linear_probe_auc
from models.jepa.step import Schedule, new_training, train_step
from models.weights import read_header

CSV_COLUMNS: tuple[str, ...] = (
    "epoch",
    "step",
    "loss",
    "lr",
    "weight_decay",
    "ema_momentum",
    "target_std_mean",
    "target_std_min",
    "effective_rank",
    "collapsed",
    "samples_per_s",
)
CODE_FILES: tuple[str, ...] = ("data.py", "encoders.py", "schedules.py")


@dataclass(frozen=True)
class PretrainConfig:
    """Every pretraining knob. params.yaml `pretrain` sets the first block (its Dagster run
    config is built from this class, orchestration/configs.py); the rest keep I-JEPA's recipe.

    batch_size is global (split evenly over DDP ranks). weight_decay and ema_momentum are
    (start, end) of their schedules. device: "auto" (CUDA if available), "cuda" or "cpu".
    """

    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.0005
    warmup_epochs: int = 3
    weight_decay: tuple[float, float] = (0.04, 0.2)
    ema_momentum: tuple[float, float] = (0.996, 1.0)
    ema_init_weight: float = 0.01
    embed_dim: int = 64
    depth: int = 3
    heads: int = 4
    predictor_dim: int = 32
    predictor_depth: int = 2
    patch_size_vox: int = 8
    patch_stem: str = "linear"
    stem_width: int = 8
    ehr_tokens: int = 4
    loss: str = "smooth_l1"
    checkpoint_every_steps: int = 50
    seed: int = 0
    # not (yet) in params.yaml: I-JEPA defaults
    final_lr: float = 1.0e-6
    grad_clip: float = 1.0
    mask_strategy_weights: tuple[float, float, float] = (0.45, 0.45, 0.1)
    mask_tube: bool = True
    mask_n_target_blocks: int = 4
    mask_block_scale: tuple[float, float] = (0.15, 0.2)
    mask_block_aspect: tuple[float, float] = (0.75, 1.5)
    mask_context_scale: tuple[float, float] = (0.85, 1.0)
    monitor_examples: int = 256
    collapse_threshold: float = 1.0e-3
    device: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"PretrainConfig: loss must be one of {LOSSES}, got {self.loss!r}")
        if min(self.epochs, self.batch_size, self.checkpoint_every_steps) < 1:
            raise ValueError("PretrainConfig: epochs, batch_size, checkpoint_every_steps >= 1")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError("PretrainConfig: device must be auto, cuda or cpu")
        self.mask_config()  # validates the mask knobs

    def mask_config(self) -> MaskConfig:
        """The `MaskConfig` these fields describe."""
        return MaskConfig(
            strategy_weights=self.mask_strategy_weights,
            tube=self.mask_tube,
            n_target_blocks=self.mask_n_target_blocks,
            block_scale=self.mask_block_scale,
            block_aspect=self.mask_block_aspect,
            context_scale=self.mask_context_scale,
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], base: PretrainConfig | None = None
    ) -> PretrainConfig:
        """`base` (defaults) overridden by values, e.g. params.yaml `pretrain`; unknown keys raise."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(names)
        if unknown:
            raise ValueError(f"PretrainConfig: unknown keys {sorted(unknown)}")
        coerced = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()}
        return dataclasses.replace(base or cls(), **coerced)


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


def code_version() -> str:
    """sha256 of the source that defines what a pretrained encoder is (models/jepa + encoder, data)."""
    models_dir = Path(__file__).resolve().parent.parent
    files = sorted(Path(__file__).resolve().parent.glob("*.py"))
    files += [models_dir / name for name in CODE_FILES]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def data_hash(examples: ExampleSet) -> str:
    """sha256 over every array of the example set (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for f in dataclasses.fields(examples):
        arr = np.ascontiguousarray(getattr(examples, f.name))
        digest.update(f"{f.name}:{arr.dtype.str}:{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def weights_digest(*modules: torch.nn.Module) -> str:
    """sha256 of the modules' state dicts (bitwise: equal digests mean identical weights)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (an encoder a run warm-starts from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_version(
    examples: ExampleSet,
    config: PretrainConfig,
    data: str | None = None,
    world_size: int = 1,
    init_encoder: Path | None = None,
) -> str:
    """Short sha256 of code version + data hash + params (+ the encoder sizes they imply).

    Known before training, so a caller can train straight into artifacts/encoders/<version>/
    (and a rerun of the same inputs resumes there). data: a precomputed `data_hash`.
    world_size: DDP ranks; they change per-rank batches and sampling, so the weights, hence
    the version (single-process versions hash as before: the key is only added above 1).
    init_encoder: the encoder.safetensors a warm start begins from; its sha256 enters the
    version (a cold start hashes as before).
    """
    fields: dict[str, Any] = {
        "code": code_version(),
        "data": data or data_hash(examples),
        "params": _run_params(config),
        "encoder": encoder_config_for(examples, config).to_dict(),
    }
    if world_size != 1:
        fields["world_size"] = world_size
    if init_encoder is not None:
        fields["init_encoder"] = file_sha256(init_encoder)
    source = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def encoder_config_for(examples: ExampleSet, config: PretrainConfig) -> EncoderConfig:
    """Encoder sizes: data-given (crop size, time points, EHR width) + config-given."""
    return EncoderConfig(
        n_ehr_features=examples.n_ehr_features,
        crop_size_vox=examples.crop_size_vox,
        patch_size_vox=config.patch_size_vox,
        ehr_tokens=config.ehr_tokens,
        max_timepoints=examples.timepoints,
        embed_dim=config.embed_dim,
        depth=config.depth,
        heads=config.heads,
        patch_stem=config.patch_stem,
        stem_width=config.stem_width,
    )


def build_encoder(examples: ExampleSet, config: PretrainConfig) -> MultimodalEncoder:
    """A freshly initialised encoder carrying the training set's EHR normalisation."""
    encoder = MultimodalEncoder(encoder_config_for(examples, config))
    encoder.set_ehr_normalisation(*ehr_normalisation(examples))
    return encoder


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


def write_curves(out_dir: Path, history: list[dict[str, Any]], plot: bool = True) -> None:
    """pretrain.csv (one row per epoch) and, with plot, pretrain.png (loss, target std, rank)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in CSV_COLUMNS})
    atomic_write_text(out_dir / "pretrain.csv", buffer.getvalue())
    if not plot or not history:
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(
        axes,
        ("loss", "target_std_mean", "effective_rank"),
        ("JEPA loss", "target embedding std (mean over dims)", "effective rank"),
        strict=True,
    ):
        ax.plot(epochs, [r[key] for r in history], marker="o", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out_dir / "pretrain.png", png.getvalue())


def _run_params(config: PretrainConfig) -> dict[str, Any]:
    """Params that define the result; device and compile are how it runs, not what it is."""
    return {k: v for k, v in config.to_dict().items() if k not in ("device", "compile")}


def _fingerprint(
    config: PretrainConfig, data: str, world_size: int, init: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What must match for a checkpoint to be resumable into this run."""
    fingerprint = {"params": _run_params(config), "data_hash": data, "world_size": world_size}
    if init is not None:
        fingerprint["init_encoder"] = init["sha256"]
    return fingerprint


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
    fingerprint = _fingerprint(config, data, ctx.world_size, init)
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
    tensors = examples.tensors()
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.jepa.pretrain", description="Multimodal JEPA pretraining"
    )
    parser.add_argument("--examples", type=Path, required=True, help="examples .npz")
    parser.add_argument("--out", type=Path, required=True, help="output / checkpoint directory")
    parser.add_argument("--params", type=Path, help="params.yaml: its `pretrain` section")
    parser.add_argument("--config", help="JSON object or path to a JSON file (PretrainConfig)")
    parser.add_argument("--probe-train", type=Path, help="labeled examples .npz for the probe")
    parser.add_argument("--probe-test", type=Path, help="labeled examples .npz for the probe")
    parser.add_argument(
        "--inputs", help="JSON object the card records as the examples' provenance (`inputs`)"
    )
    parser.add_argument("--init-encoder", type=Path, help="encoder.safetensors to warm-start from")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--rank-digest",
        action="store_true",
        help="each rank writes OUT/rank_digests/rank<r>.sha256 of its final weights",
    )
    for f in dataclasses.fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, type=_parse_bool, default=None)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, type=float, nargs=len(default), default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=None)
    return parser


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """Defaults < params.yaml `pretrain` < --config JSON < individual flags."""
    config = PretrainConfig()
    if args.params is not None:
        import yaml

        with open(args.params) as handle:
            config = PretrainConfig.from_dict(yaml.safe_load(handle)["pretrain"], config)
    if args.config:
        text = args.config
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        config = PretrainConfig.from_dict(json.loads(text), config)
    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(PretrainConfig)
        if getattr(args, f.name) is not None
    }
    return PretrainConfig.from_dict(flags, config)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (single process or one torchrun rank)."""
    args = _parser().parse_args(argv)
    config = config_from_args(args)
    probe_sets = None
    if (args.probe_train is None) != (args.probe_test is None):
        raise SystemExit("--probe-train and --probe-test go together")
    if args.probe_train is not None:
        probe_sets = (load_examples(args.probe_train), load_examples(args.probe_test))
    result = pretrain(
        load_examples(args.examples),
        args.out,
        config,
        progress=not args.no_progress,
        probe_sets=probe_sets,
        inputs=json.loads(args.inputs) if args.inputs else None,
        init_encoder=args.init_encoder,
    )
    rank = int(os.environ.get("RANK", "0"))
    if args.rank_digest:
        atomic_write_text(args.out / "rank_digests" / f"rank{rank}.sha256", result.weights_digest)
    if rank == 0:
        print(json.dumps(result.summary(), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

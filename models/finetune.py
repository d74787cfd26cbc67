"""Supervised finetuning of the diagnostic model, prediction, patient splits and model files.

Recipe (lab lineage): AdamW (0.9, 0.95), linear warm-up then cosine decay per step, binary
cross-entropy, early stopping on patient-level validation loss (ties broken by validation
AUC) with the best weights restored. EHR normalisation is fitted on the training split
only and stored inside the model, so the exported graph needs no preprocessing code.

A pretrained encoder can be finetuned in two stages (LP-FT, Kumar et al., ICLR 2022,
"Fine-tuning can distort pretrained features"): the head is first trained on the frozen
encoder (`probe_epochs`), then everything end to end from there. A fresh head's large early
gradients otherwise reach the encoder and overwrite what pretraining put there before the
head has learned to read it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from cohorts.example_set import FIELDS, ExampleSet
from cohorts.files import atomic_write_json
from models.data import ehr_normalisation, example_tensors
from models.diagnostic import DiagnosticModel
from models.encoders import EncoderConfig, MultimodalEncoder
from models.schedules import ADAMW_BETAS, apply_lr, param_groups, warmup_cosine
from models.weights import load_weights, read_header, save_weights

MODEL_FORMAT = "lungjepa.diagnostic.v1"


@dataclass(frozen=True)
class FinetuneConfig:
    """Finetuning knobs; mirrors params.yaml `finetune` (epochs, batch_size, lr, weight_decay, patience).

    encoder_lr_scale multiplies the encoder's learning rate (e.g. 0.1 to protect pretrained
    features); freeze_encoder trains the head only (linear probe). probe_epochs > 0 runs
    that probe first (at probe_lr, default lr; its own warm-up, cosine and early stopping),
    then the end-to-end stage at lr, which keeps the probe's weights unless one of its
    epochs beats the probe's validation loss (LP-FT). augment flips crops at random along
    z, y and x (nodule malignancy has no preferred orientation).
    """

    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    patience: int = 15
    seed: int = 0
    warmup_epochs: int = 3
    encoder_lr_scale: float = 1.0
    freeze_encoder: bool = False
    augment: bool = True
    fit_ehr_normalisation: bool = True
    select_on: str = "val_loss"
    probe_epochs: int = 0
    probe_lr: float | None = None


@dataclass
class FinetuneResult:
    """The model with the best validation weights loaded, and the per-epoch record.

    After LP-FT, best_epoch counts the end-to-end stage's epochs (-1: no epoch beat the probe,
    whose weights are kept) and each history row names its "stage".
    """

    model: DiagnosticModel
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    val_auc: float = float("nan")
    val_loss: float = math.inf


def patient_level_auc(patient_id: np.ndarray, label: np.ndarray, proba: np.ndarray) -> float:
    """ROC AUC with one score per patient (mean over a patient's rows); NaN if one class only."""
    ids, inverse = np.unique(patient_id, return_inverse=True)
    scores = np.bincount(inverse, weights=proba, minlength=len(ids)) / np.bincount(inverse)
    labels = np.bincount(inverse, weights=label, minlength=len(ids)) / np.bincount(inverse)
    labels = labels >= 0.5
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def _labeled(examples: ExampleSet, name: str) -> ExampleSet:
    """Rows with a label; an error if none are left."""
    keep = examples.label >= 0
    if not keep.any():
        raise ValueError(f"finetune: the {name} set has no labeled rows")
    return examples if keep.all() else examples.subset(np.flatnonzero(keep))


def _flip_crops(crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random per-patient flips of crops [B,T,S,S,S] along z, y, x (same flips for all time points).

    The draws come from a CPU generator, so runs are reproducible on any device.
    """
    for dim in (2, 3, 4):
        flip = (torch.rand(crops.shape[0], generator=generator) < 0.5).to(crops.device)
        crops = torch.where(flip[:, None, None, None, None], crops.flip(dim), crops)
    return crops


def _evaluate(
    model: DiagnosticModel, examples: ExampleSet, batch_size: int
) -> tuple[float, np.ndarray]:
    """Mean BCE and probabilities [N] over `examples` (eval mode, no grad)."""
    logits = _predict_logits(model, examples, batch_size)
    target = torch.from_numpy(examples.label.astype(np.float32))
    loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), target).item()
    return float(loss), 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


@torch.no_grad()
def _predict_logits(model: DiagnosticModel, examples: ExampleSet, batch_size: int) -> np.ndarray:
    """Logits [N] float32, in batches, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    tensors = example_tensors(examples)
    out = []
    for start in range(0, len(examples), batch_size):
        batch = [tensors[k][start : start + batch_size].to(device) for k in FIELDS]
        out.append(model.logits(*batch).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def predict_proba(model: DiagnosticModel, examples: ExampleSet, batch_size: int = 64) -> np.ndarray:
    """Malignancy probabilities [N] float64 for every row (labels are not used); leaves eval mode."""
    logits = _predict_logits(model, examples, batch_size).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logits))


def _better(
    auc: float, loss: float, best_auc: float, best_loss: float, select_on: str = "val_loss"
) -> bool:
    """Is this epoch better than the best so far?

    "val_loss": lower validation BCE wins (ties go to the higher AUC). The default, because
    on a validation split of a few dozen patients the AUC of an untrained model is often
    high by chance, and early stopping on it then keeps an epoch-0 model.
    "val_auc": higher AUC wins (NaN counts as lowest); equal AUCs go to the lower loss.
    """
    a = -math.inf if math.isnan(auc) else auc
    b = -math.inf if math.isnan(best_auc) else best_auc
    if select_on == "val_loss":
        return loss < best_loss or (loss == best_loss and a > b)
    if select_on == "val_auc":
        return a > b or (a == b and loss < best_loss)
    raise ValueError(f"select_on must be 'val_loss' or 'val_auc', got {select_on!r}")


def finetune(
    model: DiagnosticModel,
    train: ExampleSet,
    val: ExampleSet,
    config: FinetuneConfig,
    progress: bool = True,
) -> FinetuneResult:
    """Train `model` in place on the labeled rows of `train`; keep the epoch best on `val`.

    Runs on the device the model is on (batches are moved there).

    Deterministic given config.seed (shuffling, augmentation); the model's initial weights
    are the caller's. Unlabeled rows (label -1) are skipped. Returns the model with the
    best epoch's weights restored.
    """
    train, val = _labeled(train, "train"), _labeled(val, "validation")
    if config.epochs < 1 or config.batch_size < 1 or config.probe_epochs < 0:
        raise ValueError("finetune: epochs and batch_size must be >= 1, probe_epochs >= 0")
    if config.probe_epochs == 0 or config.freeze_encoder:
        return _train(model, train, val, replace(config, probe_epochs=0), progress)
    probe = _train(model, train, val, probe_config(config), progress)
    return finetune_from_probe(probe, train, val, config, progress)


def probe_config(config: FinetuneConfig) -> FinetuneConfig:
    """The first (linear-probe) stage of an LP-FT recipe, as a recipe of its own.

    Equal to the frozen-probe model's recipe when epochs and lr agree, so a probe trained
    for that model can be continued instead of trained again (models/protocol.py).
    """
    return replace(
        config,
        freeze_encoder=True,
        epochs=config.probe_epochs,
        lr=config.lr if config.probe_lr is None else config.probe_lr,
        probe_epochs=0,
        probe_lr=None,
        encoder_lr_scale=1.0,
    )


def finetune_from_probe(
    probe: FinetuneResult,
    train: ExampleSet,
    val: ExampleSet,
    config: FinetuneConfig,
    progress: bool = True,
) -> FinetuneResult:
    """LP-FT's end-to-end stage, continuing `probe` (its model is trained in place).

    Keeps the probe's weights unless an epoch beats its validation loss. The same result
    as `finetune(model, ..., config)` when `probe` is that call's first stage.
    """
    train, val = _labeled(train, "train"), _labeled(val, "validation")
    tuned = _train(
        probe.model,
        train,
        val,
        replace(config, probe_epochs=0, probe_lr=None, fit_ehr_normalisation=False),
        progress,
        start=probe,
    )
    tuned.history = [{"stage": "probe", **h} for h in probe.history] + [
        {"stage": "finetune", **h} for h in tuned.history
    ]
    return tuned


def _train(
    model: DiagnosticModel,
    train: ExampleSet,
    val: ExampleSet,
    config: FinetuneConfig,
    progress: bool,
    start: FinetuneResult | None = None,
) -> FinetuneResult:
    """One training stage; `start` (the previous stage's result) is the best to beat."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if config.fit_ehr_normalisation:
        model.encoder.set_ehr_normalisation(*ehr_normalisation(train))

    encoder_flags = [p.requires_grad for p in model.encoder.parameters()]
    if config.freeze_encoder:
        model.encoder.requires_grad_(False)
    groups = param_groups(model.head_modules(), config.weight_decay, prefix="head")
    if not config.freeze_encoder:
        groups += param_groups(
            model.encoder, config.weight_decay, config.encoder_lr_scale, prefix="encoder"
        )
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=ADAMW_BETAS)

    device = next(model.parameters()).device
    tensors = example_tensors(train)
    target = torch.from_numpy(train.label.astype(np.float32)).to(device)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = config.warmup_epochs * steps_per_epoch

    best_auc, best_loss, best_epoch = float("nan"), math.inf, -1
    if start is not None:
        best_auc, best_loss = start.val_auc, start.val_loss
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict] = []
    stale, step = 0, 0
    epochs = tqdm(range(config.epochs), desc="finetune", disable=not progress, leave=False)
    try:
        for epoch in epochs:
            model.train()
            if config.freeze_encoder:
                model.encoder.eval()
            order = torch.randperm(len(train), generator=generator)
            running, seen = 0.0, 0
            for start in range(0, len(train), config.batch_size):
                idx = order[start : start + config.batch_size]
                batch = {k: tensors[k][idx].to(device) for k in FIELDS}
                if config.augment:
                    batch["crops_hu"] = _flip_crops(batch["crops_hu"], generator)
                apply_lr(optimizer, warmup_cosine(step, total_steps, warmup_steps, config.lr))
                loss = F.binary_cross_entropy_with_logits(
                    model.logits(*(batch[k] for k in FIELDS)), target[idx.to(device)]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running += loss.item() * len(idx)
                seen += len(idx)
                step += 1
            val_loss, val_proba = _evaluate(model, val, max(config.batch_size, 64))
            val_auc = patient_level_auc(val.patient_id, val.label, val_proba)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": running / seen,
                    "val_loss": val_loss,
                    "val_auc": val_auc,
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
            epochs.set_postfix(val_auc=f"{val_auc:.3f}", val_loss=f"{val_loss:.3f}")
            if _better(val_auc, val_loss, best_auc, best_loss, config.select_on):
                best_auc, best_loss, best_epoch, stale = val_auc, val_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= config.patience:
                    break
    finally:
        for param, flag in zip(model.encoder.parameters(), encoder_flags, strict=True):
            param.requires_grad_(flag)
    model.load_state_dict(best_state)
    model.eval()
    return FinetuneResult(
        model=model, best_epoch=best_epoch, history=history, val_auc=best_auc, val_loss=best_loss
    )


def stratified_patient_split(
    labels: np.ndarray, fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Disjoint, covering index sets [n_split] (sorted int64) with each label's share per split.

    One row per patient, so indices are patients. Per label value, rows are shuffled and
    cut by largest-remainder rounding of the fractions (which must sum to 1).
    """
    labels = np.asarray(labels)
    names = list(fractions)
    weights = np.array([fractions[k] for k in names], dtype=np.float64)
    if (weights < 0).any() or not math.isclose(weights.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        exact = weights * len(members)
        counts = np.floor(exact).astype(int)
        remainder_order = np.argsort(-(exact - counts), kind="stable")
        counts[remainder_order[: len(members) - counts.sum()]] += 1
        for name, chunk in zip(names, np.split(members, np.cumsum(counts)[:-1]), strict=True):
            parts[name].append(chunk)
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


def save_model(model: DiagnosticModel, path: Path, card: dict) -> None:
    """Write `path` (.safetensors; config + card in its metadata) and a `<stem>.json` sidecar.

    Both atomically, no pickle. The safetensors file alone is enough to load the model; the
    sidecar is the human- and pipeline-readable copy of the config and card.
    """
    path = Path(path)
    config = {
        "format": MODEL_FORMAT,
        "encoder_config": model.encoder.config.to_dict(),
        "modalities": model.modalities,
        "readout": model.readout,
    }
    save_weights(model.state_dict(), path, {**config, "card": card})
    atomic_write_json(path.with_suffix(".json"), {**config, "card": card})


def load_model(path: Path) -> DiagnosticModel:
    """Rebuild a DiagnosticModel from a save_model file (strict weights, eval mode, no pickle)."""
    header = read_header(Path(path))
    if header.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a LungJEPA diagnostic model file")
    encoder = MultimodalEncoder(EncoderConfig.from_dict(header["encoder_config"]))
    # files written before readouts existed used the mean readout
    model = DiagnosticModel(encoder, header["modalities"], header.get("readout", "mean"))
    model.load_state_dict(load_weights(Path(path)), strict=True)
    return model.eval()


def load_card(path: Path) -> dict:
    """The card stored with a save_model file."""
    return read_header(Path(path)).get("card", {})


def config_dict(config: FinetuneConfig) -> dict:
    """FinetuneConfig as a JSON-ready dict (for model cards)."""
    return asdict(config)

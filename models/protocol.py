"""The paper's comparison, run the same way for the demo, the pipeline and the synthetic study.

All models see the same patients and splits: the internal labeled cohort is split once by
patient (stratified) into train / val / test; the external cohort is only ever tested on.
Each neural model is trained with several seeds and reported as the seed ensemble (mean
probability), which is also what gets exported, so the exported model is the evaluated one.

    jepa          JEPA-pretrained encoder, finetuned end to end (ours)
    jepa_probe    JEPA-pretrained encoder frozen, head trained (linear probe)
    multimodal    same architecture and inputs, from scratch (unregularized multimodal)
    imaging_only  same image encoder, EHR tokens dropped, from scratch
    clinical_brock  Brock/PanCan with published coefficients (no training)
    clinical_refit  logistic regression refit on the EHR features
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from models.baselines import brock_from_examples, clinical_refit_model
from models.data import ExampleSet
from models.diagnostic import DiagnosticModel
from models.encoders import MultimodalEncoder
from models.evaluation import combine_cohort_results, evaluate_models, roc_auc
from models.finetune import FinetuneConfig, finetune, predict_proba, stratified_patient_split

NEURAL_MODELS: tuple[str, ...] = ("jepa", "jepa_probe", "multimodal", "imaging_only")
REFERENCE_MODEL = "jepa"


@dataclass(frozen=True)
class ProtocolConfig:
    """Splits, seeds and training knobs (params.yaml `finetune` and `evaluate`)."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "val": 0.2, "test": 0.2})
    split_seed: int = 0
    jepa_encoder_lr_scale: float = 0.5
    crop_spacing_mm: float = 1.0


class SeedEnsemble(nn.Module):
    """Mean probability of several DiagnosticModels trained with different seeds."""

    def __init__(self, members: Sequence[DiagnosticModel]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(
        self,
        crops_hu: torch.Tensor,
        months_before_latest: torch.Tensor,
        scan_mask: torch.Tensor,
        ehr: torch.Tensor,
        ehr_mask: torch.Tensor,
    ) -> torch.Tensor:
        probabilities = [
            m(crops_hu, months_before_latest, scan_mask, ehr, ehr_mask) for m in self.members
        ]
        return torch.stack(probabilities, dim=0).mean(dim=0)


@dataclass
class ProtocolResult:
    """Labels and every model's predictions on both test cohorts, and the trained ensembles."""

    split: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    patient_ids: dict[str, np.ndarray]
    predictions: dict[str, dict[str, np.ndarray]]
    per_seed_auc: dict[str, dict[str, list[float]]]
    ensembles: dict[str, SeedEnsemble]
    histories: dict[str, list[list[dict]]]


def _ensemble_predict(model: nn.Module, examples: ExampleSet) -> np.ndarray:
    if isinstance(model, SeedEnsemble):
        return np.mean([predict_proba(m, examples) for m in model.members], axis=0)
    return predict_proba(model, examples)


def _new_model(
    name: str, template: MultimodalEncoder, pretrained: MultimodalEncoder | None, seed: int
) -> DiagnosticModel:
    """A fresh model of the named kind: a copy of the pretrained encoder, or a new one."""
    torch.manual_seed(seed)
    if name in ("jepa", "jepa_probe"):
        if pretrained is None:
            raise ValueError(f"{name} needs a pretrained encoder")
        return DiagnosticModel(copy.deepcopy(pretrained), "multimodal")
    modalities = "imaging" if name == "imaging_only" else "multimodal"
    return DiagnosticModel(MultimodalEncoder(template.config), modalities)


def _run_config(name: str, base: FinetuneConfig, seed: int, jepa_lr_scale: float) -> FinetuneConfig:
    """The finetuning recipe of each model kind (same base, only what differs).

    A pretrained encoder keeps the EHR normalisation it was pretrained with (fitted on the
    archive): refitting it on the small labeled cohort would move every input it learned on.
    """
    run_config = replace(base, seed=seed)
    if name == "jepa":
        return replace(run_config, encoder_lr_scale=jepa_lr_scale, fit_ehr_normalisation=False)
    if name == "jepa_probe":
        return replace(run_config, freeze_encoder=True, fit_ehr_normalisation=False)
    return run_config


def run_protocol(
    internal: ExampleSet,
    external: ExampleSet,
    pretrained: MultimodalEncoder | None,
    config: ProtocolConfig,
    template: MultimodalEncoder | None = None,
    progress: bool = True,
) -> ProtocolResult:
    """Train every model on the internal split, test on internal test and external.

    ``template`` fixes the architecture of the from-scratch models (default: the pretrained
    encoder's config, so the comparison isolates pretraining). Without a pretrained encoder
    the JEPA models are left out.
    """
    template = template or pretrained
    if template is None:
        raise ValueError("run_protocol needs a pretrained encoder or a template encoder")
    internal = internal.subset(internal.label >= 0)
    external = external.subset(external.label >= 0)
    split = stratified_patient_split(internal.label, config.split, seed=config.split_seed)
    train, val, test = (internal.subset(split[k]) for k in ("train", "val", "test"))
    cohorts = {"internal": test, "external": external}
    for name, examples in {"internal train": train, "internal val": val, **cohorts}.items():
        positives = int(examples.label.sum())
        if positives == 0 or positives == len(examples):
            raise ValueError(
                f"{name}: {len(examples)} patients, {positives} malignant; AUC needs both "
                "classes, so the labeled cohort is too small for this split"
            )

    names = [n for n in NEURAL_MODELS if pretrained is not None or not n.startswith("jepa")]
    ensembles: dict[str, SeedEnsemble] = {}
    histories: dict[str, list[list[dict]]] = {}
    per_seed: dict[str, dict[str, list[float]]] = {c: {} for c in cohorts}
    for name in names:
        members = []
        histories[name] = []
        for seed in config.seeds:
            model = _new_model(name, template, pretrained, seed)
            run_config = _run_config(name, config.finetune, seed, config.jepa_encoder_lr_scale)
            result = finetune(model, train, val, run_config, progress=progress)
            members.append(result.model.eval())
            histories[name].append(result.history)
            for cohort, examples in cohorts.items():
                auc = roc_auc(examples.label, predict_proba(result.model, examples))
                per_seed[cohort].setdefault(name, []).append(auc)
        ensembles[name] = SeedEnsemble(members).eval()

    predictions: dict[str, dict[str, np.ndarray]] = {}
    for cohort, examples in cohorts.items():
        predictions[cohort] = {name: _ensemble_predict(ensembles[name], examples) for name in names}
        predictions[cohort]["clinical_brock"] = brock_from_examples(
            examples, spacing_mm=config.crop_spacing_mm
        )
        refit_train = internal.subset(np.concatenate([split["train"], split["val"]]))
        predictions[cohort]["clinical_refit"] = clinical_refit_model(refit_train, examples)

    return ProtocolResult(
        split=split,
        labels={c: e.label.astype(np.int64) for c, e in cohorts.items()},
        patient_ids={c: e.patient_id for c, e in cohorts.items()},
        predictions=predictions,
        per_seed_auc=per_seed,
        ensembles=ensembles,
        histories=histories,
    )


def evaluate_predictions(
    labels: dict[str, np.ndarray],
    predictions: dict[str, dict[str, np.ndarray]],
    n_replicates: int,
    seed: int,
) -> dict[str, Any]:
    """metrics/evaluation.json: AUC with bootstrap CI, Brier, DeLong vs the reference model."""
    per_cohort = {}
    for cohort, by_model in predictions.items():
        reference = REFERENCE_MODEL if REFERENCE_MODEL in by_model else "multimodal"
        per_cohort[cohort] = evaluate_models(
            labels[cohort], by_model, reference=reference, n_replicates=n_replicates, seed=seed
        )
    return combine_cohort_results(per_cohort)


def predictions_frame(result: ProtocolResult) -> pd.DataFrame:
    """One row per (cohort, patient): label and every model's probability (for files and DVC)."""
    frames = []
    for cohort, by_model in result.predictions.items():
        frame = pd.DataFrame(
            {
                "cohort": cohort,
                "patient_id": result.patient_ids[cohort],
                "label": result.labels[cohort],
            }
        )
        for name, values in by_model.items():
            frame[name] = values
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def predictions_from_frame(
    frame: pd.DataFrame,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Inverse of predictions_frame: labels and predictions per cohort."""
    models = [c for c in frame.columns if c not in ("cohort", "patient_id", "label")]
    labels, predictions = {}, {}
    for cohort, rows in frame.groupby("cohort", sort=False):
        labels[cohort] = rows["label"].to_numpy(np.int64)
        predictions[cohort] = {m: rows[m].to_numpy(np.float64) for m in models}
    return labels, predictions

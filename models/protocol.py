"""The paper's comparison, run the same way for the demo, the pipeline and the synthetic study.

All models see the same patients and folds: the internal labeled cohort is cut into repeated
stratified k folds (models/folds.py); each model is trained once per fold (and seed) on the
other folds, with early stopping on a validation part of them, and predicts the held-out
fold. Every labeled internal patient therefore gets an out-of-fold prediction (the mean over
repeats and seeds), and the internal AUCs and paired DeLong tests use all of them. The
external cohort is only ever tested on, by the ensemble of every fold model (mean
probability), which is also what gets exported, so the exported model is the evaluated one.

    jepa            JEPA-pretrained encoder, finetuned by LP-FT (ours; `JepaRecipe`)
    jepa_probe      JEPA-pretrained encoder frozen, head trained (linear probe)
    multimodal      same architecture and inputs, from scratch (unregularized multimodal)
    imaging_only    same image encoder, EHR tokens dropped, from scratch
    clinical_brock  Brock/PanCan, published coefficients, on a reader-measured diameter
    clinical_mayo   Mayo Clinic model, published coefficients, on a reader-measured diameter
    oracle_brock    Brock on the generator's exact diameter (an oracle no clinic has)
    clinical_refit  logistic regression refit on the EHR features (out-of-fold too)

Label efficiency: the models in `label_efficiency_models` are also trained on a stratified
`fraction` of each training fold (the validation part and test fold unchanged), giving the
out-of-fold internal AUC at each fraction.

Size: about 430 lines because the cross-fitting, the baselines and the predictions tables
are the one protocol the demo, the pipeline and the study share.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cohorts.example_set import ExampleSet
from models.baselines import (
    ReaderError,
    brock_from_examples,
    fit_clinical_refit,
    latest_diameter,
    mayo_from_examples,
    predict_clinical_refit,
)
from models.diagnostic import DEFAULT_READOUT, DiagnosticModel
from models.encoders import MultimodalEncoder
from models.evaluation import combine_cohort_results, evaluate_models, roc_auc
from models.finetune import (
    FinetuneConfig,
    FinetuneResult,
    finetune,
    finetune_from_probe,
    predict_proba,
    probe_config,
)
from models.folds import Fold, repeated_stratified_folds, subsample_stratified

NEURAL_MODELS: tuple[str, ...] = ("jepa", "jepa_probe", "multimodal", "imaging_only")
BASELINE_MODELS: tuple[str, ...] = (
    "clinical_brock",
    "clinical_mayo",
    "oracle_brock",
    "clinical_refit",
)
REFERENCE_MODEL = "jepa"


@dataclass(frozen=True)
class JepaRecipe:
    """How the pretrained encoder is finetuned (params.yaml `finetune.jepa`): LP-FT.

    The head is trained on the frozen encoder for `probe_epochs` at the common finetuning lr,
    then the whole model at `lr`, the encoder at `encoder_lr_scale` of it
    (models/finetune.py). Why: on the demo, end
    to end finetuning from the first step scored below the frozen probe of the same encoder,
    the signature of pretrained features overwritten by a fresh head's gradients.
    """

    probe_epochs: int = 50
    lr: float = 3e-4
    encoder_lr_scale: float = 0.1


@dataclass(frozen=True)
class ProtocolConfig:
    """Folds, seeds and training knobs (params.yaml `finetune` and `evaluate`)."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seeds: tuple[int, ...] = (0,)
    folds: int = 5
    repeats: int = 1
    val_fraction: float = 0.2
    split_seed: int = 0
    jepa: JepaRecipe = field(default_factory=JepaRecipe)
    readout: str = DEFAULT_READOUT
    reader: ReaderError = field(default_factory=ReaderError)
    label_fractions: tuple[float, ...] = (0.25, 0.5)
    label_efficiency_models: tuple[str, ...] = ("jepa", "multimodal")


class Ensemble(nn.Module):
    """Mean probability of several DiagnosticModels (folds x seeds) on the same inputs."""

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
    """Labels and every model's predictions on both cohorts, the folds and the trained models.

    predictions[cohort][model] [n_patients]: out-of-fold for internal, fold ensemble for
    external. member_names[model] names each ensemble member ("r0f3s0": repeat, fold, seed).
    label_efficiency[fraction][model]: out-of-fold internal predictions at that fraction.
    """

    folds: list[Fold]
    labels: dict[str, np.ndarray]
    patient_ids: dict[str, np.ndarray]
    predictions: dict[str, dict[str, np.ndarray]]
    per_fold_auc: dict[str, list[float]]
    ensembles: dict[str, Ensemble]
    member_names: dict[str, list[str]]
    histories: dict[str, list[list[dict]]]
    label_efficiency: dict[float, dict[str, np.ndarray]] = field(default_factory=dict)


def ensemble_predict(model: nn.Module, examples: ExampleSet) -> np.ndarray:
    """Probabilities [N] of a model or an Ensemble (mean of its members)."""
    if isinstance(model, Ensemble):
        return np.mean([predict_proba(m, examples) for m in model.members], axis=0)
    return predict_proba(model, examples)


def new_model(
    name: str,
    template: MultimodalEncoder,
    pretrained: MultimodalEncoder | None,
    seed: int,
    readout: str = DEFAULT_READOUT,
) -> DiagnosticModel:
    """A fresh model of the named kind: a copy of the pretrained encoder, or a new one."""
    torch.manual_seed(seed)
    if name in ("jepa", "jepa_probe"):
        if pretrained is None:
            raise ValueError(f"{name} needs a pretrained encoder")
        return DiagnosticModel(copy.deepcopy(pretrained), "multimodal", readout)
    modalities = "imaging" if name == "imaging_only" else "multimodal"
    return DiagnosticModel(MultimodalEncoder(template.config), modalities, readout)


def run_config(
    name: str, base: FinetuneConfig, seed: int, jepa: JepaRecipe = JepaRecipe()
) -> FinetuneConfig:
    """The finetuning recipe of each model kind (same base, only what differs).

    A pretrained encoder keeps the EHR normalisation it was pretrained with (fitted on the
    archive): refitting it on the small labeled cohort would move every input it learned on.
    """
    config = replace(base, seed=seed)
    if name == "jepa":
        return replace(
            config,
            probe_epochs=jepa.probe_epochs,
            probe_lr=config.lr,
            lr=jepa.lr,
            encoder_lr_scale=jepa.encoder_lr_scale,
            fit_ehr_normalisation=False,
        )
    if name == "jepa_probe":
        return replace(config, freeze_encoder=True, fit_ehr_normalisation=False)
    return config


def _check_classes(name: str, examples: ExampleSet) -> None:
    positives = int(examples.label.sum())
    if positives == 0 or positives == len(examples):
        raise ValueError(
            f"{name}: {len(examples)} patients, {positives} malignant; AUC needs both classes, "
            "so the labeled cohort is too small for these folds"
        )


def _cross_fit(
    internal: ExampleSet,
    external: ExampleSet,
    folds: list[Fold],
    seeds: Sequence[int],
    train_one: Callable[[ExampleSet, ExampleSet, int], Any],
    predict: Callable[[Any, ExampleSet], np.ndarray],
    fraction: float = 1.0,
    fraction_seed: int = 0,
) -> tuple[np.ndarray, list[np.ndarray], list[Any], list[str]]:
    """Train on every fold (x seed); out-of-fold internal [N], external per member, members.

    The internal prediction of a patient is the mean over the repeats (and seeds) whose
    test fold holds it; the external ones are kept per member for the ensemble mean.
    """
    oof_sum = np.zeros(len(internal))
    oof_count = np.zeros(len(internal))
    external_preds, members, names = [], [], []
    for fold in folds:
        train_idx = subsample_stratified(
            fold.train,
            internal.label,
            fraction,
            seed=fraction_seed + 7919 * (fold.repeat * 97 + fold.index),
        )
        train, val, test = (internal.subset(i) for i in (train_idx, fold.val, fold.test))
        for seed in seeds:
            member = train_one(train, val, seed)
            oof_sum[fold.test] += predict(member, test)
            oof_count[fold.test] += 1
            external_preds.append(predict(member, external))
            members.append(member)
            names.append(f"{fold.name}s{seed}")
    if (oof_count == 0).any():
        raise ValueError("folds leave some labeled patients without an out-of-fold prediction")
    return oof_sum / oof_count, external_preds, members, names


def run_protocol(
    internal: ExampleSet,
    external: ExampleSet,
    pretrained: MultimodalEncoder | None,
    config: ProtocolConfig,
    template: MultimodalEncoder | None = None,
    progress: bool = True,
    models: Sequence[str] = NEURAL_MODELS,
) -> ProtocolResult:
    """Cross-fit every model on the internal folds; test out of fold and on the external cohort.

    ``template`` fixes the architecture of the from-scratch models (default: the pretrained
    encoder's config, so the comparison isolates pretraining). Without a pretrained encoder
    the JEPA models are left out.
    """
    template = template or pretrained
    if template is None:
        raise ValueError("run_protocol needs a pretrained encoder or a template encoder")
    if internal.crop_spacing_mm != external.crop_spacing_mm:
        raise ValueError(
            f"internal crops are cut at {internal.crop_spacing_mm} mm, external at "
            f"{external.crop_spacing_mm} mm: a model must be tested on crops like its training's"
        )
    internal = internal.subset(internal.label >= 0)
    external = external.subset(external.label >= 0)
    folds = repeated_stratified_folds(
        internal.label, config.folds, config.repeats, config.val_fraction, config.split_seed
    )
    for fold in folds:
        for part in ("train", "val", "test"):
            _check_classes(f"internal {fold.name} {part}", internal.subset(getattr(fold, part)))
    _check_classes("external", external)

    names = [n for n in models if pretrained is not None or not n.startswith("jepa")]
    names.sort(key=lambda n: n != "jepa_probe")  # the probe first: jepa continues its members
    predictions: dict[str, dict[str, np.ndarray]] = {"internal": {}, "external": {}}
    ensembles: dict[str, Ensemble] = {}
    member_names: dict[str, list[str]] = {}
    histories: dict[str, list[list[dict]]] = {}
    per_fold: dict[str, list[float]] = {}
    label_efficiency: dict[float, dict[str, np.ndarray]] = {}

    # LP-FT's first stage is the frozen probe's own training: when the recipes agree, each
    # jepa member continues a copy of the jepa_probe member of its fold and seed (the same
    # weights, to the bit, as training that stage again) instead of repeating it.
    probes: dict[tuple[bytes, int], FinetuneResult] = {}

    def trainer(
        name: str, record: bool = True
    ) -> Callable[[ExampleSet, ExampleSet, int], DiagnosticModel]:
        """Trains one member; `record` keeps its history (the label-efficiency runs do not)."""

        def train_one(train: ExampleSet, val: ExampleSet, seed: int) -> DiagnosticModel:
            recipe = run_config(name, config.finetune, seed, config.jepa)
            key = (train.patient_id.astype(str).tobytes(), seed)
            shared = recipe.probe_epochs > 0 and probe_config(recipe) == run_config(
                "jepa_probe", config.finetune, seed, config.jepa
            )
            if name == "jepa" and shared and key in probes:
                probe = copy.deepcopy(probes[key])
                result = finetune_from_probe(probe, train, val, recipe, progress=progress)
            else:
                model = new_model(name, template, pretrained, seed, config.readout)
                result = finetune(model, train, val, recipe, progress=progress)
            if name == "jepa_probe" and record:
                probes[key] = copy.deepcopy(result)
            if record:
                histories.setdefault(name, []).append(result.history)
            return result.model.eval()

        return train_one

    for name in names:
        oof, ext, members, member_ids = _cross_fit(
            internal, external, folds, config.seeds, trainer(name), predict_proba
        )
        predictions["internal"][name] = oof
        predictions["external"][name] = np.mean(ext, axis=0)
        ensembles[name] = Ensemble(members).eval()
        member_names[name] = member_ids
        per_fold[name] = [
            roc_auc(internal.label[f.test], oof[f.test]) for f in folds
        ]  # OOF per fold (mean over seeds, and over repeats for repeated patients)
    for fraction in config.label_fractions:
        for name in (n for n in config.label_efficiency_models if n in names):
            oof, _, _, _ = _cross_fit(
                internal, external, folds, config.seeds, trainer(name, record=False),
                predict_proba, fraction=fraction, fraction_seed=config.split_seed,
            )  # fmt: skip
            label_efficiency.setdefault(float(fraction), {})[name] = oof

    # Baselines: published formulas need no training; the refit is cross-fitted like the rest.
    for cohort, examples in (("internal", internal), ("external", external)):
        measured = config.reader.measure(latest_diameter(examples), examples.patient_id)
        spacing = examples.crop_spacing_mm  # the spacing the crops were cut at
        predictions[cohort]["clinical_brock"] = brock_from_examples(
            examples, spacing_mm=spacing, size_mm=measured
        )
        predictions[cohort]["clinical_mayo"] = mayo_from_examples(examples, size_mm=measured)
        predictions[cohort]["oracle_brock"] = brock_from_examples(examples, spacing_mm=spacing)
    refit_oof, refit_ext, _, _ = _cross_fit(
        internal,
        external,
        [replace(f, train=np.union1d(f.train, f.val)) for f in folds],
        (0,),
        lambda train, _val, seed: fit_clinical_refit(train, seed=seed),
        predict_clinical_refit,
    )
    predictions["internal"]["clinical_refit"] = refit_oof
    predictions["external"]["clinical_refit"] = np.mean(refit_ext, axis=0)

    return ProtocolResult(
        folds=folds,
        labels={
            "internal": internal.label.astype(np.int64),
            "external": external.label.astype(np.int64),
        },
        patient_ids={"internal": internal.patient_id, "external": external.patient_id},
        predictions=predictions,
        per_fold_auc=per_fold,
        ensembles=ensembles,
        member_names=member_names,
        histories=histories,
        label_efficiency=label_efficiency,
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


def label_efficiency_frame(result: ProtocolResult) -> pd.DataFrame:
    """Long table: fraction, model, patient_id, label, out-of-fold probability (internal).

    The 100% point is the main out-of-fold prediction of the same model.
    """
    curve = dict(result.label_efficiency)
    models = sorted({name for by_model in curve.values() for name in by_model})
    curve[1.0] = {name: result.predictions["internal"][name] for name in models}
    rows = [
        pd.DataFrame(
            {
                "fraction": float(fraction),
                "model": name,
                "patient_id": result.patient_ids["internal"],
                "label": result.labels["internal"],
                "probability": curve[fraction][name],
            }
        )
        for fraction in sorted(curve)
        for name in models
    ]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


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

"""Supervised finetuning: learns a planted signal, restores the best epoch, is reproducible;
splits are stratified and disjoint; model files round-trip exactly; schedules behave."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cohorts.example_set import random_examples
from models.diagnostic import DiagnosticModel
from models.encoders import EncoderConfig, MultimodalEncoder
from models.finetune import (
    FinetuneConfig,
    ehr_normalisation,
    finetune,
    load_card,
    load_model,
    patient_level_auc,
    predict_proba,
    save_model,
    stratified_patient_split,
)

N_EHR = 6
CONFIG = EncoderConfig(n_ehr_features=N_EHR, crop_size_vox=16, embed_dim=32, depth=2, heads=4)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread (and don't fight parallel test workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(modalities: str = "multimodal", seed: int = 0) -> DiagnosticModel:
    torch.manual_seed(seed)
    return DiagnosticModel(MultimodalEncoder(CONFIG), modalities)


@pytest.fixture(scope="module")
def cohort():
    examples = random_examples(240, crop_size_vox=16, n_ehr=N_EHR, seed=7)
    split = stratified_patient_split(examples.label, {"train": 0.6, "val": 0.2, "test": 0.2}, 0)
    return {name: examples.subset(idx) for name, idx in split.items()}


def test_finetune_learns_planted_signal(cohort) -> None:
    """About 2 s of CPU time for 15 epochs of 144 patients (crop 16, width 32, depth 2)."""
    config = FinetuneConfig(epochs=15, batch_size=32, lr=3e-3, patience=15, warmup_epochs=1)
    result = finetune(_model(), cohort["train"], cohort["val"], config, progress=False)
    assert result.val_auc > 0.8, result.history
    proba = predict_proba(result.model, cohort["test"])
    assert proba.shape == (len(cohort["test"]),) and ((proba >= 0) & (proba <= 1)).all()
    assert roc_auc_score(cohort["test"].label, proba) > 0.8
    # EHR normalisation comes from the training split.
    mean, std = ehr_normalisation(cohort["train"])
    torch.testing.assert_close(result.model.encoder.ehr_mean, mean)
    torch.testing.assert_close(result.model.encoder.ehr_std, std)


@pytest.mark.parametrize("select_on", ["val_loss", "val_auc"])
def test_early_stopping_restores_best_weights(cohort, select_on: str) -> None:
    config = FinetuneConfig(
        epochs=6, batch_size=32, lr=3e-3, patience=2, warmup_epochs=0, select_on=select_on
    )
    result = finetune(_model(), cohort["train"], cohort["val"], config, progress=False)
    history = result.history
    assert [h["epoch"] for h in history] == list(range(len(history)))
    if select_on == "val_loss":
        best = min(history, key=lambda h: (h["val_loss"], -h["val_auc"]))
    else:
        best = max(history, key=lambda h: (h["val_auc"], -h["val_loss"]))
    assert result.best_epoch == best["epoch"]
    assert len(history) == config.epochs or len(history) - 1 - result.best_epoch == config.patience
    # The returned weights reproduce the best epoch's validation AUC, not the last epoch's.
    val = cohort["val"]
    auc = patient_level_auc(val.patient_id, val.label, predict_proba(result.model, val))
    assert auc == pytest.approx(best["val_auc"], abs=1e-9)


def test_training_stops_after_patience_epochs_without_improvement(cohort) -> None:
    config = FinetuneConfig(epochs=20, lr=0.0, patience=3, warmup_epochs=0, augment=False)
    result = finetune(_model(), cohort["train"], cohort["val"], config, progress=False)
    assert result.best_epoch == 0 and len(result.history) == 1 + config.patience


def test_finetune_is_deterministic_and_probe_freezes_encoder(cohort) -> None:
    small = {k: v.subset(np.arange(min(len(v), 64))) for k, v in cohort.items()}
    config = FinetuneConfig(epochs=2, batch_size=16, warmup_epochs=1, freeze_encoder=True)
    model = _model()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items() if "ehr_" not in k}
    a = finetune(model, small["train"], small["val"], config, progress=False)
    after = a.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in a.model.encoder.parameters())
    config = FinetuneConfig(epochs=2, batch_size=16, warmup_epochs=1, encoder_lr_scale=0.1)
    b = finetune(_model(), small["train"], small["val"], config, progress=False)
    c = finetune(_model(), small["train"], small["val"], config, progress=False)
    assert b.history == c.history
    for key, value in b.model.state_dict().items():
        assert torch.equal(value, c.model.state_dict()[key]), key


def test_lp_ft_probes_with_the_encoder_frozen_then_never_ends_worse_than_the_probe(cohort) -> None:
    """LP-FT: the probe stage leaves the encoder as it was; the end-to-end stage starts from
    the probe's best weights and keeps them unless an epoch beats its validation loss."""
    small = {k: v.subset(np.arange(min(len(v), 96))) for k, v in cohort.items()}
    model = _model()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items() if "ehr_" not in k}
    probe_only = FinetuneConfig(
        epochs=3, batch_size=16, lr=3e-3, warmup_epochs=1, freeze_encoder=True
    )
    probe = finetune(_model(), small["train"], small["val"], probe_only, progress=False)
    probe_loss = min(h["val_loss"] for h in probe.history)

    # A finetuning stage that cannot move (lr 0 after the probe) keeps the probe's weights.
    frozen_stage = FinetuneConfig(
        epochs=2, batch_size=16, lr=0.0, warmup_epochs=1, probe_epochs=3, probe_lr=3e-3
    )
    kept = finetune(model, small["train"], small["val"], frozen_stage, progress=False)
    stages = [h["stage"] for h in kept.history]
    assert stages == ["probe"] * 3 + ["finetune"] * (len(stages) - 3) and "finetune" in stages
    after = kept.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert kept.val_loss == pytest.approx(probe_loss, abs=1e-9)  # same seed: the same probe
    for key, value in probe.model.state_dict().items():
        assert torch.equal(value, kept.model.state_dict()[key]), key

    # With a learning encoder, validation loss is never above the probe's.
    tuned_config = FinetuneConfig(
        epochs=4, batch_size=16, lr=1e-3, warmup_epochs=1, probe_epochs=3, probe_lr=3e-3
    )
    tuned = finetune(_model(), small["train"], small["val"], tuned_config, progress=False)
    assert tuned.val_loss <= probe_loss + 1e-12
    finetune_losses = [h["val_loss"] for h in tuned.history if h["stage"] == "finetune"]
    assert tuned.val_loss == pytest.approx(min([probe_loss, *finetune_losses]), abs=1e-9)


def test_split_is_stratified_disjoint_and_covering() -> None:
    labels = np.array([0] * 70 + [1] * 30)
    split = stratified_patient_split(labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    joined = np.concatenate(list(split.values()))
    assert len(joined) == len(set(joined.tolist())) == len(labels)
    assert {k: len(v) for k, v in split.items()} == {"train": 60, "val": 20, "test": 20}
    assert {k: int(labels[v].sum()) for k, v in split.items()} == {"train": 18, "val": 6, "test": 6}
    again = stratified_patient_split(labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_patient_split(labels, {"train": 0.6, "val": 0.6}, seed=0)


def test_save_load_round_trip_is_exact(cohort, tmp_path: Path) -> None:
    model = _model("imaging")
    model.encoder.set_ehr_normalisation(*ehr_normalisation(cohort["train"]))
    path = tmp_path / "model.safetensors"
    save_model(model, path, card={"val_auc": 0.5, "seed": 0})
    loaded = load_model(path)
    assert loaded.modalities == "imaging" and loaded.encoder.config == CONFIG
    assert load_card(path) == {"val_auc": 0.5, "seed": 0}
    assert json.loads(path.with_suffix(".json").read_text())["modalities"] == "imaging"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    np.testing.assert_array_equal(
        predict_proba(model, cohort["val"]), predict_proba(loaded, cohort["val"])
    )
    assert not list(tmp_path.glob(".*.tmp"))

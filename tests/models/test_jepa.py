"""JEPA pretraining: masks, EMA, stop-gradient, target-only loss, collapse monitor, training run.

Size: over 450 lines: the tests of models/jepa/ (masks.py, ema.py, step.py, pretrain.py,
probe.py, cli.py) share one set of tiny fixtures here; they split along the modules when one
of them grows its own.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from cohorts.example_set import FIELDS, random_examples
from models.data import example_tensors
from models.encoders import EncoderConfig, MultimodalEncoder, load_encoder
from models.jepa.cli import config_from_args
from models.jepa.cli import parser as cli_parser
from models.jepa.config import PretrainConfig, build_encoder
from models.jepa.ema import (
    ema_update,
    init_weight_left,
    make_target_encoder,
    momentum_at,
    relative_distances,
    scaled_momentum,
)
from models.jepa.loss import jepa_loss, normalise_targets
from models.jepa.masks import EHR, IMAGE, MaskConfig, MultimodalMaskGenerator
from models.jepa.model import MultimodalJEPA, gather_tokens
from models.jepa.monitor import collapse_stats, effective_rank, embedding_std, is_collapsed
from models.jepa.predictor import JEPAPredictor
from models.jepa.pretrain import monitor_target, pretrain
from models.jepa.probe import (
    diameter_probe_cv_r2,
    diameter_probe_r2,
    encoder_features,
    linear_probe_auc,
)
from models.jepa.versioning import artifact_version, file_sha256

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "embed_dim": 32,
    "depth": 2,
    "heads": 2,
    "predictor_dim": 16,
    "predictor_depth": 1,
    "ehr_tokens": 2,
    "monitor_examples": 16,
}


def tiny_encoder(timepoints: int = 3, crop: int = 16) -> MultimodalEncoder:
    torch.manual_seed(0)
    return MultimodalEncoder(
        EncoderConfig(
            n_ehr_features=4,
            crop_size_vox=crop,
            patch_size_vox=8,
            ehr_tokens=2,
            max_timepoints=timepoints,
            embed_dim=32,
            depth=2,
            heads=2,
        )
    )


def batch_of(n: int, timepoints: int = 3, crop: int = 16, seed: int = 0) -> list[torch.Tensor]:
    tensors = example_tensors(random_examples(n, timepoints, crop, n_ehr=4, seed=seed))
    return [tensors[k] for k in FIELDS]


# masks ---------------------------------------------------------------------------------


def test_masks_disjoint_nonempty_valid_and_cover_every_modality_and_time() -> None:
    encoder = tiny_encoder()
    generator = MultimodalMaskGenerator.from_layout(encoder.layout)
    layout = encoder.layout
    batch = batch_of(64)
    valid = encoder.valid_tokens(batch[2], batch[4])
    targeted: set[tuple[int, int]] = set()
    whole_ehr = whole_image = whole_time = False
    for step in range(40):
        context, target = generator(valid, step)
        assert context.dtype == torch.bool and target.shape == valid.shape
        assert not (context & target).any()
        assert context.any(dim=1).all() and target.any(dim=1).all()
        assert not (context & ~valid).any() and not (target & ~valid).any()
        for b in range(valid.shape[0]):
            t_idx = target[b]
            for m, t in zip(
                layout.modality[t_idx].tolist(), layout.time_index[t_idx].tolist(), strict=True
            ):
                targeted.add((m, t))
            mods = set(layout.modality[t_idx].tolist())
            times = set(layout.time_index[t_idx].tolist())
            ehr_valid = valid[b] & (layout.modality == EHR)
            if mods == {EHR} and len(set(layout.time_index[ehr_valid].tolist())) > 1:
                whole_ehr |= bool((t_idx == ehr_valid).all())  # every time point's EHR hidden
            if mods == {IMAGE}:
                whole_image |= bool((t_idx == (valid[b] & (layout.modality == IMAGE))).all()) and (
                    len(set(layout.time_index[valid[b] & (layout.modality == IMAGE)].tolist())) > 1
                )
            if mods == {IMAGE, EHR} and len(times) == 1:
                t = times.pop()
                whole_time |= bool((t_idx == (valid[b] & (layout.time_index == t))).all())
    assert targeted == {(m, t) for m in (IMAGE, EHR) for t in range(3)}
    assert whole_ehr and whole_image and whole_time


def test_masks_seeded_per_step_and_rank() -> None:
    encoder = tiny_encoder()
    generator = MultimodalMaskGenerator.from_layout(encoder.layout, MaskConfig(seed=3))
    batch = batch_of(16)
    valid = encoder.valid_tokens(batch[2], batch[4])
    c1, t1 = generator(valid, step=5, rank=0)
    c2, t2 = generator(valid, step=5, rank=0)
    c3, t3 = generator(valid, step=5, rank=1)
    assert torch.equal(c1, c2) and torch.equal(t1, t2)
    assert not (torch.equal(c1, c3) and torch.equal(t1, t3))


def test_tube_masks_hide_the_same_patches_at_every_scan() -> None:
    """A target block has no twin in the context: the same patches go at every time point."""
    encoder = tiny_encoder(timepoints=3, crop=32)
    layout = encoder.layout
    tube = MultimodalMaskGenerator.from_layout(
        layout, MaskConfig(strategy_weights=(1.0, 0.0, 0.0), n_target_blocks=1)
    )
    valid = (layout.modality == IMAGE).unsqueeze(0).repeat(50, 1)
    context, target = tube(valid, step=0)
    for b in range(50):
        per_time = [
            set(layout.patch_index[target[b] & (layout.time_index == t)].tolist()) for t in range(3)
        ]
        assert per_time[0] and per_time[0] == per_time[1] == per_time[2]
        hidden = per_time[0]
        seen = set(layout.patch_index[context[b]].tolist())
        assert not hidden & seen  # no time point shows a hidden patch
    single = MultimodalMaskGenerator.from_layout(
        layout, MaskConfig(strategy_weights=(1.0, 0.0, 0.0), n_target_blocks=1, tube=False)
    )
    _, target = single(valid, step=0)
    assert all(len(set(layout.time_index[target[b]].tolist())) == 1 for b in range(50))


def test_multiblock_target_blocks_are_15_to_20_percent_of_a_scan() -> None:
    encoder = tiny_encoder(timepoints=1, crop=32)  # 4x4x4 patch grid
    config = MaskConfig(strategy_weights=(1.0, 0.0, 0.0), n_target_blocks=1)
    generator = MultimodalMaskGenerator.from_layout(encoder.layout, config)
    valid = (encoder.layout.modality == IMAGE).unsqueeze(0).repeat(200, 1)
    _, target = generator(valid, step=0)
    fractions = target.sum(1).float() / 64
    assert fractions.min() >= 0.09 and fractions.max() <= 0.3
    assert 0.13 <= float(fractions.mean()) <= 0.22


def test_masks_need_two_valid_tokens_and_handle_single_scan_without_ehr() -> None:
    encoder = tiny_encoder()
    generator = MultimodalMaskGenerator.from_layout(encoder.layout)
    only_image = (encoder.layout.modality == IMAGE) & (encoder.layout.time_index == 2)
    context, target = generator(only_image.unsqueeze(0).repeat(20, 1), step=1)
    assert context.any(1).all() and target.any(1).all() and not (context & target).any()
    one = torch.zeros(2, encoder.n_tokens, dtype=torch.bool)
    one[0, 0] = True
    one[1, :3] = True
    context, target = generator(one, step=0)
    assert not context[0].any() and not target[0].any()  # too small: sits the step out
    assert context[1].any() and target[1].any()
    with pytest.raises(ValueError):
        generator.sample(one[0].numpy(), np.random.default_rng(0))


# EMA, stop-gradient, loss ----------------------------------------------------------------


def test_scaled_momentum_leaves_the_asked_share_of_the_init() -> None:
    for steps in (200, 600):
        m0, m1 = scaled_momentum(steps, (0.996, 1.0), init_weight=0.01)
        assert m1 == 1.0 and m0 < 0.996
        assert init_weight_left(steps, (m0, m1)) == pytest.approx(0.01, rel=0.1)
    # a run long enough for the configured schedule keeps it (the start is never raised)
    assert scaled_momentum(5000, (0.996, 1.0), init_weight=0.01) == (0.996, 1.0)
    assert init_weight_left(5000, (0.996, 1.0)) < 0.01
    assert init_weight_left(600, (0.996, 1.0)) > 0.25  # why: the unscaled schedule lags
    assert scaled_momentum(600, (0.996, 1.0), init_weight=0.0) == (0.996, 1.0)


def test_relative_distances_of_target_online_and_init() -> None:
    init = tiny_encoder()
    online = make_target_encoder(init)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    half = make_target_encoder(init)
    ema_update(half, online, momentum=0.5)
    d = relative_distances(half, online, init)
    assert d["target_to_init"] == pytest.approx(0.5, rel=1e-5)
    assert d["target_to_online"] == pytest.approx(0.5, rel=1e-5)


def test_context_only_encoding_equals_attention_restricted_encoding() -> None:
    """Gathering the context tokens (I-JEPA apply_masks) computes what masking attention did."""
    encoder = tiny_encoder().eval()
    generator = MultimodalMaskGenerator.from_layout(encoder.layout)
    batch = batch_of(12)
    valid = encoder.valid_tokens(batch[2], batch[4])
    context, _ = generator(valid, step=3)
    jepa = MultimodalJEPA(encoder, JEPAPredictor(32, 16, 1, 2))
    with torch.no_grad():
        tokens, valid_again = encoder.embed(*batch)
        gathered = jepa.encode_context(tokens, valid_again, context)
        restricted = encoder(*batch, keep=context)
    torch.testing.assert_close(gathered[context], restricted[context], atol=1e-5, rtol=1e-5)
    assert (gathered[~context] == 0).all()
    idx, keep = gather_tokens(context)
    assert keep.shape[1] == int(context.sum(1).max()) < context.shape[1]


def test_ema_update_matches_hand_computation() -> None:
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    online.register_buffer("stat", torch.tensor([7.0]))
    target.register_buffer("stat", torch.tensor([0.0]))
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[3.0, -1.0]]))
        online.bias.fill_(2.0)
        target.weight.copy_(torch.tensor([[1.0, 1.0]]))
        target.bias.fill_(0.0)
    ema_update(target, online, momentum=0.9)
    # 0.9 * 1 + 0.1 * 3 = 1.2 ; 0.9 * 1 + 0.1 * -1 = 0.8 ; 0.9 * 0 + 0.1 * 2 = 0.2
    assert torch.allclose(target.weight, torch.tensor([[1.2, 0.8]]))
    assert torch.allclose(target.bias, torch.tensor([0.2]))
    assert target.stat.item() == 7.0  # buffers are copied, not averaged
    assert momentum_at(0, 100, (0.996, 1.0)) == pytest.approx(0.996)
    assert momentum_at(50, 100, (0.996, 1.0)) == pytest.approx(0.998)
    assert momentum_at(100, 100, (0.996, 1.0)) == pytest.approx(1.0)
    assert momentum_at(500, 100, (0.996, 1.0)) == pytest.approx(1.0)


def _jepa_step_parts() -> tuple[
    MultimodalJEPA, nn.Module, list[torch.Tensor], torch.Tensor, torch.Tensor
]:
    encoder = tiny_encoder()
    model = MultimodalJEPA(encoder, JEPAPredictor(32, 16, 1, 2))
    target = make_target_encoder(encoder)
    batch = batch_of(8)
    generator = MultimodalMaskGenerator.from_layout(encoder.layout)
    context, target_mask = generator(encoder.valid_tokens(batch[2], batch[4]), step=0)
    return model, target, batch, context, target_mask


def test_no_gradient_reaches_the_target_encoder() -> None:
    model, target, batch, context, target_mask = _jepa_step_parts()
    targets = normalise_targets(target(*batch))
    assert not targets.requires_grad
    loss = jepa_loss(model(*batch, context, target_mask), targets, target_mask)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert model.predictor.mask_token.grad is not None


def test_loss_uses_target_tokens_only() -> None:
    torch.manual_seed(0)
    predicted = torch.randn(2, 10, 4)
    targets = normalise_targets(torch.randn(2, 10, 4))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 1], mask[1, 7], mask[1, 8] = True, True, True
    for kind in ("smooth_l1", "l2"):
        base = jepa_loss(predicted, targets, mask, kind)
        changed = predicted.clone()
        changed[~mask] += 100.0
        assert torch.equal(jepa_loss(changed, targets, mask, kind), base)
        changed[0, 1] += 1.0
        assert not torch.equal(jepa_loss(changed, targets, mask, kind), base)
    expected = torch.nn.functional.smooth_l1_loss(predicted[mask], targets[mask])
    assert torch.allclose(jepa_loss(predicted, targets, mask), expected)
    assert torch.allclose(targets.mean(-1), torch.zeros(2, 10), atol=1e-5)
    with pytest.raises(ValueError):
        jepa_loss(predicted, targets, mask, "l3")


def test_predictions_ignore_target_content() -> None:
    """The targeted EHR of a time point cannot leak into its own prediction."""
    encoder = tiny_encoder()
    model = MultimodalJEPA(encoder, JEPAPredictor(32, 16, 1, 2)).eval()
    batch = batch_of(4)
    batch[2][:] = True
    batch[4][:] = True
    valid = encoder.valid_tokens(batch[2], batch[4])
    target_mask = valid & (encoder.layout.modality == EHR) & (encoder.layout.time_index == 2)
    context = valid & ~target_mask
    before = model(*batch, context, target_mask)[target_mask]
    batch[3] = batch[3].clone()
    batch[3][:, 2] += 50.0
    after = model(*batch, context, target_mask)[target_mask]
    assert torch.allclose(before, after)


# collapse monitor -------------------------------------------------------------------------


def test_collapse_statistics() -> None:
    constant = torch.ones(50, 8) * torch.arange(8.0)
    assert is_collapsed(embedding_std(constant), 1e-3)
    assert effective_rank(constant) == 1.0
    spread = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    stats = collapse_stats(spread)
    assert not stats.collapsed and stats.effective_rank > 7.0 and stats.std_mean > 0.8


def test_monitor_fires_on_an_encoder_with_constant_outputs() -> None:
    encoder = tiny_encoder()
    with torch.no_grad():  # final LayerNorm with zero scale: every token maps to the bias
        encoder.norm.weight.zero_()
        encoder.norm.bias.fill_(0.5)
    tensors = example_tensors(random_examples(8, 3, 16, n_ehr=4))
    stats = monitor_target(encoder, tensors, 8, torch.device("cpu"), threshold=1e-3)
    assert stats["collapsed"] and stats["effective_rank"] == 1.0
    healthy = monitor_target(tiny_encoder(), tensors, 8, torch.device("cpu"), threshold=1e-3)
    assert not healthy["collapsed"]


# config and CLI --------------------------------------------------------------------------


def test_pretrain_config_mirrors_params_yaml() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())["pretrain"]
    config = PretrainConfig.from_dict(params)  # every key is a field
    assert config == PretrainConfig()  # defaults are params.yaml's values
    with pytest.raises(ValueError):
        PretrainConfig.from_dict({"epochz": 1})
    args = cli_parser().parse_args(
        [
            "--examples",
            "x.npz",
            "--out",
            "o",
            "--params",
            str(REPO / "params.yaml"),
            "--config",
            '{"epochs": 2, "loss": "l2"}',
            "--lr",
            "0.1",
            "--weight-decay",
            "0.1",
            "0.3",
        ]
    )
    config = config_from_args(args)
    assert (config.epochs, config.loss, config.lr) == (2, "l2", 0.1)
    assert config.weight_decay == (0.1, 0.3)


# end to end ------------------------------------------------------------------------------


def test_pretraining_loss_falls_and_writes_artifacts(tmp_path: Path) -> None:
    examples = random_examples(24, timepoints=2, crop_size_vox=16, n_ehr=4, seed=0)
    probe = (
        random_examples(30, 2, 16, n_ehr=4, seed=1),
        random_examples(30, 2, 16, n_ehr=4, seed=2),
    )
    config = PretrainConfig(
        epochs=5, batch_size=8, lr=2e-3, warmup_epochs=1, checkpoint_every_steps=4, **TINY
    )
    result = pretrain(examples, tmp_path, config, progress=False, probe_sets=probe)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 5 and losses[-1] < 0.9 * losses[0]
    assert result.steps == 15 and result.resumed_from_step is None

    card = json.loads((tmp_path / "card.json").read_text())
    assert card["version"] == result.version == artifact_version(examples, config)
    assert len(card["version"]) == 12
    assert card["params"]["epochs"] == 5 and card["loss"]["last"] == pytest.approx(losses[-1])
    assert card["throughput_samples_per_s"] > 0 and not card["monitor"]["collapsed"]
    assert card["train_seconds"] > 0
    encoder = load_encoder(tmp_path / "encoder.safetensors")
    reference = build_encoder(examples, config)
    assert encoder.config == reference.config
    # the card's probe figures are those of the exported encoder and of a fresh random one
    torch.manual_seed(config.seed + 1)
    random_encoder = build_encoder(examples, config)
    assert card["probe"]["pretrained_auc"] == pytest.approx(
        linear_probe_auc(encoder, *probe, seed=config.seed), abs=1e-9
    )
    assert card["probe"]["random_auc"] == pytest.approx(
        linear_probe_auc(random_encoder, *probe, seed=config.seed), abs=1e-9
    )
    assert card["probe"]["pretrained_diameter_r2"] == pytest.approx(
        diameter_probe_r2(encoder, *probe), abs=1e-9
    )
    assert (card["probe"]["n_train"], card["probe"]["n_test"]) == (30, 30)
    with open(tmp_path / "pretrain.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 6))
    assert (tmp_path / "pretrain.png").stat().st_size > 0

    # rerunning a finished run resumes at the end and reproduces the same artifact
    again = pretrain(examples, tmp_path, config, progress=False)
    assert again.resumed_from_step == 15 and again.weights_digest == result.weights_digest
    # ... and its card keeps the training time of the run, not the resume's few seconds
    assert (
        json.loads((tmp_path / "card.json").read_text())["train_seconds"] == card["train_seconds"]
    )
    with pytest.raises(ValueError, match="another run"):
        pretrain(examples, tmp_path, PretrainConfig(epochs=6, **TINY), progress=False)


def test_a_warm_start_begins_from_the_given_encoder(tmp_path: Path) -> None:
    """With lr 0 a warm-started run keeps the start's weights (random init would not), its
    version and checkpoint fingerprint name the start, and other encoder sizes are refused."""
    examples = random_examples(16, timepoints=2, crop_size_vox=16, n_ehr=4, seed=0)
    config = PretrainConfig(epochs=2, batch_size=8, warmup_epochs=1, **TINY)
    first = pretrain(examples, tmp_path / "first", config, progress=False)
    still = dataclasses.replace(config, lr=0.0, final_lr=0.0)
    warm = pretrain(
        examples, tmp_path / "warm", still, progress=False, init_encoder=first.encoder_path
    )
    cold = pretrain(examples, tmp_path / "cold", still, progress=False)
    start = load_encoder(first.encoder_path).state_dict()
    for name, value in load_encoder(warm.encoder_path).state_dict().items():
        assert torch.allclose(value, start[name], atol=1e-6), name
    moved = [
        n for n, v in load_encoder(cold.encoder_path).state_dict().items()
        if not torch.allclose(v, start[n], atol=1e-6)
    ]  # fmt: skip
    assert moved  # a random init is elsewhere
    card = json.loads(warm.card_path.read_text())
    assert card["init"]["encoder_version"] == first.version
    assert card["init"]["sha256"] == file_sha256(first.encoder_path)
    assert json.loads(cold.card_path.read_text())["init"] == {"kind": "random"}
    assert warm.version == artifact_version(examples, still, init_encoder=first.encoder_path)
    assert warm.version != cold.version == artifact_version(examples, still)
    with pytest.raises(ValueError, match="another run"):  # a cold resume of the warm folder
        pretrain(examples, tmp_path / "warm", still, progress=False)
    wider = PretrainConfig(**{**TINY, "embed_dim": 48}, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="cannot warm-start .*embed_dim"):
        pretrain(examples, tmp_path / "w", wider, progress=False, init_encoder=first.encoder_path)


def test_linear_probe_auc_reads_a_planted_signal() -> None:
    train = random_examples(60, 2, 16, n_ehr=4, seed=1)
    test = random_examples(60, 2, 16, n_ehr=4, seed=2)
    encoder = build_encoder(train, PretrainConfig(**TINY))
    # random_examples plants a label-linked nodule and EHR signal: a linear probe on even an
    # untrained encoder's features reads it (0.935 here); with shuffled training labels it
    # cannot (0.475)
    assert linear_probe_auc(encoder, train, test) > 0.8
    shuffled = dataclasses.replace(train, label=np.random.default_rng(0).permutation(train.label))
    assert linear_probe_auc(encoder, shuffled, test) < 0.75
    with pytest.raises(ValueError):
        linear_probe_auc(encoder, random_examples(10, 2, 16, 4, labeled=False), test)


def test_diameter_probe_reads_nodule_size_from_image_tokens_only() -> None:
    train = random_examples(80, 2, 16, n_ehr=4, seed=1)
    test = random_examples(60, 2, 16, n_ehr=4, seed=2)
    encoder = build_encoder(train, PretrainConfig(**TINY))
    assert diameter_probe_r2(encoder, train, test) > 0.3  # planted spheres of that size
    shuffled = dataclasses.replace(
        test, diameter_mm=np.random.default_rng(0).permutation(test.diameter_mm)
    )
    assert diameter_probe_r2(encoder, train, shuffled) < 0.1  # no size signal left to read
    # centre patch token(s) beside the mean of the latest scan: 2 x embed_dim
    assert encoder_features(encoder, test, image_only=True).shape == (len(test), 64)


def test_cross_validated_diameter_probe_pools_as_named_and_needs_signal() -> None:
    examples = random_examples(100, 2, 24, n_ehr=4, seed=3)  # 3 x 3 x 3 patches: one centre
    encoder = build_encoder(examples, PretrainConfig(**TINY))
    centre = diameter_probe_cv_r2(encoder, examples, "centre")
    assert centre > 0.3  # planted spheres sit in the centre patch
    assert diameter_probe_cv_r2(encoder, examples, "mean") != pytest.approx(centre)
    shuffled = dataclasses.replace(
        examples, diameter_mm=np.random.default_rng(0).permutation(examples.diameter_mm)
    )
    assert diameter_probe_cv_r2(encoder, shuffled, "centre") < 0.1
    with pytest.raises(ValueError, match="pooling"):
        diameter_probe_cv_r2(encoder, examples, "max")
    with pytest.raises(ValueError, match="needs >= 10 nodules"):
        diameter_probe_cv_r2(encoder, examples.subset(np.arange(6)), "centre")


def test_checkpoint_is_atomic_and_restores_rng_streams(tmp_path: Path) -> None:
    import random

    from models.jepa.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = tmp_path / "checkpoint.pt"
    assert load_checkpoint(path) is None
    save_checkpoint(path, {"rng": rng_state(), "step": 7})
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    state = load_checkpoint(path)  # weights_only: plain containers and tensors only
    set_rng_state(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == drawn
    assert state["step"] == 7 and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_pretraining_at_params_yaml_sizes(tmp_path: Path) -> None:
    """One epoch at the real sizes (32^3 crops, 3 time points, params.yaml model): runs, no collapse."""
    examples = random_examples(64, timepoints=3, crop_size_vox=32, n_ehr=16, seed=0)
    result = pretrain(
        examples, tmp_path, PretrainConfig(epochs=1, monitor_examples=32), progress=False
    )
    assert result.steps == 2 and np.isfinite(result.final_loss) and not result.monitor["collapsed"]
    assert result.samples_per_s > 0

"""models/schedules.py: the per-step schedules and the AdamW groups both trainers build."""

import pytest
import torch

from models.encoders import EncoderConfig, MultimodalEncoder
from models.jepa.predictor import JEPAPredictor
from models.schedules import (
    ADAMW_BETAS,
    apply_lr,
    apply_weight_decay,
    cosine,
    linear,
    param_groups,
    warmup_cosine,
)


def test_schedules() -> None:
    values = [warmup_cosine(s, 100, 10, peak=1.0) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))
    assert warmup_cosine(200, 100, 10, peak=1.0, final=0.01) == pytest.approx(0.01)
    assert cosine(0, 10, 0.04, 0.2) == pytest.approx(0.04)
    assert cosine(10, 10, 0.04, 0.2) == pytest.approx(0.2)
    assert linear(5, 10, 0.996, 1.0) == pytest.approx(0.998)


def _encoder() -> MultimodalEncoder:
    torch.manual_seed(0)
    config = EncoderConfig(n_ehr_features=5, crop_size_vox=16, embed_dim=32, depth=2, heads=4)
    return MultimodalEncoder(config)


def _names(module: torch.nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in module.named_parameters() if id(p) in ids}


def test_weight_decay_skips_biases_norms_and_embedding_tables_and_reaches_every_weight() -> None:
    encoder = _encoder()
    decay, no_decay = param_groups(encoder, weight_decay=0.05, lr_scale=0.1)
    decayed, kept = _names(encoder, decay), _names(encoder, no_decay)
    assert decay["decay"] and decay["weight_decay"] == 0.05
    assert not no_decay["decay"] and no_decay["weight_decay"] == 0.0
    assert decay["lr_scale"] == no_decay["lr_scale"] == 0.1
    every = {name for name, _ in encoder.named_parameters()}
    assert decayed | kept == every and not decayed & kept  # each parameter in one group
    assert {"patch_pos_embedding", "ehr_pos_embedding", "modality_embedding"} <= kept
    assert {"blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "norm.weight"} <= kept
    assert decayed == {
        name for name, p in encoder.named_parameters() if p.ndim >= 2 and "embedding" not in name
    }
    assert "patch_embed.proj.weight" in decayed and "blocks.1.mlp.2.weight" in decayed
    predictor = JEPAPredictor(embed_dim=32, predictor_dim=16, depth=1, heads=2)
    assert "mask_token" in _names(predictor, param_groups(predictor, 0.05)[1])


def test_frozen_parameters_and_empty_groups_never_reach_the_optimiser() -> None:
    encoder = _encoder()
    encoder.blocks.requires_grad_(False)
    groups = param_groups(encoder, 0.05)
    named = set().union(*(_names(encoder, g) for g in groups))
    assert not any(name.startswith("blocks.") for name in named)
    only_norm = torch.nn.LayerNorm(4)  # 1-d weights only: the decayed group would be empty
    (group,) = param_groups(only_norm, 0.05)
    assert group["decay"] is False


def test_an_adamw_step_shrinks_decayed_weights_only_and_the_schedules_keep_it_so() -> None:
    """With zero gradients AdamW's update is the decoupled decay alone: p <- p (1 - lr wd)."""
    encoder = _encoder()
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(encoder, 0.0, lr_scale=0.5), betas=ADAMW_BETAS)
    apply_lr(optimizer, 0.2)  # 0.2 x lr_scale 0.5
    apply_weight_decay(optimizer, 0.3)  # only the decayed group
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.1)] * 2
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]
    for p in encoder.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    decayed = _names(encoder, optimizer.param_groups[0])
    for name, p in encoder.named_parameters():
        factor = 1.0 - 0.1 * 0.3 if name in decayed else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)

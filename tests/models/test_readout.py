"""What the diagnostic model reads: centre patches, attention pooling, the patch stems."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cohorts.example_set import FIELDS, random_examples
from models.data import example_tensors
from models.diagnostic import DiagnosticModel
from models.encoders import IMAGE, EncoderConfig, MultimodalEncoder
from models.export import ExportSettings, export_onnx, verify_parity
from models.finetune import load_model, save_model
from models.readout import READOUTS, AttentionPool, centre_patches, readout_width
from orchestration.params import load_params

SETTINGS = ExportSettings(**load_params()["export"])  # the product's opset and tolerance

N_EHR = 5


def _config(**overrides) -> EncoderConfig:
    return EncoderConfig(
        n_ehr_features=N_EHR, crop_size_vox=24, patch_size_vox=8, embed_dim=16, depth=1, heads=2,
        **overrides,
    )  # fmt: skip


def _inputs(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    ex = random_examples(n, timepoints=3, crop_size_vox=24, n_ehr=N_EHR, seed=seed)
    tensors = example_tensors(ex)
    return tuple(tensors[k] for k in FIELDS)


def test_centre_patches_of_odd_and_even_grids() -> None:
    odd = centre_patches((3, 3, 3))
    assert odd.sum() == 1 and bool(odd[13])  # z=y=x=1 in z-y-x raster order
    even = centre_patches((2, 2, 2))
    assert even.all()  # the centre is the corner every patch shares
    mixed = centre_patches((4, 3, 4)).reshape(4, 3, 4)
    assert mixed.sum() == 4 and mixed[1:3, 1, 1:3].all()


def test_centre_readout_sees_only_the_centre_patch() -> None:
    """The readout of encoded tokens is the latest scan's centre image token, nothing else."""
    torch.manual_seed(0)
    encoder = MultimodalEncoder(_config())
    model = DiagnosticModel(encoder, "imaging", readout="centre").eval()
    x = list(_inputs(1))
    tokens = torch.randn(1, encoder.n_tokens, 16)
    pooled = model.pooled(tokens, x[2], x[4])
    latest = int(torch.nonzero(x[2][0]).max())
    centre = (
        (encoder.token_modality == IMAGE)
        & (encoder.token_time_index == latest)
        & centre_patches(encoder.config.patch_grid)[encoder.token_patch_index]
    )
    assert centre.sum() == 1
    torch.testing.assert_close(pooled[0], tokens[0, centre][0])


def test_growth_readout_is_the_centre_change_since_the_earliest_scan() -> None:
    torch.manual_seed(0)
    encoder = MultimodalEncoder(_config())
    model = DiagnosticModel(encoder, "imaging", readout="growth_attention").eval()
    x = list(_inputs(4))
    x[2] = torch.tensor([[True, True, True], [False, True, True], [False, False, True], [True] * 3])
    tokens = torch.randn(4, encoder.n_tokens, 16)
    pooled = model.pooled(tokens, x[2], x[4])
    centre = (encoder.token_modality == IMAGE) & centre_patches(encoder.config.patch_grid)[
        encoder.token_patch_index
    ]
    at = {t: tokens[:, centre & (encoder.token_time_index == t)][:, 0] for t in range(3)}
    torch.testing.assert_close(pooled[:, :16], at[2])
    torch.testing.assert_close(pooled[0, 16:32], at[2][0] - at[0][0])
    torch.testing.assert_close(pooled[1, 16:32], at[2][1] - at[1][1])
    assert (pooled[2, 16:32] == 0).all()  # one scan: no growth to read


def test_attention_pool_ignores_unselected_tokens() -> None:
    torch.manual_seed(0)
    pool = AttentionPool(16, heads=2)
    tokens = torch.randn(3, 10, 16)
    select = torch.zeros(3, 10, dtype=torch.bool)
    select[:, :4] = True
    changed = tokens.clone()
    changed[:, 4:] = torch.randn(3, 6, 16) * 100
    torch.testing.assert_close(pool(tokens, select), pool(changed, select))


@pytest.mark.parametrize("readout", READOUTS)
def test_every_readout_trains_saves_loads_and_exports(readout: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DiagnosticModel(MultimodalEncoder(_config()), "multimodal", readout=readout).eval()
    assert model.head[0].normalized_shape == (readout_width(readout, 16),)
    inputs = _inputs()
    logits = model.logits(*inputs)
    logits.sum().backward()  # the pool (if any) is in the trained head group
    head = {id(p) for p in model.head_modules().parameters()}
    assert all(p.grad is not None for p in model.head_modules().parameters())
    if model.pool is not None:
        assert {id(p) for p in model.pool.parameters()} <= head
    save_model(model, tmp_path / "m.safetensors", {"readout": readout})
    again = load_model(tmp_path / "m.safetensors")
    assert again.readout == readout
    with torch.no_grad():
        torch.testing.assert_close(again(*inputs), model(*inputs))
    example = (inputs[0][:2].float(), *(t[:2] for t in inputs[1:]))
    export_onnx(model, example, tmp_path / "m.onnx", {"model": readout}, SETTINGS.opset)
    parity = verify_parity(
        model,
        tmp_path / "m.onnx",
        tuple(t.numpy() for t in _inputs(9, 3)),
        SETTINGS.parity_tolerance,
    )
    assert parity.passed, parity


def test_conv_stem_tokens_depend_only_on_their_own_patch() -> None:
    """JEPA masking stays leak-free: a patch's token ignores its neighbours' voxels."""
    torch.manual_seed(0)
    encoder = MultimodalEncoder(_config(patch_stem="conv", stem_width=4)).eval()
    crops = torch.randn(1, 1, 24, 24, 24)
    before = encoder.patch_embed(crops)
    changed = crops.clone()
    changed[:, :, :8, :8, :8] += 5.0  # patch 0 only
    after = encoder.patch_embed(changed)
    assert before.shape == (1, 27, 16)
    assert not torch.allclose(before[0, 0], after[0, 0])
    torch.testing.assert_close(before[0, 1:], after[0, 1:])


def test_conv_stem_model_exports_with_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DiagnosticModel(MultimodalEncoder(_config(patch_stem="conv", stem_width=4))).eval()
    inputs = _inputs()
    export_onnx(
        model,
        (inputs[0][:2].float(), *(t[:2] for t in inputs[1:])),
        tmp_path / "c.onnx",
        {},
        SETTINGS.opset,
    )
    parity = verify_parity(
        model, tmp_path / "c.onnx", tuple(t.numpy() for t in inputs), SETTINGS.parity_tolerance
    )
    assert parity.passed, parity


def test_stem_and_readout_names_are_checked() -> None:
    with pytest.raises(ValueError, match="patch_stem"):
        _config(patch_stem="resnet")
    with pytest.raises(ValueError, match="readout"):
        DiagnosticModel(MultimodalEncoder(_config()), readout="max")
    assert np.isclose(readout_width("centre_attention", 8), 16)

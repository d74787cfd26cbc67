"""Multimodal encoder and diagnostic model: token layout, masking invariances, readout, ONNX parity."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cohorts.example_set import FIELDS, ExampleSet, random_examples
from models.data import example_tensors
from models.diagnostic import DiagnosticModel
from models.encoders import (
    EHR,
    IMAGE,
    EncoderConfig,
    MultimodalEncoder,
    TokenLayout,
    load_encoder,
    save_encoder,
)
from models.jepa.config import PretrainConfig, encoder_config_for

N_EHR = 6
CONFIG = EncoderConfig(n_ehr_features=N_EHR, crop_size_vox=16, embed_dim=32, depth=2, heads=4)


@pytest.fixture(scope="module")
def examples() -> ExampleSet:
    return random_examples(12, timepoints=3, crop_size_vox=16, n_ehr=N_EHR, seed=1)


def _inputs(ex: ExampleSet) -> dict[str, torch.Tensor]:
    t = example_tensors(ex)
    return {k: t[k].clone() for k in FIELDS}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread (and don't fight parallel test workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(modalities: str = "multimodal", seed: int = 0) -> DiagnosticModel:
    torch.manual_seed(seed)
    return DiagnosticModel(MultimodalEncoder(CONFIG), modalities).eval()


def test_config_round_trip_and_validation() -> None:
    assert EncoderConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError, match="multiple"):
        EncoderConfig(n_ehr_features=3, crop_size_vox=20, patch_size_vox=8)
    with pytest.raises(ValueError, match="unknown"):
        EncoderConfig.from_dict({**CONFIG.to_dict(), "colour": 1})


def test_layout_orders_time_then_patches_then_ehr() -> None:
    layout = TokenLayout.from_config(CONFIG)
    p, e, t = CONFIG.patches_per_scan, CONFIG.ehr_tokens, CONFIG.max_timepoints
    assert layout.patch_grid == (2, 2, 2) and p == 8
    assert layout.n_tokens == CONFIG.n_tokens == t * (p + e)
    for k in range(t):
        block = slice(k * (p + e), (k + 1) * (p + e))
        assert (layout.time_index[block] == k).all()
        assert layout.modality[block].tolist() == [IMAGE] * p + [EHR] * e
        assert layout.patch_index[block].tolist() == list(range(p)) + list(range(e))
    params = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
    examples = random_examples(
        2, params["examples"]["max_timepoints"], params["curate"]["crop_size_vox"], n_ehr=12
    )
    default = encoder_config_for(examples, PretrainConfig.from_dict(params["pretrain"]))
    grid = params["curate"]["crop_size_vox"] // params["pretrain"]["patch_size_vox"]
    expected = params["examples"]["max_timepoints"] * (grid**3 + params["pretrain"]["ehr_tokens"])
    assert default.n_tokens == expected
    assert default.embed_dim == params["pretrain"]["embed_dim"]


def test_shapes_validity_and_embeddings(examples: ExampleSet) -> None:
    model = _model()
    enc = model.encoder
    x = _inputs(examples)
    tokens, valid = enc.embed(*x.values())
    b, n, d = len(examples), CONFIG.n_tokens, CONFIG.embed_dim
    assert tokens.shape == (b, n, d) and valid.shape == (b, n) and valid.dtype == torch.bool
    out = enc(*x.values())
    assert out.shape == (b, n, d) and torch.isfinite(out).all()
    assert enc.position_embedding().shape == (n, d)
    assert enc.time_embedding(torch.zeros(2, 5, 3)).shape == (2, 5, 3, d)
    scan = x["scan_mask"][:, enc.layout.time_index]
    ehr_ok = (x["scan_mask"] & x["ehr_mask"])[:, enc.layout.time_index]
    image = enc.layout.modality == IMAGE
    assert torch.equal(valid[:, image], scan[:, image])
    assert torch.equal(valid[:, ~image], ehr_ok[:, ~image])


def test_padded_scans_and_missing_ehr_do_not_change_the_prediction(examples: ExampleSet) -> None:
    model = _model()
    x = _inputs(examples)
    assert (~x["scan_mask"]).any() and (x["scan_mask"] & ~x["ehr_mask"]).any()
    ref = model(*x.values())
    y = {k: v.clone() for k, v in x.items()}
    absent = ~y["scan_mask"]
    y["crops_hu"][absent] = torch.randint(
        -1000, 3000, y["crops_hu"][absent].shape, dtype=torch.int16
    )
    y["months_before_latest"][absent] = 123.0
    no_ehr = ~(y["scan_mask"] & y["ehr_mask"])
    y["ehr"][no_ehr] = float("nan")
    out = model(*y.values())
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # ...while a present scan does change it (the invariance above is not vacuous).
    z = {k: v.clone() for k, v in x.items()}
    z["crops_hu"][:, -1] = 300
    assert not torch.allclose(model(*z.values()), ref, atol=1e-4)
    # Encoder outputs of valid tokens are unchanged too.
    _, valid = model.encoder.embed(*x.values())
    torch.testing.assert_close(
        model.encoder(*y.values())[valid], model.encoder(*x.values())[valid], rtol=0, atol=1e-5
    )


def test_no_nan_without_ehr_or_without_any_token(examples: ExampleSet) -> None:
    model = _model()
    x = _inputs(examples)
    x["ehr_mask"][:] = False
    x["ehr"][:] = float("inf")
    assert torch.isfinite(model(*x.values())).all()
    x["scan_mask"][0] = False  # a row with no present scan at all
    keep = torch.zeros(len(examples), CONFIG.n_tokens, dtype=torch.bool)
    assert torch.isfinite(model.encoder(*x.values(), keep=keep)).all()
    prob = model(*x.values())
    assert torch.isfinite(prob).all() and ((prob >= 0) & (prob <= 1)).all()


def test_keep_restricts_attention(examples: ExampleSet) -> None:
    """Tokens outside `keep` cannot influence kept tokens (the JEPA context encoder relies on it)."""
    enc = _model().encoder
    x = _inputs(examples)
    keep = enc.layout.time_index[None, :].expand(len(examples), -1) == 2
    ref = enc(**x, keep=keep)
    y = {k: v.clone() for k, v in x.items()}
    y["crops_hu"][:, :2] = 500
    torch.testing.assert_close(enc(**y, keep=keep)[keep], ref[keep], rtol=0, atol=1e-5)


def test_imaging_only_ignores_ehr(examples: ExampleSet) -> None:
    model = _model("imaging")
    x = _inputs(examples)
    ref = model(*x.values())
    y = {k: v.clone() for k, v in x.items()}
    y["ehr"] = torch.randn_like(y["ehr"]) * 1e3
    y["ehr_mask"] = ~y["ehr_mask"]
    torch.testing.assert_close(model(*y.values()), ref, rtol=0, atol=0)
    multimodal = _model("multimodal")
    multimodal.load_state_dict(model.state_dict())
    assert not torch.allclose(multimodal(*y.values()), multimodal(*x.values()))
    with pytest.raises(ValueError, match="modalities"):
        DiagnosticModel(MultimodalEncoder(CONFIG), "ehr")


def test_readout_uses_latest_scan(examples: ExampleSet) -> None:
    model = _model()
    x = _inputs(examples)
    mask = model.readout_mask(x["scan_mask"], x["ehr_mask"])
    # Left-padded: the latest scan is the last column; its image tokens are always read.
    latest = model.encoder.layout.time_index == CONFIG.max_timepoints - 1
    image = model.encoder.layout.modality == IMAGE
    assert mask[:, latest & image].all() and not mask[:, ~latest].any()
    # Right-padded inputs: the readout follows scan_mask, not the column position.
    right = torch.tensor([[True, False, False]])
    ehr_mask = torch.tensor([[True, False, False]])
    mask = model.readout_mask(right, ehr_mask)[0]
    assert torch.equal(mask, model.encoder.layout.time_index == 0)


def test_encoder_save_load_round_trip(examples: ExampleSet, tmp_path: Path) -> None:
    enc = _model().encoder
    enc.set_ehr_normalisation(torch.arange(N_EHR, dtype=torch.float32), torch.full((N_EHR,), 2.0))
    save_encoder(enc, tmp_path / "encoder.safetensors", card={"version": "test"})
    loaded = load_encoder(tmp_path / "encoder.safetensors").eval()
    x = _inputs(examples)
    assert loaded.config == enc.config
    torch.testing.assert_close(loaded(*x.values()), enc(*x.values()), rtol=0, atol=0)


def test_onnx_export_matches_torch(examples: ExampleSet, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _model()
    model.encoder.set_ehr_normalisation(torch.full((N_EHR,), 0.5), torch.full((N_EHR,), 3.0))
    args = tuple(_inputs(examples.subset(np.arange(2))).values())
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=list(FIELDS),
        output_names=["probability"],
        dynamic_axes={**{k: {0: "batch"} for k in FIELDS}, "probability": {0: "batch"}},
        opset_version=18,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _inputs(examples)  # a different batch size than at export
    got = session.run(None, {k: v.numpy() for k, v in x.items()})[0]
    with torch.no_grad():
        want = model(*x.values()).numpy()
    assert got.shape == (len(examples),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

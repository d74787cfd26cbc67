"""ONNX export: round trip, embedded metadata, parity, dynamic batch, integrity, torch-free load."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from cohorts.example_set import FIELDS as DATA_FIELDS
from cohorts.example_set import random_examples
from models.export import FIELDS, ExportSettings, export_onnx, record_parity, verify_parity
from models.onnx_runtime import (
    ModelIntegrityError,
    load_verified_session,
    predict_onnx,
    read_onnx_metadata,
    sha256_file,
)
from orchestration.params import load_params

REPO = Path(__file__).resolve().parents[2]
N_EHR = 5
SETTINGS = ExportSettings(**load_params()["export"])  # the product's opset and tolerance


class TinyDiagnostic(nn.Module):
    """Same five inputs as DiagnosticModel: conv over HU crops, masked means, linear head."""

    def __init__(self, n_ehr: int = N_EHR) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4 + n_ehr + 1, 1)
        self.register_buffer("hu_low", torch.tensor(-1000.0))
        self.register_buffer("hu_span", torch.tensor(1400.0))

    def forward(
        self,
        crops_hu: torch.Tensor,
        months_before_latest: torch.Tensor,
        scan_mask: torch.Tensor,
        ehr: torch.Tensor,
        ehr_mask: torch.Tensor,
    ) -> torch.Tensor:
        b, t = crops_hu.shape[:2]
        x = ((crops_hu - self.hu_low) / self.hu_span).clamp(0, 1).flatten(0, 1).unsqueeze(1)
        img = self.conv(x).mean(dim=(2, 3, 4)).reshape(b, t, -1)
        img = torch.where(scan_mask[..., None], img, torch.zeros_like(img))
        clin = torch.where(ehr_mask[..., None], ehr, torch.zeros_like(ehr))
        n_scans = scan_mask.float().sum(dim=1, keepdim=True).clamp_min(1.0)
        pooled = torch.cat([img.sum(1), clin.sum(1)], dim=-1) / n_scans
        months = (months_before_latest * scan_mask.float()).amax(dim=1, keepdim=True) / 12.0
        return torch.sigmoid(self.head(torch.cat([pooled, months], dim=-1)).squeeze(-1))


def _inputs(
    b: int, t: int = 3, s: int = 8, f: int = N_EHR, seed: int = 0
) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    scan_mask = rng.random((b, t)) < 0.7
    scan_mask[:, -1] = True
    return (
        rng.integers(-1000, 400, size=(b, t, s, s, s)).astype(np.int16),
        rng.uniform(0, 24, size=(b, t)).astype(np.float32),
        scan_mask,
        rng.normal(size=(b, t, f)).astype(np.float32),
        scan_mask & (rng.random((b, t)) < 0.8),
    )


def _torch(arrays: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.from_numpy(a.astype(np.float32) if a.dtype == np.int16 else a) for a in arrays
    )


METADATA = {
    "model_version": "m-test",
    "encoder_version": "e-test",
    "data_versions": json.dumps({"internal": "d1"}),
    "crop_shape_zyx": json.dumps([8, 8, 8]),
    "crop_spacing_mm": "1.0",
    "ehr_feature_names": json.dumps([f"f{i}" for i in range(N_EHR)]),
    "hu_window": json.dumps([-1000.0, 400.0]),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyDiagnostic, Path]:
    model = TinyDiagnostic()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, _torch(_inputs(3)), path, METADATA, opset=18)
    return model, path


def test_fields_agree_with_examples_contract() -> None:
    assert FIELDS == DATA_FIELDS


def test_export_writes_metadata_and_card(exported: tuple[TinyDiagnostic, Path]) -> None:
    _, path = exported
    proto = onnx.load(str(path))
    assert {p.key: p.value for p in proto.metadata_props} == METADATA
    assert read_onnx_metadata(path) == METADATA
    assert proto.opset_import[0].version == 18
    card = json.loads((path.parent / "card.json").read_text())
    assert card["sha256"] == sha256_file(path)
    assert card["exporter"] == "torchscript" and card["opset"] == 18
    assert [i["name"] for i in card["inputs"]] == list(FIELDS)
    assert card["inputs"][0]["shape"] == ["batch", 3, 8, 8, 8]
    assert card["inputs"][2]["dtype"] == "bool"
    assert card["outputs"] == [{"name": "probability", "dtype": "float32", "shape": ["batch"]}]
    assert card["metadata"] == METADATA
    assert not list(path.parent.glob(".*.tmp"))


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_parity_and_dynamic_batch(exported: tuple[TinyDiagnostic, Path], batch: int) -> None:
    model, path = exported
    result = verify_parity(model, path, _inputs(batch, seed=batch), SETTINGS.parity_tolerance)
    assert result.n_cases == batch
    assert result.passed and result.max_abs_diff <= SETTINGS.parity_tolerance


def test_parity_is_recorded_and_card_still_verifies(
    exported: tuple[TinyDiagnostic, Path], tmp_path: Path
) -> None:
    model, path = exported
    card_path = tmp_path / "card.json"
    card_path.write_text((path.parent / "card.json").read_text())
    card = record_parity(
        card_path, verify_parity(model, path, _inputs(4), SETTINGS.parity_tolerance)
    )
    assert card["extra"]["parity"]["passed"] is True
    session, loaded = load_verified_session(path, card_path)
    assert loaded["extra"]["parity"]["n_cases"] == 4
    probs = predict_onnx(session, _inputs(5, seed=3))
    assert probs.shape == (5,) and np.all((probs >= 0) & (probs <= 1))
    # idle intra-op threads sleep: spinning ones take a core from the service's header workers
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_tampered_model_is_refused(exported: tuple[TinyDiagnostic, Path], tmp_path: Path) -> None:
    _, path = exported
    copy = tmp_path / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match"):
        load_verified_session(copy, path.parent / "card.json")


def _real_shaped_round_trip(tmp_path: Path, dynamo: bool | None) -> str:
    """Export on npz-shaped examples (T=3, S=32, int16 HU), check parity at two batch sizes."""
    ex = random_examples(6, timepoints=3, crop_size_vox=32, n_ehr=N_EHR, seed=1)
    arrays = tuple(getattr(ex, name) for name in FIELDS)
    model = TinyDiagnostic()
    path = tmp_path / "model.onnx"
    card = export_onnx(model, _torch(arrays), path, METADATA, SETTINGS.opset, dynamo=dynamo)
    assert verify_parity(model, path, arrays, SETTINGS.parity_tolerance).passed
    more = random_examples(11, timepoints=3, crop_size_vox=32, n_ehr=N_EHR, seed=2)
    assert verify_parity(
        model, path, tuple(getattr(more, n) for n in FIELDS), SETTINGS.parity_tolerance
    ).passed
    return card.exporter


def test_real_shaped_examples_round_trip(tmp_path: Path) -> None:
    assert _real_shaped_round_trip(tmp_path, dynamo=None) == "torchscript"


def test_dynamo_exporter_round_trip(tmp_path: Path) -> None:
    # The fallback exporter (torch.export based); 5-15 s.
    assert _real_shaped_round_trip(tmp_path, dynamo=True) == "dynamo"


def test_export_refuses_random_forward_and_bad_metadata(tmp_path: Path) -> None:
    class Noisy(TinyDiagnostic):
        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return super().forward(*inputs) + torch.rand(inputs[0].shape[0])

    with pytest.raises(ValueError, match="not deterministic"):
        export_onnx(Noisy(), _torch(_inputs(2)), tmp_path / "m.onnx", METADATA, SETTINGS.opset)
    with pytest.raises(TypeError, match="strings"):
        export_onnx(
            TinyDiagnostic(), _torch(_inputs(2)), tmp_path / "m.onnx", {"n": 3}, SETTINGS.opset
        )  # type: ignore[dict-item]
    assert not (tmp_path / "m.onnx").exists()


def test_diagnostic_model_exports(tmp_path: Path) -> None:
    from models.diagnostic import DiagnosticModel
    from models.encoders import EncoderConfig, MultimodalEncoder

    torch.manual_seed(0)
    config = EncoderConfig(
        n_ehr_features=N_EHR, crop_size_vox=16, patch_size_vox=8, embed_dim=32, depth=1, heads=2
    )
    model = DiagnosticModel(MultimodalEncoder(config), modalities="multimodal")
    ex = random_examples(4, timepoints=3, crop_size_vox=16, n_ehr=N_EHR, seed=0)
    arrays = tuple(getattr(ex, name) for name in FIELDS)
    path = tmp_path / "model.onnx"
    export_onnx(model, _torch(arrays), path, METADATA, SETTINGS.opset)
    more = random_examples(9, timepoints=3, crop_size_vox=16, n_ehr=N_EHR, seed=5)
    result = verify_parity(
        model, path, tuple(getattr(more, n) for n in FIELDS), SETTINGS.parity_tolerance
    )
    assert result.passed, result


def test_runtime_module_does_not_import_torch() -> None:
    code = "import models.onnx_runtime, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)

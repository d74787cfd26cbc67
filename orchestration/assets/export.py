"""ONNX export of the diagnostic models, parity with torch, and promotion to production."""

import json

import dagster as dg
import numpy as np
import torch

from cohorts.files import atomic_write_json
from models.data import FIELDS, load_examples
from models.export import export_onnx, record_parity, verify_parity
from models.finetune import load_model
from models.protocol import Ensemble
from orchestration.assets.evaluation import evaluation, latest_models
from orchestration.metadata import markdown_table
from orchestration.params import section
from orchestration.resources import PipelinePaths

_EXPORT = section("export")
_CURATE = section("curate")
EXPORTED_MODELS: tuple[str, ...] = ("jepa", "imaging_only")


class ExportConfig(dg.Config):
    opset: int = _EXPORT["opset"]
    parity_tolerance: float = _EXPORT["parity_tolerance"]
    crop_spacing_mm: float = _CURATE["crop_spacing_mm"]


PARITY_CASES = 32


def _ensemble(folder, name: str) -> Ensemble:
    """Every fold (x seed) member of one model kind: what was evaluated on the external cohort."""
    members = [load_model(p) for p in sorted((folder / name).glob("*.safetensors"))]
    return Ensemble(members).eval()


@dg.asset(
    group_name="deployment",
    deps=[evaluation],
    kinds={"onnx"},
    code_version="1",
    description="The JEPA-finetuned model (and the imaging-only fallback), each the ensemble of "
    "its fold models, as ONNX with embedded input spec and versions, a sha256 card, and "
    "torch-vs-onnxruntime parity on external cases.",
)
def onnx_model(
    context: dg.AssetExecutionContext, config: ExportConfig, paths: PipelinePaths
) -> dg.MaterializeResult:
    version, folder = latest_models(paths)
    card = json.loads((folder / "card.json").read_text())
    # Parity is numerics, not accuracy: any real cases do; every internal patient is some
    # fold member's training data, so the external cohort is used, as in deployment.
    external = load_examples(paths.examples("external"))
    held_out = external.subset(np.arange(min(PARITY_CASES, len(external))))
    inputs = tuple(getattr(held_out, f) for f in FIELDS)
    example = tuple(torch.from_numpy(np.asarray(a[:2])) for a in inputs)
    example = (example[0].float(), *example[1:])
    rows, exported = [], {}
    for name in EXPORTED_MODELS:
        if not (folder / name).is_dir():
            continue
        model = _ensemble(folder, name)
        onnx_path = folder / "onnx" / name / "model.onnx"
        metadata = {
            "model": name,
            "model_version": version,
            "encoder_version": card["encoder_version"],
            "inputs": json.dumps(list(FIELDS)),
            "crop_shape_zyx": json.dumps(list(held_out.crops_hu.shape[2:])),
            "crop_spacing_mm": str(config.crop_spacing_mm),
            "max_timepoints": str(held_out.crops_hu.shape[1]),
            "ehr_feature_names": json.dumps([str(n) for n in held_out.ehr_feature_names]),
            "hu_window": json.dumps(list(model.members[0].encoder.config.hu_window)),
            "output": "probability of malignancy per patient",
        }
        export_onnx(model, example, onnx_path, metadata, opset=config.opset)
        parity = verify_parity(model, onnx_path, inputs, tolerance=config.parity_tolerance)
        record_parity(onnx_path.parent / "card.json", parity)
        exported[name] = str(onnx_path.relative_to(paths.artifacts))
        rows.append(
            {
                "model": name,
                "max_abs_diff": parity.max_abs_diff,
                "cases": parity.n_cases,
                "passed": parity.passed,
            }
        )
    atomic_write_json(folder / "onnx" / "exported.json", {"version": version, "models": exported})
    return dg.MaterializeResult(
        metadata={
            "version": dg.MetadataValue.text(version),
            "parity": markdown_table(rows),
            **{
                f"parity_max_abs_diff/{r['model']}": dg.MetadataValue.float(r["max_abs_diff"])
                for r in rows
            },
        },
        data_version=dg.DataVersion(version),
    )


@dg.asset(
    group_name="deployment",
    deps=[onnx_model],
    kinds={"onnx"},
    code_version="1",
    description="Points artifacts/models/production.json at the newest model whose blocking "
    "checks passed; older versions stay on disk.",
)
def production_model(paths: PipelinePaths) -> dg.MaterializeResult:
    version, folder = latest_models(paths)
    exported = json.loads((folder / "onnx" / "exported.json").read_text())
    pointer = {"version": version, "models": exported["models"]}
    atomic_write_json(paths.artifacts / "models" / "production.json", pointer)
    return dg.MaterializeResult(
        metadata={"version": dg.MetadataValue.text(version)}, data_version=dg.DataVersion(version)
    )

"""Asset checks at the promotion boundary: a failing blocking check stops what is downstream."""

import json

import dagster as dg

from models.onnx_runtime import sha256_file
from orchestration.assets.export import onnx_model
from orchestration.lineage import MODELS, built_on
from orchestration.resources import PipelinePaths


@dg.asset_check(asset=onnx_model, blocking=True)
def onnx_parity(
    context: dg.AssetCheckExecutionContext, paths: PipelinePaths
) -> dg.AssetCheckResult:
    """Every exported ONNX file matches its card's sha256 and torch within the parity tolerance."""
    version, folder = built_on(context, paths, MODELS)
    exported = json.loads((folder / "onnx" / "exported.json").read_text())["models"]
    failures, details = [], {}
    for name, relative in exported.items():
        onnx_path = paths.artifacts / relative
        card = json.loads((onnx_path.parent / "card.json").read_text())
        parity = card.get("extra", {}).get("parity", {})
        sha_ok = sha256_file(onnx_path) == card["sha256"]
        passed = bool(parity.get("passed")) and sha_ok
        details[name] = {"max_abs_diff": parity.get("max_abs_diff"), "sha256_ok": sha_ok}
        if not passed:
            failures.append(name)
    return dg.AssetCheckResult(
        passed=bool(exported) and not failures,
        metadata={"version": version, "models": details, "failed": failures},
    )

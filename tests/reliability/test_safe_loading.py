"""Safe artifacts: no pickle on any load path, ONNX only with a matching card, no path traversal.

The static check parses every Python file of the product (cohorts, models, orchestration,
feature_repo) and fails on any call that can unpickle: torch.load without
weights_only=True, pickle/dill/cloudpickle/joblib loads, np.load(allow_pickle=True),
pandas.read_pickle and yaml.load without a safe loader. The checker itself is tested on
planted bad code so it cannot silently pass.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from dicom_factory import curation_config, write_ct_series
from onnx import TensorProto, helper

from cohorts.dicom import curate_cohort
from models.finetune import load_model
from models.jepa.checkpoint import load_checkpoint, save_checkpoint
from models.onnx_runtime import ModelIntegrityError, load_verified_session, sha256_file

REPO = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = ("cohorts", "models", "orchestration", "feature_repo")
PICKLE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_loads(source: str, filename: str) -> list[str]:
    """Every unpickling call or import in ``source`` as 'file:line what'."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            for name in names:
                if name.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{filename}:{node.lineno} import {name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        where = f"{filename}:{node.lineno} {name}"
        if name.endswith("torch.load"):
            weights_only = _keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where} without weights_only=True")
        elif name.endswith("np.load") or name.endswith("numpy.load"):
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{where} with allow_pickle")
        elif last in ("read_pickle", "to_pickle") or name.split(".")[0] in PICKLE_MODULES:
            found.append(where)
        elif name.endswith("yaml.load") or name.endswith("yaml.load_all"):
            loader = _dotted(_keyword(node, "Loader") or ast.Constant(None))
            if len(node.args) < 2 and "Safe" not in loader:
                found.append(f"{where} without SafeLoader")
        elif name.endswith("yaml.unsafe_load") or name.endswith("jit.load"):
            found.append(where)
    return found


def test_checker_flags_planted_unsafe_loads() -> None:
    bad = (
        "import pickle\nimport torch, numpy as np, yaml, pandas as pd\n"
        "torch.load('a')\ntorch.load('a', weights_only=False)\nnp.load('a', allow_pickle=True)\n"
        "pd.read_pickle('a')\nyaml.load(open('a'))\npickle.loads(b'')\n"
    )
    assert len(unsafe_loads(bad, "bad.py")) == 7
    good = (
        "import torch, numpy as np, yaml\ntorch.load('a', weights_only=True)\n"
        "np.load('a')\nnp.load('a', allow_pickle=False)\nyaml.safe_load('a')\n"
        "yaml.load('a', Loader=yaml.SafeLoader)\n"
    )
    assert unsafe_loads(good, "good.py") == []


def test_no_unsafe_load_anywhere_in_the_product(figures: dict[str, Any]) -> None:
    files = [p for d in PRODUCT_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 20
    found = [
        hit for path in files for hit in unsafe_loads(path.read_text(), str(path.relative_to(REPO)))
    ]
    figures["static_scan"] = {"python_files": len(files), "unsafe_loads": len(found)}
    assert found == []


class _Payload:
    """Unpickling this would run code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 3, "evil": _Payload(marker)}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        load_checkpoint(path)
    assert not marker.exists()
    save_checkpoint(path, {"step": 3, "weights": torch.ones(2)})  # tensors and plain values load
    assert load_checkpoint(path)["step"] == 3


def test_model_loader_accepts_only_safetensors(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "model.safetensors"
    torch.save({"evil": _Payload(marker)}, path)  # a pickle under a safetensors name
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; no code may run
        load_model(path)
    assert not marker.exists()


def _identity_onnx(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["probability"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_onnx_loads_only_when_its_sha256_matches_the_card(tmp_path: Path) -> None:
    onnx_path, card = tmp_path / "model.onnx", tmp_path / "card.json"
    _identity_onnx(onnx_path)
    card.write_text(json.dumps({"sha256": sha256_file(onnx_path)}))
    session, loaded = load_verified_session(onnx_path)
    out = session.run(None, {"x": np.ones((1, 2), np.float32)})[0]
    assert loaded["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert out.tolist() == [[1.0, 1.0]]
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")  # a swapped or tampered file
    with pytest.raises(ModelIntegrityError, match="does not match"):
        load_verified_session(onnx_path)
    card.write_text(json.dumps({"name": "no digest"}))
    with pytest.raises(ModelIntegrityError, match="no sha256"):
        load_verified_session(onnx_path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_ids_never_write_outside_the_curated_folder(tmp_path: Path) -> None:
    """Series UIDs, annotation and label ids like '../../etc' only ever become keyed hashes."""
    raw, out = tmp_path / "raw", tmp_path / "curated" / "cohort"
    hostile = "../../../escape"
    spec = write_ct_series(raw / "dicom" / "a", n_slices=10, series_uid=hostile, seed=1)
    pd.DataFrame(
        [
            (hostile, 0.0, 0.0, -12.0, 5.0),
            ("../../etc/passwd", 0.0, 0.0, -12.0, 5.0),
            ("/absolute/path", 0.0, 0.0, -12.0, 5.0),
        ],
        columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
    ).to_csv(raw / "annotations.csv", index=False)
    pd.DataFrame(
        {
            "person_id": ["../../person", "/etc/shadow"],
            "seriesuid": [hostile, "../../x"],
            "malignant": [1, 0],
            "diagnosis_date": ["2020-04-01", "../.."],
        }
    ).to_csv(raw / "labels.csv", index=False)
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    summary = curate_cohort(raw, out, curation_config(crop_size_vox=8), progress=False)
    assert summary.accepted == 1 and summary.nodules == 1 and spec.series_uid == hostile
    assert {p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(out)} == before
    index = pd.read_parquet(out / "index.parquet")
    assert all(re.fullmatch(r"volumes/S[0-9a-f]{16}\.npy", p) for p in index["volume_path"])
    nodules = pd.read_parquet(out / "nodules.parquet")
    assert all(re.fullmatch(r"crops/S[0-9a-f]{16}_\d+\.npy", p) for p in nodules["crop_path"])
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
        assert ".." not in path.name
    labels = pd.read_parquet(out / "labels.parquet")
    assert labels["patient_id"].str.fullmatch(r"P[0-9a-f]{16}").all()
    assert labels["diagnosis_date"].isna().sum() == 1  # '../..' is no date

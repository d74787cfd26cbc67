"""The walking skeleton end to end: every asset materialises on the tiny profile with a real
Dagster instance, a real Feast store, real DICOM files and real onnxruntime."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from orchestration.dvc_versions import dvc_md5

CHAIN = [
    "raw_archive",
    "curated_scans",
    "ehr_features",
    "training_examples",
    "jepa_encoder",
    "diagnostic_models",
    "cause_visibility",
    "evaluation",
    "onnx_model",
    "production_model",
]


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline: tuple) -> tuple:
    return tiny_pipeline


def test_every_asset_materialises(pipeline) -> None:
    root, instance, result = pipeline
    assert result.success
    for name in CHAIN:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        assert event is not None, f"{name} was not materialised"


def test_dvc_tracked_outputs_carry_their_md5(pipeline) -> None:
    """The UI links each DVC-tracked output to its exact data version (DVC's own md5)."""
    root, instance, _ = pipeline
    for name, path in (
        ("raw_archive", root / "data" / "raw"),
        ("curated_scans", root / "data" / "curated"),
        ("training_examples", root / "data" / "examples"),
    ):
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        metadata = event.asset_materialization.metadata
        assert metadata["dvc_md5"].value == dvc_md5(path), name


def test_parity_check_passes_and_is_blocking(pipeline) -> None:
    _, _, result = pipeline
    checks = result.get_asset_check_evaluations()
    parity = [c for c in checks if c.check_name == "onnx_parity"]
    assert parity and parity[0].passed
    assert parity[0].blocking


def test_outputs_follow_the_contracts(pipeline) -> None:
    root, _, _ = pipeline
    evaluation = json.loads((root / "metrics" / "evaluation.json").read_text())
    for cohort in ("internal", "external"):
        for model in (
            "jepa",
            "jepa_probe",
            "multimodal",
            "imaging_only",
            "clinical_brock",
            "clinical_mayo",
            "oracle_brock",
            "clinical_refit",
        ):
            entry = evaluation[cohort][model]
            assert 0.0 <= entry["auc"] <= 1.0
            assert entry["ci"][0] <= entry["auc"] <= entry["ci"][1]
        assert set(evaluation["delong"][cohort]) >= {"jepa_vs_multimodal", "jepa_vs_imaging_only"}
    # out of fold: every labeled internal patient is in the internal AUC
    labeled = np.load(root / "data" / "examples" / "internal.npz", allow_pickle=False)["label"]
    assert evaluation["internal"]["jepa"]["n"] == int((labeled >= 0).sum())
    primary = evaluation["comparisons"]["primary"]
    assert (primary["model"], primary["versus"], primary["cohort"]) == (
        "jepa",
        "multimodal",
        "internal",
    )
    assert 0.0 <= primary["p"] <= 1.0 and primary["ci"][0] <= primary["diff"] <= primary["ci"][1]
    assert all("p_holm" in c for c in evaluation["comparisons"]["secondary"])
    curve = evaluation["label_efficiency"]
    assert curve["fractions"][-1] == 1.0 and set(curve["models"]) == {"jepa", "multimodal"}
    assert (root / "metrics" / "label_efficiency.png").is_file()
    assert (root / "metrics" / "reliability_internal.png").is_file()
    production = json.loads((root / "artifacts" / "models" / "production.json").read_text())
    onnx_path = root / "artifacts" / production["models"]["jepa"]
    assert onnx_path.is_file()
    card = json.loads((onnx_path.parent / "card.json").read_text())
    assert card["extra"]["parity"]["passed"]
    examples = np.load(root / "data" / "examples" / "internal.npz", allow_pickle=False)
    assert examples["crops_hu"].dtype == np.int16
    assert set(np.unique(examples["label"])) <= {0, 1}
    results = (root / "RESULTS.md").read_text()
    assert results.startswith("# Results")
    # provenance names what the numbers came from: the cohorts' content versions (the
    # manifests training_examples wrote), the models and the encoder those models were built on
    manifests = json.loads((root / "data" / "examples" / "manifests.json").read_text())
    data_version = ", ".join(f"{c} {m['version']}" for c, m in sorted(manifests.items()))
    assert f"- data version (cohort manifests): `{data_version}`" in results
    latest = json.loads((root / "artifacts" / "models" / "latest.json").read_text())
    assert f"- models version: `{latest['version']}`" in results
    models_card = json.loads((root / "artifacts" / latest["path"] / "card.json").read_text())
    assert f"- encoder version: `{models_card['encoder_version']}`" in results


def test_instrument_check_reads_the_truth_of_this_runs_patients(pipeline) -> None:
    """cause_visibility joins the generator's truth to the examples by pseudonym (every
    site-1 patient found) and RESULTS.md reports it for the encoder the models were built on."""
    root, _, _ = pipeline
    check = json.loads((root / "metrics" / "cause_visibility.json").read_text())
    sizes = [
        len(np.load(root / "data" / "examples" / f"{c}.npz")["label"]) for c in check["cohorts"]
    ]
    assert check["cohorts"] == ["archive", "internal"] and check["n"] <= sum(sizes)
    latest = json.loads((root / "artifacts" / "models" / "latest.json").read_text())
    models_card = json.loads((root / "artifacts" / latest["path"] / "card.json").read_text())
    assert check["encoder_version"] == models_card["encoder_version"]
    results = (root / "RESULTS.md").read_text()
    assert "## Where the label's causes are visible (generator truth)" in results
    assert f"`{check['encoder_version']}`" in results


def test_reported_aucs_are_those_of_the_saved_predictions_of_exactly_the_test_patients(
    pipeline,
) -> None:
    """evaluation.json (behind RESULTS.md) recomputed from predictions.parquet: each cohort's
    rows are exactly its labeled patients (internal: every one, out of fold), and each AUC,
    n and n_pos is what those rows give."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    root, _, _ = pipeline
    evaluation = json.loads((root / "metrics" / "evaluation.json").read_text())
    latest = json.loads((root / "artifacts" / "models" / "latest.json").read_text())
    frame = pd.read_parquet(root / "artifacts" / latest["path"] / "predictions.parquet")
    for cohort in ("internal", "external"):
        examples = np.load(root / "data" / "examples" / f"{cohort}.npz", allow_pickle=False)
        labeled = examples["label"] >= 0
        rows = frame[frame["cohort"] == cohort]
        assert sorted(rows["patient_id"]) == sorted(examples["patient_id"][labeled].tolist())
        truth = dict(zip(examples["patient_id"], examples["label"], strict=True))
        assert rows["label"].tolist() == [int(truth[p]) for p in rows["patient_id"]]
        for model, entry in evaluation[cohort].items():
            assert entry["n"] == len(rows) and entry["n_pos"] == int(rows["label"].sum())
            recomputed = roc_auc_score(rows["label"], rows[model])
            assert entry["auc"] == pytest.approx(recomputed, abs=1e-12), (cohort, model)


def test_exported_model_runs_without_torch(pipeline) -> None:
    """The deployed artifact answers through onnxruntime alone, in a process without torch."""
    root, _, _ = pipeline
    production = json.loads((root / "artifacts" / "models" / "production.json").read_text())
    onnx_path = root / "artifacts" / production["models"]["jepa"]
    script = f"""
import json, sys, numpy as np
from models.onnx_runtime import load_verified_session, predict_onnx
session, card = load_verified_session({str(onnx_path)!r})
data = np.load({str(root / "data" / "examples" / "external.npz")!r}, allow_pickle=False)
p = predict_onnx(session, tuple(data[k] for k in json.loads(card["metadata"]["inputs"])))
assert p.shape == (len(data["label"]),) and ((p >= 0) & (p <= 1)).all()
assert "torch" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_definitions_validate_and_list_the_chain(tmp_path: Path) -> None:
    """The code location loads from the CLI as the webserver and daemon load it.

    One CLI call for the suite (each costs ~13 s of imports): `definitions validate` loads
    and validates the module; the asset list is then read from the same definitions.
    """
    from orchestration.definitions import defs

    dagster = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "orchestration.definitions"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    listed = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    for name in CHAIN:
        assert name in listed

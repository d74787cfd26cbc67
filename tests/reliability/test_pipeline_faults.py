"""Faults across the pipeline: kill -9 at the boundary of and in the middle of six assets,
and two materialisations of one asset at once.

Every run is the real CLI path (``orchestration.cli.materialize``: the persistent instance
of DAGSTER_HOME, configured from orchestration/dagster.yaml with one slot per asset pool,
and the recovery of runs a kill left STARTED) in a child process, on the tiny profile, so
SIGKILL hits it as it would a run worker. The kills are chained: each run is killed at the
next point, and the run after it starts where the last one stopped. After every kill,
nothing a consumer can open may be partial (every parquet, npz, npy, json, safetensors and
ONNX file loads; production.json points at a model whose sha256 matches its card); after
the last, one more run completes and must give what an uninterrupted run gives: the same
training examples, encoder, models, ONNX outputs and production model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipeline_run import pipeline_run_config
    from orchestration import cli
    names = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] else None
    config = pipeline_run_config(Path(sys.argv[1]))
    if names is not None:
        config.pop("ops")
    sys.exit(0 if cli.materialize(names, config).success else 1)
    """
)
ASSETS = [
    "ehr_features",
    "training_examples",
    "jepa_encoder",
    "diagnostic_models",
    "onnx_model",
    "production_model",
]
# (asset, where): "mid" = SIGKILL half-way through the asset (half its duration in the
# uninterrupted run after its STEP_START), "end" = at its STEP_SUCCESS, before the next step
KILL_POINTS = [(asset, where) for asset in ASSETS for where in ("mid", "end")]
# the default run's (and CI's) share of them: mid-pretraining, where a checkpoint must resume,
# and between export and promotion, where production.json must not point at a partial model
DEFAULT_KILL_POINTS = [("jepa_encoder", "mid"), ("onnx_model", "end")]


def _home(root: Path) -> Path:
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    return home


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LUNGJEPA_PROFILE": "tiny",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
    }


def _spawn(root: Path, home: Path, selection: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), selection],
        cwd=REPO,
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_to_end(root: Path, home: Path, selection: str = "", timeout_s: float = 600) -> None:
    child = _spawn(root, home, selection)
    _, err = child.communicate(timeout=timeout_s)
    assert child.returncode == 0, err[-3000:]


def kill_at(
    root: Path, home: Path, asset: str, where: str, delay_s: float, timeout_s: float = 600
) -> None:
    """Run the pipeline and SIGKILL it at (asset, where); ``delay_s`` after STEP_START for "mid"."""
    child = _spawn(root, home)
    deadline = time.monotonic() + timeout_s
    assert child.stderr is not None
    try:
        for line in child.stderr:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {asset} {where} within {timeout_s} s")
            if where == "mid" and f" - {asset} - STEP_START" in line:
                time.sleep(delay_s)
                child.send_signal(signal.SIGKILL)
                break
            if where == "end" and f" - {asset} - STEP_SUCCESS" in line:
                child.send_signal(signal.SIGKILL)
                break
        else:
            raise AssertionError(f"the run ended before {asset} {where}: rc {child.wait()}")
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def step_times(home: Path, run_id: str | None = None) -> dict[str, tuple[float, float | None]]:
    """(STEP_START, STEP_SUCCESS or None) timestamps of each step of a run (default: latest)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    run_id = run_id or instance.get_run_records(limit=1)[0].dagster_run.run_id
    times: dict[str, list[float | None]] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            times.setdefault(event.step_key, [entry.timestamp, None])
        elif event.event_type_value == "STEP_SUCCESS":
            times.setdefault(event.step_key, [None, None])[1] = entry.timestamp
    return {k: (v[0], v[1]) for k, v in times.items() if v[0] is not None}


def visible_files_load(root: Path) -> int:
    """Open every final-named file a consumer could read; returns how many were opened."""
    import onnx

    from models.onnx_runtime import load_verified_session

    opened = 0
    for sub in ("data/curated", "data/feast/sources", "data/examples", "artifacts", "metrics"):
        for path in sorted((root / sub).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            suffix = path.suffix
            if suffix == ".parquet":
                pd.read_parquet(path)
            elif suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    [data[k] for k in data.files]
            elif suffix == ".npy":
                np.load(path, allow_pickle=False)
            elif suffix == ".json":
                json.loads(path.read_text())
            elif suffix == ".jsonl":
                [json.loads(line) for line in path.read_text().splitlines() if line]
            elif suffix == ".safetensors":
                load_file(path)
            elif suffix == ".onnx":
                onnx.checker.check_model(onnx.load(path))
            else:
                continue
            opened += 1
    production = root / "artifacts" / "models" / "production.json"
    if production.exists():
        pointer = json.loads(production.read_text())
        for rel in pointer["models"].values():
            load_verified_session(root / "artifacts" / rel)  # sha256 matches its card
    return opened


def outcome(root: Path) -> dict[str, Any]:
    """What a finished run leaves that users rely on, in comparable form."""
    from cohorts.example_set import FIELDS, load_examples
    from models.onnx_runtime import load_verified_session, predict_onnx

    artifacts = root / "artifacts"
    encoder = json.loads((artifacts / "encoders" / "latest.json").read_text())
    models = json.loads((artifacts / "models" / "latest.json").read_text())
    production = json.loads((artifacts / "models" / "production.json").read_text())
    external = load_examples(root / "data" / "examples" / "external.npz")
    inputs = tuple(getattr(external, f) for f in FIELDS)
    onnx_scores = {}
    for name, rel in production["models"].items():
        session, _ = load_verified_session(artifacts / rel)
        onnx_scores[name] = predict_onnx(session, inputs)
    return {
        "examples": {
            c: dict(np.load(root / "data" / "examples" / f"{c}.npz"))
            for c in ("archive", "internal", "external")
        },
        "encoder_version": encoder["version"],
        "encoder": load_file(artifacts / encoder["path"] / "encoder.safetensors"),
        "models_version": models["version"],
        "predictions": pd.read_parquet(artifacts / models["path"] / "predictions.parquet"),
        "production": production["version"],
        "onnx_scores": onnx_scores,
    }


def assert_same_outcome(got: dict[str, Any], want: dict[str, Any]) -> None:
    for cohort, arrays in want["examples"].items():
        for name, value in arrays.items():
            np.testing.assert_array_equal(got["examples"][cohort][name], value, f"{cohort} {name}")
    assert got["encoder_version"] == want["encoder_version"]
    for name, tensor in want["encoder"].items():
        np.testing.assert_array_equal(got["encoder"][name], tensor, name)
    assert got["models_version"] == want["models_version"]
    pd.testing.assert_frame_equal(got["predictions"], want["predictions"])
    assert got["production"] == want["production"]
    for name, scores in want["onnx_scores"].items():
        np.testing.assert_array_equal(got["onnx_scores"][name], scores, name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run of the tiny pipeline, the outcome every recovered run must give."""
    root = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(root, _home(root))
    durations = {k: end - start for k, (start, end) in step_times(_home(root)).items() if end}
    return {"root": root, "outcome": outcome(root), "durations": durations}


def chained_kills_then_rerun(
    reference: dict[str, Any], root: Path, points: list[tuple[str, str]]
) -> dict[str, Any]:
    """Kill one run at each point in turn (each run resuming the last), then run to the end:
    every kill lands where meant, every visible file loads after it, the last run gives the
    uninterrupted outcome and every killed run is marked failed. Returns the figures."""
    home = _home(root)
    kills, opened = [], []
    for asset, where in points:
        delay = reference["durations"][asset] / 2
        kill_at(root, home, asset, where, delay)
        start, success = step_times(home)[asset]
        landed = "end" if success is not None else "mid"
        assert landed == where, f"the kill meant for {asset} {where} landed at its {landed}"
        kills.append(f"{asset} {where} ({delay:.1f} s in)" if where == "mid" else f"{asset} end")
        opened.append(visible_files_load(root))
    started = time.monotonic()
    run_to_end(root, home)
    rerun_s = time.monotonic() - started
    assert_same_outcome(outcome(root), reference["outcome"])
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    failed = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert len(failed) == len(points)  # every killed run was found and marked failed
    return {
        "kill_points": kills,
        "assets": len({asset for asset, _ in points}),
        "files_opened_after_each_kill": opened,
        "killed_runs_recovered": len(failed),
        "final_rerun_seconds": round(rerun_s, 1),
    }


@pytest.mark.reliability_full
def test_kill_at_twelve_points_in_six_assets_then_rerun_equals_uninterrupted(
    reference: dict[str, Any], tmp_path: Path, figures: dict[str, Any]
) -> None:
    figures["kill_pipeline"] = chained_kills_then_rerun(reference, tmp_path / "killed", KILL_POINTS)


def test_kills_mid_pretraining_and_after_export_then_rerun_equals_uninterrupted(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    """The default run's share of the twelve points (make reliability runs them all)."""
    chained_kills_then_rerun(reference, tmp_path / "killed", DEFAULT_KILL_POINTS)


def test_two_materialisations_of_one_asset_at_once_are_serialised_and_both_valid(
    reference: dict[str, Any], figures: dict[str, Any]
) -> None:
    """Two runs of ehr_features (it rewrites the Feast sources and registry) started
    together on one instance: its pool lets one in at a time, and both end valid."""
    import dagster as dg

    from feature_repo.store import online_features, open_store

    root = reference["root"]
    home = _home(root)
    children = [_spawn(root, home, "ehr_features") for _ in range(2)]
    for child in children:
        _, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
    instance = dg.DagsterInstance.from_config(str(home))
    spans = []
    for record in instance.get_run_records(limit=2):
        events = [e for e in instance.all_logs(record.dagster_run.run_id) if e.dagster_event]
        start = [e.timestamp for e in events if e.dagster_event.event_type_value == "STEP_START"]
        end = [e.timestamp for e in events if e.dagster_event.event_type_value == "STEP_SUCCESS"]
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        spans.append((min(start), max(end)))
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert b_start >= a_end  # one after the other, never interleaved
    store = open_store(REPO / "feature_repo", root / "data")
    assert len(store.list_feature_views()) == 3
    patient = str(reference["outcome"]["examples"]["internal"]["patient_id"][0])
    assert online_features(store, [patient]).notna().any(axis=None)
    visible_files_load(root)
    assert_same_outcome(outcome(root), reference["outcome"])
    figures["concurrent_materialisations"] = {
        "asset": "ehr_features",
        "runs": 2,
        "overlap_seconds": round(max(0.0, a_end - b_start), 3),
        "wait_seconds": round(b_start - a_start, 1),
    }

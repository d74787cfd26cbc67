"""DVC on top of Dagster: real `dvc repro` / push / pull / metrics / exp in a temporary git copy.

Each test copies the project's source (tracked and not-ignored files) into a fresh git
repository under tmp_path, links the project's .venv by absolute path, and runs the real
`dvc` CLI there with LUNGJEPA_PROFILE=tiny. Stage commands run `python -m orchestration.cli`,
so the copy's code and params.yaml are what runs.

The default-run test reproduces the first stage (synth) and round-trips it through
the default local remote; the slow test reproduces the whole pipeline.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestration.dvc_versions import dvc_md5, dvc_metadata, locked_md5, locked_outs
from orchestration.params import REPO_ROOT

STAGES = ("synth", "curate", "features", "pretrain", "finetune_evaluate_export")
EDGES = {
    ("synth", "curate"),
    ("synth", "features"),
    ("synth", "finetune_evaluate_export"),  # the instrument check reads the generator's truth
    ("curate", "features"),
    ("features", "pretrain"),
    ("features", "finetune_evaluate_export"),
    ("pretrain", "finetune_evaluate_export"),
}
# What a stage needs from the project; other engineers' scratch folders stay behind.
_SOURCE_DIRS = {"cohorts", "models", "orchestration", "feature_repo", "docs", ".dvc"}
_TIMEOUT_S = 1800


def _project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    keep = []
    for rel in filter(None, listed.split("\0")):
        parts = Path(rel).parts
        if rel == "dvc.lock" or not (REPO_ROOT / rel).is_file():
            continue  # a fresh lock; files deleted in the working tree are gone
        if len(parts) == 1 or parts[0] in _SOURCE_DIRS:
            keep.append(rel)
    return keep


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LUNGJEPA_PARAMS"}
    env.update(
        {
            "LUNGJEPA_PROFILE": "tiny",
            "DAGSTER_HOME": str(root / "dagster_home"),
            "DVC_NO_ANALYTICS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "GIT_AUTHOR_NAME": "lungjepa-test",
            "GIT_AUTHOR_EMAIL": "test@lungjepa.invalid",
            "GIT_COMMITTER_NAME": "lungjepa-test",
            "GIT_COMMITTER_EMAIL": "test@lungjepa.invalid",
        }
    )
    return env


def _run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args),
        cwd=repo,
        env=_env(repo.parent),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(repo, str(REPO_ROOT / ".venv" / "bin" / "dvc"), *args, check=check)


def _git_commit(repo: Path, message: str) -> None:
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", message)


def _project_copy(tmp_path: Path) -> Path:
    """A git repository holding the project's source, with the project's venv linked in."""
    repo = tmp_path / "repo"
    for rel in _project_files():
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    (repo / ".venv").symlink_to(REPO_ROOT / ".venv", target_is_directory=True)
    _run(repo, "git", "init", "-q", "-b", "main")
    _git_commit(repo, "project copy")
    return repo


def _ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _skipped_stages(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))


def _tree_sha256(repo: Path, outs: list[str]) -> dict[str, str]:
    """sha256 of every file under the given outputs, by repo-relative path."""
    digests = {}
    for out in outs:
        root = repo / out
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            digests[file.relative_to(repo).as_posix()] = hashlib.sha256(
                file.read_bytes()
            ).hexdigest()
    return digests


def _cached_outs(repo: Path) -> list[str]:
    """Outputs dvc.lock records that live in the DVC cache (not the git-tracked metrics)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    uncached = {
        path
        for stage in stages.values()
        for key in ("outs", "metrics", "plots")
        for entry in stage.get(key, [])
        if isinstance(entry, dict)
        for path, options in entry.items()
        if options.get("cache") is False
    }
    return sorted(set(locked_outs(repo / "dvc.lock")) - uncached)


def _push_delete_pull(repo: Path, *targets: str) -> None:
    """Push to the default remote, delete cache and outputs, pull: every byte comes back.

    With targets (stages), only those stages and their upstream are pushed and pulled: the
    stages not reproduced yet have nothing to pull.
    """
    scope = ("--with-deps", *targets) if targets else ()
    outs = _cached_outs(repo)
    assert outs, "dvc.lock records no cached outputs"
    before = _tree_sha256(repo, outs)
    _dvc(repo, "push", *scope)
    remote = repo.parent / "lungjepa-dvc-remote"  # .dvc/config: url = ../../lungjepa-dvc-remote
    assert remote.is_dir() and any(remote.rglob("*")), "dvc push wrote nothing to the remote"
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in outs:
        path = repo / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    status = _dvc(repo, "status").stdout
    assert "deleted" in status, status
    _dvc(repo, "pull", *scope)
    after = _tree_sha256(repo, outs)
    assert after == before
    assert "up to date" in _dvc(repo, "status", *scope).stdout


def test_dvc_md5_matches_dvc_add(tmp_path: Path) -> None:
    """orchestration.dvc_versions computes the md5 `dvc add` records, for folders and files."""
    repo = tmp_path / "repo"
    folder = repo / "outputs" / "folder"
    (folder / "nested" / "deeper").mkdir(parents=True)
    (folder / "a.txt").write_text("line one\r\nline two\n")  # CRLF: DVC 3 hashes raw bytes
    (folder / "nested" / "b.bin").write_bytes(bytes(range(256)) * 4097)
    (folder / "nested" / "deeper" / "empty.csv").write_bytes(b"")
    (folder / "Z upper and space.json").write_text('{"x": 1}')
    (folder / "empty_dir").mkdir()
    single = repo / "outputs" / "single.npy"
    single.write_bytes(b"\x93NUMPY" + bytes(1000))
    _run(repo.parent, "git", "init", "-q", "repo")
    _dvc(repo, "init", "-q")
    _dvc(repo, "add", "outputs/folder", "outputs/single.npy")
    for path in (folder, single):
        recorded = yaml.safe_load(path.with_name(path.name + ".dvc").read_text())["outs"][0]
        assert dvc_md5(path) == recorded["md5"]
    assert dvc_md5(folder).endswith(".dir") and not dvc_md5(single).endswith(".dir")
    metadata = dvc_metadata(folder, root=repo)
    assert metadata["dvc_md5"].value == dvc_md5(folder)
    assert metadata["dvc_path"].value == "outputs/folder"


def test_dvc_repro_first_stage_then_push_pull(tmp_path: Path) -> None:
    """`dvc repro synth` runs the first stage for real (Dagster materialises raw_archive); a
    rerun does nothing; the archive survives push -> delete cache and outputs -> pull byte for
    byte; `dvc dag` shows the chain. (The later stages run in the slow test below.)"""
    repo = _project_copy(tmp_path)

    dag = _dvc(repo, "dag", "--dot").stdout
    assert set(re.findall(r'"(\w+)" -> "(\w+)"', dag)) == EDGES
    assert set(re.findall(r'^"(\w+)";$', dag, flags=re.M)) == set(STAGES)

    first = _dvc(repo, "repro", "synth")
    assert _ran_stages(first.stdout) == {"synth"}, first.stdout
    for cohort in ("archive", "internal", "external"):
        assert any((repo / "data" / "raw" / cohort / "dicom").rglob("*")), cohort
    assert (repo / "data" / "raw" / "internal" / "labels.csv").is_file()
    assert dvc_md5(repo / "data" / "raw") == locked_md5("data/raw", repo / "dvc.lock")

    again = _dvc(repo, "repro", "synth")
    assert _ran_stages(again.stdout) == set(), again.stdout
    assert _skipped_stages(again.stdout) == {"synth"}

    _push_delete_pull(repo, "synth")


@pytest.mark.slow
def test_dvc_full_pipeline_metrics_params_and_experiments(tmp_path: Path) -> None:
    """The whole tiny pipeline under DVC: repro, no-op rerun, metrics, plots, remote round
    trip, a finetune parameter change rerunning only its stage, and an experiment."""
    repo = _project_copy(tmp_path)

    first = _dvc(repo, "repro")
    assert _ran_stages(first.stdout) == set(STAGES), first.stdout
    assert "up to date" in _dvc(repo, "status").stdout
    again = _dvc(repo, "repro")
    assert _ran_stages(again.stdout) == set(), again.stdout
    assert _skipped_stages(again.stdout) == set(STAGES)

    evaluation = json.loads((repo / "metrics" / "evaluation.json").read_text())
    shown = _dvc(repo, "metrics", "show").stdout
    assert "internal.jepa.auc" in shown and "external.jepa.auc" in shown, shown
    table = json.loads(_dvc(repo, "metrics", "show", "--json").stdout)
    measured = table[""]["data"]["metrics/evaluation.json"]["data"]
    for cohort in ("internal", "external"):
        assert set(measured[cohort]) == set(evaluation[cohort])
        for model, row in evaluation[cohort].items():
            assert measured[cohort][model]["auc"] == pytest.approx(row["auc"])
            assert 0.0 <= row["auc"] <= 1.0

    plots = json.loads(_dvc(repo, "plots", "show", "--json").stdout)["data"]
    assert set(plots) == {
        "metrics/pretrain.csv",
        "metrics/roc_internal.csv",
        "metrics/roc_external.csv",
    }
    roc_rows = plots["metrics/roc_internal.csv"][0]["content"]["data"]["values"]
    assert {row["model"] for row in roc_rows} == set(evaluation["internal"])

    for out in locked_outs(repo / "dvc.lock"):
        assert dvc_md5(repo / out) == locked_md5(out, repo / "dvc.lock"), out

    _push_delete_pull(repo)
    _git_commit(repo, "tiny pipeline reproduced")

    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["finetune"]["lr"] = params["finetune"]["lr"] * 2  # tiny does not override lr
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    model_before = json.loads((repo / "artifacts" / "models" / "latest.json").read_text())
    changed = _dvc(repo, "repro")
    assert _ran_stages(changed.stdout) == {"finetune_evaluate_export"}, changed.stdout
    assert _skipped_stages(changed.stdout) == {"synth", "curate", "features", "pretrain"}
    model_after = json.loads((repo / "artifacts" / "models" / "latest.json").read_text())
    assert model_after["version"] != model_before["version"]
    _git_commit(repo, "finetune lr doubled")

    experiment = _dvc(repo, "exp", "run", "-S", "profiles.tiny.pretrain.epochs=3")
    assert _ran_stages(experiment.stdout) == {"pretrain", "finetune_evaluate_export"}, (
        experiment.stdout
    )
    compared = _dvc(repo, "exp", "show", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(compared)))
    epochs = {row["profiles.tiny.pretrain.epochs"] for row in rows}
    assert {"2", "3"} <= epochs, compared
    experiments = [row for row in rows if row["Experiment"]]  # named runs; baselines are blank
    assert len(experiments) == 1, compared
    for row in rows:
        assert 0.0 <= float(row["internal.jepa.auc"]) <= 1.0, compared

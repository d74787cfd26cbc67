"""Faults: kill -9 mid-curation and mid-finetune, a full disk, an unwritable output, two
curations of one cohort at once.

Each fault runs the real code in a child process (``python -c``), so SIGKILL and resource
limits hit it as they would a job. After a kill, nothing visible may be partial (every final
.npy / .parquet loads), and a rerun must give exactly what an uninterrupted run gives.
JEPA pretraining's kill -9 and resume is covered by
tests/models/test_jepa_distributed.py::test_kill_and_resume_matches_an_uninterrupted_run (not
repeated here).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
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
import torch
from dicom_factory import curation_config, write_ct_series
from safetensors.torch import load_file

from cohorts.dicom import CurationConfig, curate_cohort
from models.finetune import load_card

REPO = Path(__file__).resolve().parents[2]
KEY = "fault-key"
N_SERIES = 12
CURATE_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from cohorts.dicom import curate_cohort
    sys.path.insert(0, {tests!r})
    from dicom_factory import curation_config
    config = curation_config(pseudonym_key=b"{key}")
    summary = curate_cohort(Path(sys.argv[1]), Path(sys.argv[2]), config, progress=False)
    print(json.dumps(summary.to_dict()))
    """
).format(key=KEY, tests=str(Path(__file__).parents[1]))


def config() -> CurationConfig:
    return curation_config(pseudonym_key=KEY.encode())


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A raw cohort of N_SERIES series with nodules, and its uninterrupted curation."""
    root = tmp_path_factory.mktemp("faults")
    raw = root / "raw"
    specs = [
        write_ct_series(
            raw / "dicom" / f"s{n:02d}",
            n_slices=30,
            rows=96,
            columns=96,
            patient_id=f"MRN-F{n}",
            sphere=((0.0, 0.0, -4.0), 4.0, 150.0),
            seed=n,
        )
        for n in range(N_SERIES)
    ]
    pd.DataFrame(
        [(s.series_uid, 0.0, 0.0, -4.0, 8.0) for s in specs],
        columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
    ).to_csv(raw / "annotations.csv", index=False)
    (raw / "dicom" / "s03" / "0005").write_bytes(b"half a file")  # one quarantined file
    reference = root / "reference"
    summary = curate_cohort(raw, reference, config(), progress=False)
    assert summary.accepted == N_SERIES - 1 and summary.nodules == N_SERIES - 1
    return raw, reference


def visible_outputs_are_whole(out: Path) -> int:
    """Every final-named output loads; returns how many there are."""
    count = 0
    for path in out.rglob("*.npy"):
        if not path.name.startswith("."):
            array = np.load(path, allow_pickle=False)
            assert array.dtype == np.int16 and array.ndim == 3, path
            count += 1
    for path in out.glob("*.parquet"):
        pd.read_parquet(path)
        count += 1
    return count


def assert_same_curation(out: Path, reference: Path) -> None:
    """Bit-identical arrays and equal tables; no temporary file left anywhere."""

    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    leftovers = sorted(p for p in files(out) if p.endswith(".tmp"))
    assert leftovers == [], leftovers
    assert files(out) == files(reference)
    for rel in files(reference):
        if rel.endswith(".npy"):
            assert np.array_equal(np.load(out / rel), np.load(reference / rel)), rel
        elif rel.endswith(".parquet"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(out / rel), pd.read_parquet(reference / rel)
            )


def _spawn_curation(raw: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CURATE_CHILD, str(raw), str(out)],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _written_since(folder: Path, started_ns: int) -> int:
    """Volumes this run wrote (a killed earlier run's volumes are already there)."""
    count = 0
    for path in folder.glob("*.npy") if folder.is_dir() else []:
        try:
            count += path.stat().st_mtime_ns >= started_ns
        except FileNotFoundError:  # replaced between glob and stat
            continue
    return count


def kill_after_volumes(raw: Path, out: Path, volumes: int, timeout_s: float = 120) -> bool:
    """Start a curation, SIGKILL it once ``volumes`` volumes are visible. False if it
    finished first."""
    started_ns = time.time_ns()
    child = _spawn_curation(raw, out)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if _written_since(out / "volumes", started_ns) >= volumes:
                child.send_signal(signal.SIGKILL)
                assert child.wait(timeout=30) == -signal.SIGKILL
                return True
            time.sleep(0.005)
        return False
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()


def _kill_and_recover(
    raw: Path, reference: Path, out: Path, kill_points: list[int]
) -> dict[str, Any]:
    kills, visible = 0, []
    for volumes in kill_points:
        if kill_after_volumes(raw, out, volumes):
            kills += 1
            visible.append(visible_outputs_are_whole(out))
    leftover_tmp = len([p for p in out.rglob("*.tmp")])
    summary = curate_cohort(raw, out, config(), progress=False)
    assert_same_curation(out, reference)
    return {
        "kills": kills,
        "visible_outputs_checked": visible,
        "temp_files_after_kills": leftover_tmp,
        "series_reused_on_rerun": summary.series_reused,
        "series_decoded_on_rerun": summary.series_processed,
    }


def test_kill_during_curation_then_rerun_equals_uninterrupted(
    cohort: tuple[Path, Path], tmp_path: Path, figures: dict[str, Any]
) -> None:
    raw, reference = cohort
    record = _kill_and_recover(raw, reference, tmp_path / "out", [3])
    assert record["kills"] == 1 and record["visible_outputs_checked"][0] >= 3
    figures["kill_curation"] = record


def test_repeated_kills_during_curation(
    cohort: tuple[Path, Path], tmp_path: Path, figures: dict[str, Any]
) -> None:
    """Killed again and again at growing progress, each time resumed: still the same result."""
    raw, reference = cohort
    records = [
        _kill_and_recover(raw, reference, tmp_path / f"out{trial}", points)
        for trial, points in enumerate([[1], [2, 4, 6], [5, 8, 10], [1, 1, 1, 1]])
    ]
    assert sum(r["kills"] for r in records) >= 6
    figures["kill_curation_repeated"] = {
        "trials": len(records),
        "kills": sum(r["kills"] for r in records),
        "recovered_identical": len(records),
        "temp_files_after_kills": sum(r["temp_files_after_kills"] for r in records),
        "per_trial": records,
    }


def test_concurrent_curations_are_serialised(
    cohort: tuple[Path, Path], tmp_path: Path, figures: dict[str, Any]
) -> None:
    """Two curations into one folder at once: the lock makes the second wait and reuse."""
    raw, reference = cohort
    out = tmp_path / "out"
    children = [_spawn_curation(raw, out) for _ in range(2)]
    results = [child.communicate(timeout=180) for child in children]
    assert [c.returncode for c in children] == [0, 0], [r[1][-2000:] for r in results]
    summaries = sorted((json.loads(r[0]) for r in results), key=lambda s: s["series_reused"])
    assert summaries[0]["series_processed"] == N_SERIES - 1 and summaries[0]["series_reused"] == 0
    assert summaries[1]["series_processed"] == 0 and summaries[1]["series_reused"] == N_SERIES - 1
    assert_same_curation(out, reference)
    figures["concurrent_curation"] = {
        "processes": 2,
        "decoded_by_first": summaries[0]["series_processed"],
        "reused_by_second": summaries[1]["series_reused"],
        "identical_to_single_run": True,
    }


def _cli(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", *args],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=180,
        **kwargs,
    )


def test_unwritable_output_is_a_clear_error(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    raw, _ = cohort
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _cli(["curate", "--input", str(raw), "--output", str(blocker / "curated")])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "not writable" in result.stderr and "Traceback" not in result.stderr
    assert blocker.read_text() == "not a folder"


def _small_files_only() -> None:
    """In the child: files may not grow past 64 KiB, as on a full disk (EFBIG, not a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_full_disk_is_a_clear_error_and_leaves_nothing_partial(
    cohort: tuple[Path, Path], tmp_path: Path, figures: dict[str, Any]
) -> None:
    raw, reference = cohort
    out = tmp_path / "out"
    result = _cli(
        ["curate", "--input", str(raw), "--output", str(out), "--workers", "1"],
        preexec_fn=_small_files_only,
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "could not write" in result.stderr and "Traceback" not in result.stderr
    assert [p for p in out.rglob("*.tmp")] == []
    visible = visible_outputs_are_whole(out)
    summary = curate_cohort(raw, out, config(), progress=False)  # space back: rerun completes
    assert_same_curation(out, reference)
    figures["full_disk"] = {
        "exit_code": result.returncode,
        "visible_outputs_checked": visible,
        "rerun_decoded": summary.series_processed,
    }


FINETUNE_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from cohorts.example_set import random_examples
    from models.diagnostic import DiagnosticModel
    from models.encoders import EncoderConfig, MultimodalEncoder
    from models.finetune import FinetuneConfig, finetune, save_model, stratified_patient_split
    examples = random_examples(160, crop_size_vox=16, n_ehr=6, seed=3)
    split = stratified_patient_split(examples.label, {"train": 0.75, "val": 0.25}, 0)
    torch.manual_seed(0)
    encoder = MultimodalEncoder(
        EncoderConfig(n_ehr_features=6, crop_size_vox=16, embed_dim=32, depth=2, heads=4)
    )
    model = DiagnosticModel(encoder, "multimodal")
    print("training", flush=True)
    config = FinetuneConfig(epochs=int(sys.argv[2]), batch_size=32, patience=100, seed=0)
    result = finetune(model, examples.subset(split["train"]), examples.subset(split["val"]),
                      config, progress=False)
    save_model(result.model, Path(sys.argv[1]), {"epochs": config.epochs})
    print("saved", flush=True)
    """
)


def _finetune(out: Path, epochs: int, kill_after_s: float | None = None) -> float:
    """Run the finetune child; returns seconds from 'training' to 'saved' (or to the kill)."""
    child = subprocess.Popen(
        [sys.executable, "-c", FINETUNE_CHILD, str(out / "model.safetensors"), str(epochs)],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "training"
        started = time.monotonic()
        if kill_after_s is not None:
            time.sleep(kill_after_s)
            assert child.poll() is None, "finetune finished before the kill"
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
            return time.monotonic() - started
        assert child.stdout.readline().strip() == "saved"
        seconds = time.monotonic() - started
        assert child.wait(timeout=120) == 0
        return seconds
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()


def test_killed_finetune_leaves_no_model_and_rerun_is_identical(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    """Finetuning has no checkpoint (minutes at most): a killed run leaves no model file, and
    rerunning from scratch gives the same bytes as an uninterrupted run (seeded)."""
    epochs = 3
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    seconds = _finetune(reference, epochs)
    _finetune(victim, epochs, kill_after_s=seconds / 2)
    assert sorted(p.name for p in victim.rglob("*")) == []  # nothing, not even a temp file
    _finetune(victim, epochs)
    # same tensors and metadata; the file bytes may differ: safetensors orders its header's
    # metadata keys by the process's string hash (PYTHONHASHSEED)
    got, want = load_file(victim / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert load_card(victim / "model.safetensors") == load_card(reference / "model.safetensors")
    assert (victim / "model.json").read_text() == (reference / "model.json").read_text()
    figures["kill_finetune"] = {
        "training_seconds": round(seconds, 2),
        "killed_at_seconds": round(seconds / 2, 2),
        "model_files_after_kill": 0,
        "rerun_identical": True,
    }
    shutil.rmtree(victim)

"""JEPA pretraining under torchrun (DDP, gloo, 2 CPU ranks) and after a kill -9 mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from cohorts.example_set import random_examples

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = {
    "embed_dim": 32,
    "depth": 2,
    "heads": 2,
    "predictor_dim": 16,
    "predictor_depth": 1,
    "ehr_tokens": 2,
    "monitor_examples": 8,
    "lr": 0.002,
    "warmup_epochs": 1,
}


def _env() -> dict[str, str]:
    """One thread per process: deterministic reductions and no oversubscription of 2 cores."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _cli(examples: Path, out: Path, config: dict) -> list[str]:
    return [
        "-m",
        "models.jepa.cli",
        "--examples",
        str(examples),
        "--out",
        str(out),
        "--config",
        json.dumps(config),
        "--no-progress",
        "--rank-digest",
    ]


TORCHRUN_2 = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node",
    "2",
]


def _run(command: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_ddp_two_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    examples = tmp_path / "examples.npz"
    random_examples(16, timepoints=2, crop_size_vox=16, n_ehr=4, seed=0).save(examples)
    config = {**TINY_CONFIG, "epochs": 2, "batch_size": 8, "checkpoint_every_steps": 3}
    done = _run([*TORCHRUN_2, *_cli(examples, tmp_path / "out", config)])
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [(tmp_path / "out" / "rank_digests" / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["world_size"] == 2 and card["steps"] == 4  # 16 / 2 ranks / 4 per rank, x2
    assert _summary(done.stdout)["weights_digest"] == digests[0]


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    examples = tmp_path / "examples.npz"
    random_examples(24, timepoints=2, crop_size_vox=16, n_ehr=4, seed=0).save(examples)
    config = {**TINY_CONFIG, "epochs": 4, "batch_size": 4, "checkpoint_every_steps": 3}
    total_steps = 4 * 6

    # the uninterrupted reference runs alongside the victim (2 cores: wall time ~ one run)
    reference = subprocess.Popen(
        [sys.executable, *_cli(examples, tmp_path / "reference", config)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _interrupt_then_resume(examples, tmp_path / "interrupted", config, total_steps, reference)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()


def _interrupt_then_resume(
    examples: Path, out: Path, config: dict, total_steps: int, reference: subprocess.Popen
) -> None:
    checkpoint = out / "checkpoint.pt"
    victim = subprocess.Popen(
        [sys.executable, *_cli(examples, out, config)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.kill()  # SIGKILL; a no-op (and a failed assert below) if it had already finished
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "encoder.safetensors").exists()  # it really died mid-run
    saved_step = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["step"])
    assert 0 < saved_step < total_steps

    resumed = _run([sys.executable, *_cli(examples, out, config)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = _summary(resumed.stdout)
    ref_stdout, ref_stderr = reference.communicate(timeout=180)
    assert reference.returncode == 0, ref_stderr[-3000:]
    expected = _summary(ref_stdout)
    assert f"resumed from step {saved_step}" in resumed.stderr
    assert summary["resumed_from_step"] == saved_step and summary["steps"] == total_steps
    # CPU, fixed seeds, restored RNG/optimiser/data order/masks: bitwise the same weights
    assert summary["weights_digest"] == expected["weights_digest"]
    assert summary["version"] == expected["version"]
    assert summary["final_loss"] == expected["final_loss"]


def test_asset_on_two_ranks_makes_the_cli_torchrun_artifact(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """jepa_encoder with nproc_per_node = 2 trains once, under torchrun, into its own version.

    The asset used to run torchrun and then pretrain() again in-process into the same folder,
    which the checkpoint's world-size fingerprint refuses; now the torchrun run is the asset's
    whole training, and its weights are those of the CLI's torchrun run on the same inputs.
    """
    import dagster as dg
    from pipeline_run import copy_pipeline
    from safetensors.torch import load_file

    from orchestration.definitions import defs
    from orchestration.resources import resources_under

    root = copy_pipeline(tiny_pipeline, tmp_path / "run")
    single = json.loads((root / "artifacts" / "encoders" / "latest.json").read_text())
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        result = defs.resolve_job_def("full_pipeline").execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("jepa_encoder")],
            run_config={
                "resources": resources_under(root),
                "ops": {"jepa_encoder": {"config": {"nproc_per_node": 2}}},
            },
            raise_on_error=False,
        )
    assert result.success
    latest = json.loads((root / "artifacts" / "encoders" / "latest.json").read_text())
    assert latest["version"] != single["version"]  # 2 ranks: other batches, other weights
    folder = root / "artifacts" / latest["path"]
    card = json.loads((folder / "card.json").read_text())
    assert card["world_size"] == 2 and card["version"] == latest["version"]
    assert card["probe"] is not None and card["inputs"]["cohort_manifests"]
    checkpoint = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["fingerprint"]["world_size"] == 2

    cli_out = tmp_path / "cli"
    archive = root / "data" / "examples" / "archive.npz"
    done = _run([*TORCHRUN_2, *_cli(archive, cli_out, card["params"])], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _summary(done.stdout)["version"] == latest["version"]
    asset_weights = load_file(folder / "encoder.safetensors")
    cli_weights = load_file(cli_out / "encoder.safetensors")
    assert asset_weights.keys() == cli_weights.keys()
    for name, tensor in asset_weights.items():
        assert torch.equal(tensor, cli_weights[name]), name

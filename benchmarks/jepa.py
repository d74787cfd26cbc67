"""JEPA pretraining throughput, peak memory and share of the machine's measured matmul rate.

The step timed is the pretraining loop's own (models.jepa.step.train_step: schedules, masks,
target encoder on the full input (stop-gradient) -> context encoder + predictor on the
context -> loss -> clipped AdamW step -> EMA update), on random examples of the params.yaml
sizes, without the loop's sampling, checkpoints and monitoring. Model FLOPs per step are counted with torch.utils.flop_counter.FlopCounterMode;
the 'limit' is a plain large matmul timed in the same run (float32 on CPU, bf16 on GPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import BenchResult, BenchSize, in_child
from cohorts.ehr.features import ehr_feature_names
from cohorts.example_set import FIELDS, random_examples
from models.data import example_tensors
from models.export import ExportSettings
from models.jepa.config import PretrainConfig, build_encoder
from models.jepa.step import Schedule, new_training, train_step

COMMAND_CPU = "python -m benchmarks.run --only jepa_cpu"
COMMAND_GPU = "python -m benchmarks.run --only jepa_gpu"


def pretrain_sizes() -> dict[str, Any]:
    """params.yaml base `pretrain` section (no profile), the input sizes it trains on, and the
    `export` settings its ONNX files are written with."""
    from orchestration.params import load_params  # yaml only: no torch, Dagster or Feast

    params = load_params()
    return {
        "pretrain": dict(params["pretrain"]),  # PretrainConfig.from_dict refuses unknown keys
        "crop_size_vox": int(params["curate"]["crop_size_vox"]),
        "timepoints": int(params["examples"]["max_timepoints"]),
        "n_ehr": len(ehr_feature_names(int(params["features"]["n_signatures"]))),
        "export": ExportSettings(**params["export"]),
    }


def make_step(
    sizes: dict[str, Any], device: torch.device, n_batches: int
) -> tuple[Callable[[int], float], int]:
    """A closure running training step i on batch i % n_batches; returns (step, batch size)."""
    config = PretrainConfig.from_dict(sizes["pretrain"])
    batch_size = config.batch_size
    examples = random_examples(
        batch_size * n_batches,
        timepoints=sizes["timepoints"],
        crop_size_vox=sizes["crop_size_vox"],
        n_ehr=sizes["n_ehr"],
        labeled=False,
    )
    torch.manual_seed(config.seed)
    training = new_training(build_encoder(examples, config), config, device)
    schedule = Schedule.for_run(config, n_batches)
    tensors = example_tensors(examples)
    batches = [
        [tensors[k][i * batch_size : (i + 1) * batch_size].to(device) for k in FIELDS]
        for i in range(n_batches)
    ]
    training.model.train()
    training.target.train()

    def step(i: int) -> float:
        return train_step(training, batches[i % n_batches], i, schedule, config).loss

    return step, batch_size


def step_flops(step: Callable[[int], float]) -> int:
    """Model FLOPs of one training step (forward, backward; the matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        step(0)
    return int(counter.get_total_flops())


def matmul_gflops(n: int, dtype: torch.dtype, device: torch.device, repeat: int) -> float:
    """GFLOP/s of `repeat` n x n @ n x n matmuls: the machine's practical peak for this dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        torch.mm(a, b)
    _sync(device)
    return 2.0 * n**3 * repeat / (time.perf_counter() - started) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    device_name: str, reps: int, steps_per_rep: int, matmul_n: int, sizes: dict[str, Any]
) -> dict[str, Any]:
    """Interleave rounds of training steps with matmul-rate probes; report both per round."""
    device = torch.device(device_name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    step, batch_size = make_step(sizes, device, n_batches=4)
    flops = step_flops(step)
    for i in range(2):  # warm-up (allocator, kernels)
        step(i)
    matmul_gflops(matmul_n, dtype, device, repeat=2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples_per_s, model_gflops, limit_gflops = [], [], []
    for r in range(reps):
        _sync(device)
        started = time.perf_counter()
        for i in range(steps_per_rep):
            step(r * steps_per_rep + i)
        _sync(device)
        seconds = time.perf_counter() - started
        samples_per_s.append(batch_size * steps_per_rep / seconds)
        model_gflops.append(flops * steps_per_rep / seconds / 1e9)
        limit_gflops.append(matmul_gflops(matmul_n, dtype, device, repeat=4))
    out = {
        "samples_per_s": samples_per_s,
        "model_gflops": model_gflops,
        "limit_gflops": limit_gflops,
        "flops_per_step": flops,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["device"] = torch.cuda.get_device_name(device)
    return out


def _record(result: BenchResult, data: dict[str, Any], limit: str) -> None:
    sps = result.add("training throughput", "samples/s", data["samples_per_s"])
    model = result.add("achieved model rate", "GFLOP/s", data["model_gflops"])
    lim = result.add(f"limit: {limit} matmul", "GFLOP/s", data["limit_gflops"])
    result.ratio(
        "model GFLOP/s / matmul GFLOP/s",
        model["median"] / lim["median"],
        f"share of the measured {limit} matmul rate the training step achieves",
    )
    result.config.update(
        {
            "batch_size": data["batch_size"],
            "gflop_per_step": data["flops_per_step"] / 1e9,
            "torch_threads": data["threads"],
        }
    )
    del sps


def run_cpu(size: BenchSize, work_dir: Path) -> BenchResult:
    result = BenchResult("jepa_cpu", "JEPA pretraining on CPU", COMMAND_CPU)
    sizes = pretrain_sizes()
    quick = size.name != "full"
    if quick:  # a smoke run: the tiny profile's model sizes
        sizes["pretrain"].update(batch_size=8, embed_dim=32, depth=2, heads=2, predictor_dim=16)
        sizes["crop_size_vox"] = 16
    result.config = {"sizes": "params.yaml tiny-ish (quick)" if quick else "params.yaml pretrain"}
    result.config.update(sizes["pretrain"])
    result.config.update({k: sizes[k] for k in ("crop_size_vox", "timepoints", "n_ehr")})
    steps = {"toy": 1, "quick": 2}.get(size.name, 4)
    child = in_child(measure, "cpu", size.reps, steps, 512 if quick else 2048, sizes)
    _record(result, child["value"], "float32")
    result.add("peak RSS (training process)", "MiB", [child["maxrss_kib"] / 1024])
    result.notes.append(
        "FLOPs per step from FlopCounterMode over one step (forward of target and context "
        "encoders, predictor, backward); the limit is a 2048^2 float32 torch.mm, timed after "
        "every round of training steps in the same process."
    )
    return result


def run_gpu(size: BenchSize, work_dir: Path) -> BenchResult:
    result = BenchResult("jepa_gpu", "JEPA pretraining on GPU (bf16 autocast)", COMMAND_GPU)
    if not torch.cuda.is_available():
        result.status = "not measured"
        result.notes.append(
            f"not measured (no GPU in this run). To fill it: on a CUDA machine run "
            f"`{COMMAND_GPU}`, which merges this section into metrics/bench.json."
        )
        return result
    sizes = pretrain_sizes()
    result.config = {"sizes": "params.yaml pretrain"}
    result.config.update(sizes["pretrain"])
    data = measure("cuda", size.reps, 20, 8192, sizes)
    _record(result, data, "bf16")
    result.add("peak GPU memory (allocated)", "MiB", [data["peak_gpu_mib"]])
    result.config["device"] = data["device"]
    result.notes.append(
        "bf16 autocast as in models.jepa.pretrain on CUDA; the limit is an 8192^2 bf16 "
        "torch.mm timed after every round in the same process (the practical bf16 peak)."
    )
    return result

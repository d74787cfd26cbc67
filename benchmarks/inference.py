"""Inference: onnxruntime against torch eager on the same DiagnosticModel, side by side.

Latency is per case at batch 1 (p50/p99 over many cases, the two engines alternating call
by call); throughput is cases/s at a larger batch, interleaved by rounds. The model is the
pretraining-sized encoder with a fresh head, exported with models.export.export_onnx and
opened with models.onnx_runtime.load_verified_session (what the serving path does).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BenchResult, BenchSize, interleaved, percentiles_ms
from benchmarks.jepa import pretrain_sizes
from cohorts.example_set import FIELDS, random_examples
from models.diagnostic import DiagnosticModel
from models.export import export_onnx
from models.jepa.config import PretrainConfig, build_encoder
from models.onnx_runtime import load_verified_session, predict_onnx

COMMAND = "python -m benchmarks.run --only inference"
BLOCK = 10
"""Cases per engine turn: alternating call by call would bill one engine's idle threads (torch's
OpenMP pool spins briefly after each call; our onnxruntime sessions do not, see
``models.onnx_runtime.session_options``) to the other engine's next call."""


def _arrays(examples, start: int, stop: int) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.asarray(getattr(examples, f)[start:stop]) for f in FIELDS)
    return (arrays[0].astype(np.float32), *arrays[1:])


def run(size: BenchSize, work_dir: Path) -> BenchResult:
    result = BenchResult("inference", "Inference: onnxruntime vs torch eager", COMMAND)
    sizes = pretrain_sizes()
    quick = size.name != "full"
    if quick:
        sizes["pretrain"].update(embed_dim=32, depth=2, heads=2, predictor_dim=16)
        sizes["crop_size_vox"] = 16
    n_cases = {"toy": 10, "quick": 40}.get(size.name, 200)
    batch = 8 if quick else 32
    examples = random_examples(
        max(n_cases, batch),
        timepoints=sizes["timepoints"],
        crop_size_vox=sizes["crop_size_vox"],
        n_ehr=sizes["n_ehr"],
    )
    config = PretrainConfig.from_dict(sizes["pretrain"])
    torch.manual_seed(0)
    model = DiagnosticModel(build_encoder(examples, config)).eval()
    onnx_path = work_dir / "inference" / "model.onnx"
    example = tuple(torch.from_numpy(a) for a in _arrays(examples, 0, 2))
    card = export_onnx(model, example, onnx_path, {"purpose": "benchmark"}, sizes["export"].opset)
    session, _ = load_verified_session(onnx_path)
    result.config = {
        "embed_dim": config.embed_dim,
        "depth": config.depth,
        "crop_size_vox": sizes["crop_size_vox"],
        "timepoints": sizes["timepoints"],
        "cases": n_cases,
        "batch": batch,
        "exporter": card.exporter,
        "opset": card.opset,
        "torch_threads": torch.get_num_threads(),
    }

    def torch_call(arrays: tuple[np.ndarray, ...]) -> np.ndarray:
        with torch.inference_mode():
            return model(*(torch.from_numpy(a) for a in arrays)).numpy()

    cases = [_arrays(examples, i, i + 1) for i in range(n_cases)]
    for arrays in cases[:5]:  # warm-up both engines
        torch_call(arrays)
        predict_onnx(session, arrays)
    latency: dict[str, list[float]] = {"torch eager": [], "onnxruntime": []}
    engines = {"torch eager": torch_call, "onnxruntime": lambda a: predict_onnx(session, a)}
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in engines}
    for start in range(0, n_cases, BLOCK):  # blocks of cases, engines alternating
        for name, call in engines.items():
            for arrays in cases[start : start + BLOCK]:
                started = time.perf_counter()
                outputs[name].append(call(arrays))
                latency[name].append(time.perf_counter() - started)
    max_diff = max(
        float(np.abs(a - b).max())
        for a, b in zip(outputs["torch eager"], outputs["onnxruntime"], strict=True)
    )
    p50 = {}
    for engine, seconds in latency.items():
        pct = percentiles_ms(seconds)
        p50[engine] = pct["p50_ms"]
        result.add(f"{engine}, batch 1 latency", "ms", [s * 1e3 for s in seconds], **pct)
    result.ratio(
        "onnxruntime p50 / torch eager p50 (batch 1)",
        p50["onnxruntime"] / p50["torch eager"],
        "below 1.0: onnxruntime answers a single case faster",
    )

    batched = _arrays(examples, 0, batch)
    timed = interleaved(
        {
            "torch eager": lambda: torch_call(batched),
            "onnxruntime": lambda: predict_onnx(session, batched),
        },
        reps=size.reps * 2,
        warmup=size.warmup,
    )
    rates = {}
    for engine, runs in timed.items():
        label = f"{engine}, batch {batch} throughput"
        rates[engine] = result.add(label, "cases/s", [batch / s for s, _ in runs])["median"]
    result.ratio(
        f"onnxruntime / torch eager throughput (batch {batch})",
        rates["onnxruntime"] / rates["torch eager"],
        "above 1.0: onnxruntime serves more cases per second",
    )
    result.config["max_abs_diff_onnx_vs_torch"] = max_diff
    result.notes.append(
        f"Batch-1 samples are per case; the engines take turns in blocks of {BLOCK} cases on "
        "the same inputs. onnxruntime's time includes session_feed (dtype casts), as in "
        "serving; torch eager runs under inference_mode."
    )
    return result

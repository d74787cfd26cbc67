"""Smoke tests of the benchmarks: each runs at toy size and yields a well-formed record.

No timing assertions (shared machines): the checks are structure, positive finite figures,
ratios consistent with their measurements, and the markdown the run writes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# benchmarks/ is run from the repo root and not installed; `pytest` alone does not put the
# root on sys.path (`python -m pytest` does), so make both work.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import (  # noqa: E402
    curation,
    feast_online,
    inference,
    jepa,
    pipeline,
    predict,
    serve,
    synthetic,
)
from benchmarks.common import TOY, BenchResult, interleaved, summarise  # noqa: E402
from benchmarks.memory import TreeMemorySampler, tree_rss_bytes  # noqa: E402
from benchmarks.report import render, render_section  # noqa: E402
from benchmarks.run import BENCHMARKS, main, run_all  # noqa: E402


def _check(result: BenchResult, name: str) -> dict:
    record = result.to_dict()
    assert record["name"] == name
    assert record["command"].startswith("python -m benchmarks.run --only ")
    assert record["command"].split()[-1] in BENCHMARKS
    for m in record["measurements"]:
        assert m["n"] == len(m["samples"]) >= 1
        assert m["min"] <= m["median"] <= m["max"]
        assert all(math.isfinite(v) and v >= 0 for v in m["samples"]), m
    for r in record["ratios"]:
        assert math.isfinite(r["value"]) and r["value"] > 0, r
    section = render_section(record)
    assert f"`{record['command']}`" in section
    for m in record["measurements"]:
        assert m["label"] in section
    json.dumps(record)  # JSON-able as written to metrics/bench.json
    return record


def _by_label(record: dict) -> dict[str, dict]:
    return {m["label"]: m for m in record["measurements"]}


def test_summarise_and_interleaving_order() -> None:
    calls: list[str] = []
    timed = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 1)
    assert calls == ["a", "b"] * 3  # warm-up round, then rounds alternate case by case
    assert [len(v) for v in timed.values()] == [2, 2]
    calls.clear()
    interleaved({"a": lambda: calls.append("a")}, 2, 1, after=lambda: calls.append("after"))
    assert calls == ["a", "after"] * 3  # after every call, warm-up included
    stats = summarise([3.0, 1.0, 2.0])
    assert (stats["median"], stats["min"], stats["max"], stats["n"]) == (2.0, 1.0, 3.0, 3)
    with pytest.raises(ValueError):
        summarise([])


def test_curation_benchmark(tmp_path: Path) -> None:
    record = _check(curation.run(TOY, tmp_path), "curation")
    rows = _by_label(record)
    for workers in (1, 2):
        assert rows[f"curate_cohort, {workers} worker(s)"]["unit"] == "slices/s"
        assert rows[f"pydicom floor, {workers} worker(s)"]["slices"] > 0
    assert {r["label"] for r in record["ratios"]} >= {
        "peak RSS x2 / x1",
        "peak RSS x4 / x1",
        "pydicom floor 2 workers / 1 worker",
        "curation speed-up / floor speed-up",
        "curation / floor, 1 worker(s), 512 px",
        "ceiling of curation / floor, 512 px",
    }
    assert rows["curate_cohort, 1 worker(s), 512 px"]["slices"] > 0  # 512 x 512 slices curated
    peaks = [m for label, m in rows.items() if label.startswith("peak RSS, archive x")]
    assert len(peaks) == 3 and all(m["median"] > 10 for m in peaks)  # MiB: real processes


def test_synthetic_benchmark(tmp_path: Path) -> None:
    record = _check(synthetic.run(TOY, tmp_path), "synthetic")
    rows = _by_label(record)
    assert rows["generate_archive, 1 worker(s)"]["scans"] > 0
    assert (
        rows["generate_archive, 2 worker(s)"]["scans"]
        == rows["generate_archive, 1 worker(s)"]["scans"]
    )
    assert rows[synthetic.POOL]["median"] > 0
    labels = [r["label"] for r in record["ratios"]]
    assert labels[0] == "2 workers / 1 worker"
    assert "pool start-up / 2-worker generation time" in labels


def test_tree_memory_sampler_sees_worker_processes() -> None:
    """A child holding 200 MiB shows in the tree's RSS and in the sampled window's peak."""
    hold = (
        "import sys, time; block = b'x' * (200 * 2**20); print('ready', flush=True); time.sleep(3)"
    )
    before = tree_rss_bytes(os.getpid())
    with TreeMemorySampler(interval_s=0.05) as sampler:
        while not sampler.samples:  # a baseline reading before the window (a loaded machine
            time.sleep(0.01)  # can start the sampler thread late)
        started = time.time()
        child = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        during = tree_rss_bytes(os.getpid())
        child.wait()
        ended = time.time()
    assert during - before > 150 * 2**20
    window = sampler.window_mib(started, ended)
    assert window["peak_mib"] - window["start_mib"] > 150
    assert sampler.peak_mib() >= window["peak_mib"]


def test_jepa_cpu_benchmark_counts_flops(tmp_path: Path) -> None:
    record = _check(jepa.run_cpu(TOY, tmp_path), "jepa_cpu")
    rows = _by_label(record)
    assert record["config"]["gflop_per_step"] > 0
    expected = rows["achieved model rate"]["median"] / rows["limit: float32 matmul"]["median"]
    assert record["ratios"][0]["value"] == pytest.approx(expected)


def test_jepa_gpu_section_reports_what_this_machine_has(tmp_path: Path) -> None:
    """Without a GPU the section says 'not measured'; with one it holds measurements."""
    record = _check(jepa.run_gpu(TOY, tmp_path), "jepa_gpu")
    if torch.cuda.is_available():
        assert record["status"] != "not measured" and record["measurements"]
    else:
        assert record["status"] == "not measured"
        assert "not measured (no GPU in this run)" in record["notes"][0]
        assert "**not measured**" in render_section(record)


def test_inference_benchmark(tmp_path: Path) -> None:
    record = _check(inference.run(TOY, tmp_path), "inference")
    rows = _by_label(record)
    assert (
        rows["onnxruntime, batch 1 latency"]["p99_ms"]
        >= rows["onnxruntime, batch 1 latency"]["p50_ms"]
    )
    assert record["config"]["max_abs_diff_onnx_vs_torch"] < 1e-4  # same model in both engines


def test_feast_online_benchmark_reads_the_same_row(tmp_path: Path) -> None:
    record = _check(feast_online.run(TOY, tmp_path), "feast_online")
    assert record["config"]["features_read_directly"] > 0
    assert record["config"]["features_in_both"] == record["config"]["features_read_directly"]


def test_predict_benchmark_on_the_shared_tiny_pipeline(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """Reuses the session's tiny pipeline output: one patient's folder, in-process and CLI."""
    root, _, run_result = tiny_pipeline
    assert run_result.success, "the tiny pipeline failed; the predict benchmark needs its model"
    record = _check(predict.run(TOY, tmp_path, pipeline_root=root), "predict")
    rows = _by_label(record)
    assert rows["predict() in-process, end to end"]["n"] == record["config"]["in_process_reps"]
    assert rows["predict_onnx() alone, same inputs"]["unit"] == "ms"
    assert rows["CLI subprocess (python -m orchestration.cli predict)"]["n"] >= 1
    assert rows["predict-path imports only (fresh process)"]["n"] >= 1
    assert record["config"]["ehr_source"] == "feast_online" and record["config"]["dicom_files"] > 0
    assert record["config"]["probability_spread_all_calls"] < 1e-5  # every call, same answer
    e2e, model = (
        rows[k]["median"]
        for k in ("predict() in-process, end to end", "predict_onnx() alone, same inputs")
    )
    assert record["ratios"][0]["value"] == pytest.approx(e2e / model)
    assert not (tmp_path / "predict" / "pipeline").exists()  # reused, not rebuilt


def test_serve_benchmark_on_the_shared_tiny_pipeline(tiny_pipeline: tuple, tmp_path: Path) -> None:
    """A real `serve` process answers every single and batch request of the smoke run."""
    root, _, run_result = tiny_pipeline
    assert run_result.success, "the tiny pipeline failed; the serve benchmark needs its model"
    record = _check(serve.run(TOY, tmp_path, pipeline_root=root), "serve")
    rows = _by_label(record)
    assert record["config"]["errors"] == 0, record["config"]["error_kinds"]
    assert rows["single case, end to end"]["n"] == record["config"]["single_requests"] > 0
    assert rows["batch of 32 rows, end to end"]["n"] == record["config"]["batch_requests"] > 0
    ratio = rows["batch-32 throughput"]["median"] / rows["single-case throughput"]["median"]
    assert record["ratios"][0]["value"] == pytest.approx(ratio)
    dicom = rows["batch DICOM work per row (scan, decode, crop; 32 rows)"]
    model = rows["batch model work per row (one ONNX run over 32 rows)"]
    for row in (dicom, model):
        assert row["n"] == record["config"]["batch_requests"] and row["median"] > 0
    ratios = {r["label"]: r["value"] for r in record["ratios"]}
    single_ms = (
        sum(rows["single case, end to end"]["samples"]) / rows["single case, end to end"]["n"]
    )
    ceiling = ratios["ceiling of batch-32 / single-case throughput"]
    assert ceiling == pytest.approx(single_ms / (dicom["median"] + model["median"]))
    share = ratios["batch-32 / single-case throughput, share of its ceiling"]
    assert share == pytest.approx(record["ratios"][0]["value"] / ceiling)


def test_run_all_merges_and_renders(tmp_path: Path) -> None:
    json_path, md_path = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    earlier = BenchResult("curation", "Curation (an earlier run)", "python -m benchmarks.run")
    earlier.add("curate_cohort, 1 worker(s)", "slices/s", [2.0, 4.0, 3.0])
    earlier.ratio("curation / floor, 1 worker(s)", 0.5, "kept from the earlier run")
    stale_gpu = {"name": "jepa_gpu", "status": "stale"}
    json_path.write_text(
        json.dumps({"benchmarks": {"curation": earlier.to_dict(), "jepa_gpu": stale_gpu}})
    )
    report = run_all(["jepa_gpu"], TOY, json_path, md_path)
    written = json.loads(json_path.read_text())
    assert set(written["benchmarks"]) == {"curation", "jepa_gpu"}  # other results kept
    assert written["benchmarks"]["jepa_gpu"]["status"] != "stale"  # this one replaced
    assert (
        written["benchmarks"]["jepa_gpu"]["command"] == report["benchmarks"]["jepa_gpu"]["command"]
    )
    assert written["errors"] == {}
    text = md_path.read_text()
    assert text == render(written)
    assert "| curate_cohort, 1 worker(s) | 3.00 slices/s | 2.00 - 4.00 | 3 |" in text
    assert "curation / floor, 1 worker(s): **0.5**" in text
    assert "python -m benchmarks.run --only jepa_gpu" in text


def test_a_failing_benchmark_is_reported_and_the_others_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(size: object, work_dir: Path) -> BenchResult:
        raise RuntimeError("benchmark exploded")

    monkeypatch.setitem(BENCHMARKS, "synthetic", broken)
    json_path, md_path = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    argv = ["--quick", "--only", "synthetic", "jepa_gpu", "--json", str(json_path)]
    assert main([*argv, "--markdown", str(md_path)]) == 1
    written = json.loads(json_path.read_text())
    assert "benchmark exploded" in written["errors"]["synthetic"]
    assert set(written["benchmarks"]) == {"jepa_gpu"}
    assert "## synthetic: failed" in md_path.read_text()


@pytest.mark.slow
def test_scaling_and_dagster_pipeline(tmp_path: Path) -> None:
    scaling = _check(pipeline.run_scaling(TOY, tmp_path, factors=(1, 2)), "scaling")
    assert scaling["ratios"][0]["label"] == "time x2 / x1"
    scaled = _by_label(scaling)
    assert scaled["whole pipeline, cohorts x2"]["patients"] == 2 * sum(
        pipeline.base_sizes("tiny").values()
    )
    assert "step jepa_encoder, x2 / x1" in scaled and "step raw_archive, x2 / x1" in scaled
    run = _check(pipeline.run_pipeline(TOY, tmp_path, ["raw_archive", "curated_scans"]), "pipeline")
    assert run["config"]["success"] is True and run["config"]["profile"] == "tiny"
    rows = _by_label(run)
    assert {"step raw_archive", "step curated_scans"} <= set(rows)
    # per-asset peak memory: real processes, at least what the run held when the step began
    for step in ("step raw_archive", "step curated_scans"):
        assert rows[step]["peak_rss_mib"] >= rows[step]["rss_at_start_mib"] > 50
    assert (
        rows["peak RSS, process tree (whole run)"]["median"]
        >= rows["step curated_scans"]["peak_rss_mib"]
    )

"""The whole pipeline through Dagster (time and peak memory per asset), and its scaling.

`make bench` runs the `demo` profile, exactly what `make demo` materialises (in-process
executor); smoke sizes run `tiny`. Each run is a fresh spawned process (LUNGJEPA_PROFILE is
read when orchestration is imported) on a throw-away folder and a real local Dagster
instance. Time per asset comes from the instance's step stats (event log); peak memory per
asset from a sampler of the process tree's RSS (benchmarks/memory.py) over each step's
window. Scaling runs the whole tiny pipeline at cohort sizes x1, x2, x4.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, BenchSize, in_child
from benchmarks.memory import TreeMemorySampler
from orchestration.params import section

COMMAND_PIPELINE = "python -m benchmarks.run --only pipeline"
COMMAND_SCALING = "python -m benchmarks.run --only scaling"
PIPELINE_MARKER = "bench_pipeline.json"
"""Written into a finished pipeline run's folder: the predict benchmark reuses that output."""
SCALED = ("n_archive", "n_internal", "n_external")


def dagster_run(
    root: str, selection: list[str] | None, synth_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Materialise `selection` (None: everything) in-process; seconds and peak MiB per step."""
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.resources import resources_under

    base = Path(root)
    config: dict[str, Any] = {
        "resources": resources_under(base),
        "ops": {},
    }
    if selection is None or "evaluation" in selection:
        config["ops"]["evaluation"] = {"config": {"results_markdown": str(base / "RESULTS.md")}}
    if synth_overrides:
        config["ops"]["raw_archive"] = {"config": dict(synth_overrides)}
    keys = [dg.AssetKey(name) for name in selection] if selection else None
    job = defs.resolve_job_def("full_pipeline")
    (base / "dagster_home").mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.local_temp(tempdir=str(base / "dagster_home")) as instance:
        with TreeMemorySampler() as memory:
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance, asset_selection=keys, run_config=config, raise_on_error=False
            )
            wall = time.perf_counter() - started
        stats = instance.get_run_step_stats(result.run_id)
        windows = {
            s.step_key: (s.start_time, s.end_time)
            for s in stats
            if s.start_time is not None and s.end_time is not None
        }
        statuses = {s.step_key: str(s.status.value if s.status else None) for s in stats}
    return {
        "success": bool(result.success),
        "wall_s": wall,
        "steps_s": {step: end - start for step, (start, end) in windows.items()},
        "steps_memory": memory.per_window(windows),
        "peak_tree_mib": memory.peak_mib(),
        "statuses": statuses,
    }


def run_pipeline(
    size: BenchSize, work_dir: Path, selection: list[str] | None = None
) -> BenchResult:
    profile = size.pipeline_profile
    result = BenchResult(
        "pipeline", f"Whole {profile} pipeline through Dagster, per asset", COMMAND_PIPELINE
    )
    root = work_dir / "pipeline"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    child = in_child(dagster_run, str(root), selection, env={"LUNGJEPA_PROFILE": profile})
    data = child["value"]
    synth = section("synth", profile)
    result.config = {
        "profile": profile,
        "preset": synth["preset"],
        "executor": "in_process (as `make demo`)",
        "selection": selection or "all assets",
        "success": data["success"],
        "failed_steps": sorted(k for k, v in data["statuses"].items() if v != "SUCCESS"),
    }
    result.add("whole run (in-process executor)", "s", [data["wall_s"]])
    result.add("peak RSS, process tree (whole run)", "MiB", [data["peak_tree_mib"]])
    result.add("peak RSS, run process (ru_maxrss)", "MiB", [child["maxrss_kib"] / 1024])
    if data["wall_s"] > 0:
        result.ratio(
            "sum of step times / run wall time",
            sum(data["steps_s"].values()) / data["wall_s"],
            "share of the run spent inside assets and checks (the rest: Dagster and start-up)",
        )
    for step, seconds in sorted(data["steps_s"].items(), key=lambda kv: -kv[1]):
        memory = data["steps_memory"].get(step, {})
        result.add(
            f"step {step}",
            "s",
            [seconds],
            share_of_run=seconds / data["wall_s"] if data["wall_s"] else 0.0,
            peak_rss_mib=round(memory.get("peak_mib", 0.0), 1),
            rss_at_start_mib=round(memory.get("start_mib", 0.0), 1),
        )
    heaviest = max(data["steps_memory"].items(), key=lambda kv: kv[1]["peak_mib"], default=None)
    if heaviest and data["peak_tree_mib"] > 0:
        result.ratio(
            f"peak RSS of the heaviest asset ({heaviest[0]}) / whole run",
            heaviest[1]["peak_mib"] / data["peak_tree_mib"],
            "1.0: that asset sets the run's memory high-water mark",
        )
    if not data["success"]:
        result.notes.append("The run FAILED; step times cover the steps that finished.")
    result.notes.append(
        "Step times are Dagster step stats (start to end of each step) from a real local "
        "instance's event log. peak_rss_mib is the largest RSS of the run process plus its "
        "worker processes sampled every 0.2 s inside the step's window; rss_at_start_mib is "
        "the reading just before it (the in-process executor keeps earlier assets' imports "
        "and caches, so the growth is the difference)."
    )
    (root / PIPELINE_MARKER).write_text(
        json.dumps({"profile": profile, "success": data["success"], "selection": selection})
    )
    return result


def base_sizes(profile: str) -> dict[str, int]:
    """Cohort sizes of `profile` (its synth overrides, else its preset's)."""
    from cohorts.synthetic.config import PRESETS

    synth = section("synth", profile)
    preset = PRESETS[synth["preset"]]
    return {k: int(synth[k]) if synth.get(k) is not None else int(preset[k]) for k in SCALED}


def run_scaling(
    size: BenchSize, work_dir: Path, factors: tuple[int, ...] = (1, 2, 4)
) -> BenchResult:
    """The whole tiny pipeline with every cohort x1, x2, x4; one fresh process per size."""
    result = BenchResult("scaling", "Whole pipeline scaling with archive size", COMMAND_SCALING)
    profile = "tiny"
    x1 = base_sizes(profile)
    result.config = {"profile": profile, "x1": x1, "assets": "all (full_pipeline job)"}
    runs: dict[int, dict[str, Any]] = {}
    for factor in factors:  # largest last: a slow spell mid-run shows as a jump, not a trend
        root = work_dir / "scaling" / f"x{factor}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        overrides = {k: v * factor for k, v in x1.items()}
        data = in_child(dagster_run, str(root), None, overrides, env={"LUNGJEPA_PROFILE": profile})
        runs[factor] = data["value"]
        if not runs[factor]["success"]:
            raise RuntimeError(f"scaling run x{factor} failed: {runs[factor]['statuses']}")
        shutil.rmtree(root, ignore_errors=True)
    first = factors[0]
    for factor in factors:
        data = runs[factor]
        result.add(
            f"whole pipeline, cohorts x{factor}",
            "s",
            [data["wall_s"]],
            patients=sum(v * factor for v in x1.values()),
            peak_rss_mib=round(data["peak_tree_mib"], 1),
        )
    for factor in reversed(factors[1:]):  # the largest first: the key ratio
        result.ratio(
            f"time x{factor} / x{first}",
            runs[factor]["wall_s"] / runs[first]["wall_s"],
            f"{factor / first:.1f} = linear in cohort size; less = fixed costs amortised",
        )
    last = factors[-1]
    growth = {
        step: runs[last]["steps_s"][step] / seconds
        for step, seconds in runs[first]["steps_s"].items()
        if seconds > 0 and step in runs[last]["steps_s"]
    }
    for step, ratio in sorted(growth.items(), key=lambda kv: -kv[1]):
        result.add(
            f"step {step}, x{last} / x{first}",
            "ratio",
            [ratio],
            seconds_x1=round(runs[first]["steps_s"][step], 2),
            seconds_last=round(runs[last]["steps_s"][step], 2),
        )
    result.ratio(
        f"peak RSS x{last} / x{first}",
        runs[last]["peak_tree_mib"] / runs[first]["peak_tree_mib"],
        "1.0 = flat memory (streaming); the examples and models hold every patient",
    )
    result.notes.append(
        "Each size is one full_pipeline run (all assets and checks, in-process executor) in "
        "its own spawned process, sizes in increasing order. Step rows give each asset's "
        "time growth x4 / x1: near 4 for per-patient work (generation, curation, training), "
        "near 1 for fixed costs (quality suites, Feast apply, ONNX export)."
    )
    return result

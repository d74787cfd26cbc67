"""The whole tiny pipeline through Dagster (time per asset), and early-pipeline scaling.

The Dagster run uses the `tiny` profile: the `demo` profile takes longer than the bench
budget allows on 2 cores. It runs in a fresh spawned process (LUNGJEPA_PROFILE is read when
orchestration is imported), on a throw-away folder and a real local Dagster instance; the
time per asset comes from the instance's step stats (event log), the peak RSS from the
process. Scaling times synth + curate + features (the same domain calls the raw_archive,
curated_scans and ehr_features assets make) at archive size x1, x2, x4, sizes interleaved.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, BenchSize, in_child, interleaved
from cohorts.dicom import CurationConfig, curate_cohort
from cohorts.ehr.features import build_feature_tables, combine_cohorts, fit_signatures
from cohorts.synthetic import generate_archive, preset_config
from cohorts.synthetic.config import COHORTS, PRESETS
from feature_repo import store as feast_store

COMMAND_PIPELINE = "python -m benchmarks.run --only pipeline"
COMMAND_SCALING = "python -m benchmarks.run --only scaling"
REPO_DIR = Path(__file__).resolve().parents[1] / "feature_repo"


def dagster_run(root: str, selection: list[str] | None) -> dict[str, Any]:
    """Materialise `selection` (None: everything) in-process; wall seconds per step."""
    import dagster as dg

    from orchestration.definitions import defs

    base = Path(root)
    config: dict[str, Any] = {
        "resources": {
            "paths": {
                "config": {
                    "data_dir": str(base / "data"),
                    "artifacts_dir": str(base / "artifacts"),
                    "metrics_dir": str(base / "metrics"),
                }
            },
            "feature_store": {"config": {"data_dir": str(base / "data")}},
        }
    }
    if selection is None or "evaluation" in selection:
        config["ops"] = {"evaluation": {"config": {"results_markdown": str(base / "RESULTS.md")}}}
    keys = [dg.AssetKey(name) for name in selection] if selection else None
    job = defs.resolve_job_def("full_pipeline")
    (base / "dagster_home").mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.local_temp(tempdir=str(base / "dagster_home")) as instance:
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, asset_selection=keys, run_config=config, raise_on_error=False
        )
        wall = time.perf_counter() - started
        steps = {
            s.step_key: (s.end_time - s.start_time)
            for s in instance.get_run_step_stats(result.run_id)
            if s.start_time is not None and s.end_time is not None
        }
        statuses = {
            s.step_key: str(s.status.value if s.status else None)
            for s in instance.get_run_step_stats(result.run_id)
        }
        run_stats = instance.get_run_stats(result.run_id)
    return {
        "success": bool(result.success),
        "wall_s": wall,
        "run_s": (run_stats.end_time or 0.0) - (run_stats.start_time or 0.0),
        "steps_s": steps,
        "statuses": statuses,
    }


def run_pipeline(
    size: BenchSize, work_dir: Path, selection: list[str] | None = None
) -> BenchResult:
    result = BenchResult("pipeline", "Whole tiny pipeline through Dagster", COMMAND_PIPELINE)
    root = work_dir / "pipeline"
    root.mkdir(parents=True, exist_ok=True)
    child = in_child(dagster_run, str(root), selection, env={"LUNGJEPA_PROFILE": "tiny"})
    data = child["value"]
    result.config = {
        "profile": "tiny",
        "selection": selection or "all assets",
        "success": data["success"],
        "statuses": data["statuses"],
    }
    result.add("whole run (in-process executor)", "s", [data["wall_s"]])
    if data["wall_s"] > 0:
        result.ratio(
            "sum of step times / run wall time",
            sum(data["steps_s"].values()) / data["wall_s"],
            "share of the run spent inside assets and checks (the rest: Dagster and start-up)",
        )
    for step, seconds in sorted(data["steps_s"].items(), key=lambda kv: -kv[1]):
        share = seconds / data["wall_s"] if data["wall_s"] else 0.0
        result.add(f"step {step}", "s", [seconds], share_of_run=share)
    result.add("peak RSS (whole run, one process)", "MiB", [child["maxrss_kib"] / 1024])
    result.add(
        "peak RSS of worker processes (largest)", "MiB", [child["children_maxrss_kib"] / 1024]
    )
    if not data["success"]:
        result.notes.append("The run FAILED; step times cover the steps that finished.")
    result.notes.append(
        "Tiny profile only: the demo profile's run is longer than the 20-minute bench budget "
        "on 2 cores. Step times are Dagster step stats (start to end of each step) from a "
        "real local instance's event log; peak memory is per process (the in-process "
        "executor runs every asset in one process), not per asset."
    )
    shutil.rmtree(root, ignore_errors=True)
    return result


def early_pipeline(factor: int) -> dict[str, float]:
    """Synth + curate + features at `factor` x the tiny preset's cohort sizes.

    Returns seconds per stage and the number of scans generated.
    """
    root = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    stages: dict[str, float] = {}
    try:
        tiny = PRESETS["tiny"]
        sizes = {k: int(tiny[k]) * factor for k in ("n_archive", "n_internal", "n_external")}
        started = time.perf_counter()
        summary = generate_archive(
            root / "raw", preset_config("tiny", workers=1, **sizes), progress=False
        )
        stages["synth"] = time.perf_counter() - started
        started = time.perf_counter()
        config = CurationConfig(workers=1, min_slices=8, crop_size_vox=16)
        for cohort in COHORTS:
            curate_cohort(root / "raw" / cohort, root / "curated" / cohort, config, progress=False)
        stages["curate"] = time.perf_counter() - started
        started = time.perf_counter()
        signatures = fit_signatures(root / "raw" / "archive" / "ehr", 4, 1825)
        key = config.pseudonym_key
        parts = [
            build_feature_tables(root / "raw" / c / "ehr", c, key, signatures, 1825)
            for c in COHORTS
        ]
        data_dir = root / "data"
        feast_store.write_sources(combine_cohorts(parts), data_dir)
        store = feast_store.open_store(REPO_DIR, data_dir)
        feast_store.apply_definitions(store, data_dir, 3650, 4)
        feast_store.materialize(store, dt.datetime.now(dt.UTC))
        stages["features"] = time.perf_counter() - started
        stages["scans"] = float(sum(c["scans"] for c in summary["cohorts"].values()))
        return stages
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_scaling(
    size: BenchSize, work_dir: Path, factors: tuple[int, ...] = (1, 2, 4)
) -> BenchResult:
    result = BenchResult("scaling", "Early pipeline scaling with archive size", COMMAND_SCALING)
    result.config = {
        "stages": "generate_archive -> curate_cohort (3 cohorts) -> EHR features into Feast",
        "x1": {k: PRESETS["tiny"][k] for k in ("n_archive", "n_internal", "n_external")},
        "workers": 1,
    }
    reps = max(1, size.reps // 2)
    timed = interleaved({f"x{f}": lambda f=f: early_pipeline(f) for f in factors}, reps, 0)
    medians = {}
    for label, runs in timed.items():
        medians[label] = result.add(
            f"synth + curate + features, archive {label}",
            "s",
            [s for s, _ in runs],
            scans=int(runs[0][1]["scans"]),
        )["median"]
    for f in reversed(factors[1:]):  # the largest first: the key ratio
        result.ratio(
            f"time x{f} / x1",
            medians[f"x{f}"] / medians[f"x{factors[0]}"],
            f"{f}.0 = linear in archive size; less = fixed costs amortised",
        )
    last = f"x{factors[-1]}"
    for stage in ("synth", "curate", "features"):
        stage_medians = {
            label: result.add(f"{stage} stage, archive {label}", "s", [r[stage] for _, r in runs])[
                "median"
            ]
            for label, runs in timed.items()
        }
        if len(factors) > 1:
            result.ratio(
                f"{stage} stage {last} / x{factors[0]}",
                stage_medians[last] / stage_medians[f"x{factors[0]}"],
                f"{factors[-1]}.0 = linear per stage; fixed costs (Feast apply, materialise) grow less",
            )
    result.notes.append("Sizes run round-robin (x1, x2, x4, x1, ...) so noise hits all alike.")
    return result

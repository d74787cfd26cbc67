"""`make bench`: run the benchmarks, write metrics/bench.json atomically, regenerate the docs.

    python -m benchmarks.run                    # everything (sized for 20 min on 2 cores)
    python -m benchmarks.run --quick            # smoke run, small sizes
    python -m benchmarks.run --only jepa_gpu    # one benchmark, merged into the existing json

A run with --only keeps the other benchmarks' last results in metrics/bench.json, so a GPU
machine can fill its section without repeating the CPU ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.common import FULL, ORDER, QUICK, BenchResult, BenchSize, environment
from benchmarks.report import render
from cohorts.files import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _lazy(module: str, function: str) -> Callable[[BenchSize, Path], BenchResult]:
    """`benchmarks.<module>.<function>`, imported only when that benchmark runs.

    Why: process-pool workers (forkserver, spawn) re-import the parent's ``__main__`` when they
    start. Importing every benchmark here pulled torch, Dagster and Feast into each curation
    and generation worker, which made 2 workers 4x slower than 1 (issue 21).
    """

    def call(size: BenchSize, work_dir: Path) -> BenchResult:
        return getattr(importlib.import_module(f"benchmarks.{module}"), function)(size, work_dir)

    call.__qualname__ = f"{module}.{function}"
    return call


BENCHMARKS: dict[str, Callable[[BenchSize, Path], BenchResult]] = {
    "curation": _lazy("curation", "run"),
    "synthetic": _lazy("synthetic", "run"),
    "jepa_cpu": _lazy("jepa", "run_cpu"),
    "jepa_gpu": _lazy("jepa", "run_gpu"),
    "inference": _lazy("inference", "run"),
    "feast_online": _lazy("feast_online", "run"),
    "pipeline": _lazy("pipeline", "run_pipeline"),
    "scaling": _lazy("pipeline", "run_scaling"),
    "predict": _lazy("predict", "run"),
    "serve": _lazy("serve", "run"),
}
# A benchmark missing from ORDER would be measured and then silently left out of the report.
if set(BENCHMARKS) != set(ORDER):
    raise RuntimeError(
        f"benchmarks.common.ORDER and BENCHMARKS differ: {set(BENCHMARKS) ^ set(ORDER)}"
    )


def run_all(names: Sequence[str], size: BenchSize, json_path: Path, markdown_path: Path) -> dict:
    """Run `names`, merge into json_path's earlier results, write json and markdown."""
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    results: dict = dict(previous.get("benchmarks", {}))
    errors: dict[str, str] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lungjepa-bench-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            try:
                result = BENCHMARKS[name](size, Path(tmp))
            except Exception:  # one broken benchmark must not lose the others' numbers
                errors[name] = traceback.format_exc()
                print(errors[name], file=sys.stderr)
                continue
            entry = result.to_dict()
            entry["seconds"] = time.perf_counter() - t0
            entry["size"] = size.name
            entry["finished_utc"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
            entry["load_average_1m"] = round(os.getloadavg()[0], 2)  # other jobs' load
            results[name] = entry
            print(f"bench: {name} done in {entry['seconds']:.0f} s", file=sys.stderr)
    report = {
        "size": size.name,
        "finished_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "total_seconds": time.perf_counter() - started,
        "environment": environment(),
        "benchmarks": {n: results[n] for n in ORDER if n in results},
        "errors": errors,
    }
    atomic_write_json(json_path, report)
    atomic_write_text(markdown_path, render(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run at small sizes")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    parser.add_argument("--json", type=Path, help="default metrics/bench.json (quick: -quick)")
    parser.add_argument(
        "--markdown", type=Path, help="default docs/BENCHMARKS.md (quick: metrics/)"
    )
    args = parser.parse_args(argv)
    names = [n for n in ORDER if n in (args.only or ORDER)]  # predict after pipeline
    # a smoke run must never replace the real figures
    default_json = REPO / "metrics" / ("bench-quick.json" if args.quick else "bench.json")
    default_md = REPO / ("metrics/BENCHMARKS-quick.md" if args.quick else "docs/BENCHMARKS.md")
    json_path, markdown_path = args.json or default_json, args.markdown or default_md
    report = run_all(names, QUICK if args.quick else FULL, json_path, markdown_path)
    print(f"bench: wrote {json_path} and {markdown_path} in {report['total_seconds']:.0f} s")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

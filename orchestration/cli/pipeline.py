"""`lungjepa` pipeline commands: demo (and its replicates), materialize, the named steps
(features, pretrain, finetune, evaluate, export) and the synthetic study.

Also the Dagster plumbing the other subjects share: the persistent instance and `materialize`,
which runs the full_pipeline job in-process. Dagster is imported inside the functions only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from orchestration.params import REPO_ROOT, resolve_path, section, storage_root

STEP_SELECTIONS: dict[str, list[str]] = {
    "features": ["ehr_features", "training_examples"],
    "pretrain": ["jepa_encoder"],
    "finetune": ["diagnostic_models"],
    "evaluate": ["evaluation"],
    "export": ["onnx_model", "production_model"],
}


def _instance():
    """The persistent Dagster instance (DAGSTER_HOME, default .dagster_home in the repo).

    Configured like `make ui`'s (orchestration/dagster.yaml copied in when the home has none),
    so CLI and UI runs share the concurrency pools; runs a kill left STARTED are recovered.
    """
    import dagster as dg

    from orchestration.runs import recover_dead_runs

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(REPO_ROOT / "orchestration" / "dagster.yaml", config)
    instance = dg.DagsterInstance.get()
    for run_id in recover_dead_runs(instance):
        print(f"lungjepa: run {run_id} was killed; marked failed, its pool slots freed",
              file=sys.stderr)  # fmt: skip
    return instance


def materialize(selection: list[str] | None, run_config: dict[str, Any] | None = None):
    """Run the full_pipeline job in-process (all assets, or the named ones) on the instance."""
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.runs import run_tags

    job = defs.resolve_job_def("full_pipeline")
    keys = [dg.AssetKey(name) for name in selection] if selection else None
    return job.execute_in_process(
        instance=_instance(), asset_selection=keys, run_config=run_config or {}, tags=run_tags()
    )


def demo_summary(elapsed_s: float, root: Path | None = None) -> str:
    """What `make demo` prints last: where each output went and the AUCs of evaluation.json."""
    paths = section("paths")
    if root is not None:
        paths = {"data": str(root / "data"), "artifacts": str(root / "artifacts"),
                 "metrics": str(root / "metrics")}  # fmt: skip
    metrics, artifacts = resolve_path(paths["metrics"]), resolve_path(paths["artifacts"])
    lines = [f"LungJEPA demo finished in {elapsed_s / 60:.1f} min", ""]
    lines.append(f"  raw archive      {resolve_path(paths['data']) / 'raw'}")
    lines.append(f"  curated cohorts  {resolve_path(paths['data']) / 'curated'}")
    lines.append(f"  encoders         {artifacts / 'encoders'}")
    production = artifacts / "models" / "production.json"
    if production.exists():
        pointer = json.loads(production.read_text())
        for name, rel in pointer["models"].items():
            lines.append(f"  {'ONNX ' + name:<16} {artifacts / rel}")
    lines.append(f"  metrics          {metrics}")
    results_md = storage_root() / "docs" / "RESULTS.md" if root is None else root / "RESULTS.md"
    lines.append(f"  results          {results_md}")
    evaluation = metrics / "evaluation.json"
    if evaluation.exists():
        results = json.loads(evaluation.read_text())
        lines += ["", "  AUC [95% CI]      internal test          external"]
        for model in results["internal"]:
            cells = []
            for cohort in ("internal", "external"):
                r = results[cohort][model]
                cells.append(f"{r['auc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
            lines.append(f"  {model:<16} {cells[0]:<22} {cells[1]}")
    return "\n".join(lines)


def replicate_run_config(root: Path, seed: int) -> dict[str, Any]:
    """Run config of a demo replicate: every folder under ``root``, the generator at ``seed``."""
    from orchestration.resources import resources_under

    return {
        "resources": resources_under(root),
        "ops": {
            "raw_archive": {"config": {"seed": seed}},
            "evaluation": {"config": {"results_markdown": str(root / "RESULTS.md")}},
        },
    }


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole pipeline on the synthetic default; --seed N --out DIR: a replicate on data
    drawn with another generator seed, in its own folders (data/, artifacts/, metrics/,
    RESULTS.md under DIR), so the default demo's outputs are left as they are."""
    start = time.perf_counter()
    run_config: dict[str, Any] = {}
    root = None
    if args.seed is not None or args.out is not None:
        if args.seed is None or args.out is None:
            print("lungjepa demo: give --seed and --out together", file=sys.stderr)
            return 2
        root = Path(args.out).resolve()
        run_config = replicate_run_config(root, args.seed)
    result = materialize(None, run_config)
    if not result.success:
        print("demo failed: see the Dagster run log above", file=sys.stderr)
        return 1
    if root is not None:
        record_replicate(root, args.seed, time.perf_counter() - start)
    print(demo_summary(time.perf_counter() - start, root))
    return 0


def record_replicate(root: Path, seed: int, seconds: float) -> Path:
    """metrics/replicates/seed<N>.json: a replicate's evaluation, for RESULTS.md's table."""
    from cohorts.files import atomic_write_json
    from orchestration.study import settings_fingerprint

    metrics = resolve_path(section("paths")["metrics"])
    record = {
        "seed": seed,
        "settings_fingerprint": settings_fingerprint(),  # seed aside, what the replicate ran
        "command": f"lungjepa demo --seed {seed} --out {os.path.relpath(root, REPO_ROOT)}",
        "minutes": seconds / 60,
        "evaluation": json.loads((root / "metrics" / "evaluation.json").read_text()),
    }
    path = metrics / "replicates" / f"seed{seed}.json"
    atomic_write_json(path, record)
    return path


def cmd_materialize(args: argparse.Namespace) -> int:
    selection = [s for item in args.select for s in item.split(",") if s]
    return 0 if materialize(selection).success else 1


def cmd_step(args: argparse.Namespace) -> int:
    return 0 if materialize(STEP_SELECTIONS[args.command]).success else 1


def cmd_study(args: argparse.Namespace) -> int:
    """The synthetic sweep; use it with `--profile study` (the sizes one cell should have)."""
    from models.study import StudySettings
    from orchestration.study import run_study

    plan = StudySettings.from_params(section("study"))
    regimes, seeds = list(plan.regimes), list(plan.seeds)
    if args.regimes:
        regimes = [float(r) for r in args.regimes.split(",")]
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
    paths = section("paths")
    root = Path(args.out) if args.out else resolve_path(paths["data"]) / "study"
    study = run_study(
        root,
        resolve_path(paths["metrics"]),
        regimes,
        seeds,
        _instance(),
        plan,
        run_missing=not args.summarise,
        document=REPO_ROOT / "docs" / "STUDY.md",
    )
    if study["cells_missing"]:
        print(f"not run yet ({len(study['cells_missing'])}): {', '.join(study['cells_missing'])}")
    for row in study["rows"]:
        print(
            f"{row['cohort']:<9} regime {row['regime']:<5g} {row['comparison']:<26} "
            f"{row['pooled_difference']:+.3f} [{row['pooled_ci_low']:+.3f}, "
            f"{row['pooled_ci_high']:+.3f}] p={row['pooled_p']:.3g}"
        )
    for trend in study["trends"]:
        print(
            f"{trend['cohort']:<9} trend {trend['comparison']:<26} slope "
            f"{trend['slope_per_unit_regime']:+.3f} [{trend['ci_low']:+.3f}, "
            f"{trend['ci_high']:+.3f}] p={trend['p_value']:.3g}"
        )
    primary = study["primary"]
    print(
        f"pre-registered ({primary['cohort']} {primary['comparison']}): gain CI above 0 at "
        f"regime {primary['regime']:g}: {primary['gain_ci_above_zero']}; negative slope with "
        f"p < {primary['alpha']:g}: {primary['slope_negative_significant']}; met: {primary['met']}"
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this subject's subcommands on the `lungjepa` parser."""
    demo = sub.add_parser("demo", help="run the whole pipeline on the synthetic default")
    demo.add_argument("--seed", type=int, help="generator seed of a replicate (with --out)")
    demo.add_argument("--out", help="folder of the replicate's data, artifacts and results")
    demo.set_defaults(func=cmd_demo)
    mat = sub.add_parser("materialize", help="materialise named assets (comma-separated)")
    mat.add_argument("--select", action="append", required=True)
    mat.set_defaults(func=cmd_materialize)
    for step, keys in STEP_SELECTIONS.items():
        sub.add_parser(step, help=f"materialise {', '.join(keys)}").set_defaults(func=cmd_step)

    study = sub.add_parser("study", help="synthetic sweep over causal regimes x seeds")
    study.add_argument("--regimes", help="comma-separated, default params.yaml study.regimes")
    study.add_argument("--seeds", help="comma-separated, default params.yaml study.seeds")
    study.add_argument("--out", help="folder for the cells' data (default data/study)")
    study.add_argument(
        "--summarise",
        action="store_true",
        help="summarise the finished cells (metrics/study/) without running the missing ones",
    )
    study.set_defaults(func=cmd_study)

"""`lungjepa`: the command line. Pipeline steps run as Dagster materialisations (so they show
in the UI's run history); `synth` and `curate` also work on any folder without Dagster.

The profile (LUNGJEPA_PROFILE, or --profile) is applied before the Dagster modules are
imported, because their Config defaults are read from params.yaml at import time.

Size: over 450 lines because every subcommand's handler sits here beside its parser; each
handler is a thin call into one domain or orchestration function. Issue 18's restructuring
splits them into a cli/ package by subject (pipeline, data, prediction, models).
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

from orchestration.params import (
    PROFILE_ENV,
    REPO_ROOT,
    privacy_config,
    resolve_path,
    section,
    storage_root,
)

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


def cmd_synth(args: argparse.Namespace) -> int:
    from cohorts.synthetic import generate_archive, preset_config

    synth = section("synth")
    config = preset_config(
        args.preset or synth["preset"],
        seed=synth["seed"] if args.seed is None else args.seed,
        regime=synth["regime"] if args.regime is None else args.regime,
        workers=args.workers or synth["workers"],
    )
    summary = generate_archive(Path(args.out), config, progress=True)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    """Any folder of DICOM files (the pipeline's raw layout, or a hospital export as it is)."""
    from cohorts.dicom import CurationConfig, RawCohort, curate_cohort

    params = section("curate")
    if args.workers:
        params["workers"] = args.workers
    raw = Path(args.input)
    if not raw.is_dir():
        print(f"lungjepa curate: input folder not found: {raw}", file=sys.stderr)
        return 2
    config = CurationConfig.from_params(params, privacy_config())
    cohort = RawCohort.from_folder(
        raw,
        annotations=Path(args.annotations) if args.annotations else None,
        labels=Path(args.labels) if args.labels else None,
    )
    try:
        summary = curate_cohort(cohort, Path(args.output), config, progress=True)
    except (OSError, ValueError) as error:
        print(f"lungjepa curate: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    return 0


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


def cmd_ablation(args: argparse.Namespace) -> int:
    """An ablation on the pipeline's examples, out of fold; then RESULTS.md is re-rendered.

    Default: readout x patch-stem variants of from-scratch models (metrics/ablation.json).
    --pretrain: JEPA pretraining variants (metrics/pretrain_ablation.json), each pretrained
    on the archive into artifacts/ablation/<variant> (resumed there after a kill).
    """
    from cohorts.files import atomic_write_json
    from models.ablation import run_ablation, run_pretrain_ablation
    from models.data import load_examples
    from models.jepa.config import encoder_config_for
    from orchestration.assets.evaluation import DiagnosticConfig
    from orchestration.assets.training import PretrainRunConfig
    from orchestration.resources import PipelinePaths
    from orchestration.study import settings_fingerprint

    paths = PipelinePaths()
    try:
        cohorts = {c: load_examples(paths.examples(c)) for c in ("archive", "internal", "external")}
    except FileNotFoundError as error:
        print(f"lungjepa ablation: {error}; run `make demo` first", file=sys.stderr)
        return 2
    settings = section("ablation")
    evaluate = section("evaluate")
    pretrain_config = PretrainRunConfig().domain("cpu")
    common = {
        "n_replicates": evaluate["bootstrap_replicates"],
        "seed": evaluate["seed"],
        "progress": print,
    }
    start = time.perf_counter()
    if args.pretrain:
        spec = settings["pretrain"]
        rows = run_pretrain_ablation(
            cohorts["archive"],
            cohorts["internal"],
            cohorts["external"],
            pretrain_config,
            DiagnosticConfig().domain(),
            spec["variants"],
            paths.artifacts / "ablation",
            models=spec["models"],
            **common,
        )
        name, note = (
            "pretrain_ablation.json",
            (
                "Out-of-fold internal AUC of the JEPA models when one ingredient of pretraining "
                "changes (params.yaml ablation.pretrain); each variant pretrains on the archive "
                "with the pipeline's settings otherwise, then the same folds, seeds and LP-FT "
                "recipe. Diameter R^2: 5-fold cross-validated ridge probe of log diameter on the "
                "frozen encoder's image tokens, over the archive's nodules."
            ),
        )
    else:
        rows = run_ablation(
            cohorts["internal"],
            cohorts["external"],
            encoder_config_for(cohorts["internal"], pretrain_config),
            DiagnosticConfig().domain(),
            [tuple(v) for v in settings["variants"]],
            models=settings["models"],
            **common,
        )
        name, note = (
            "ablation.json",
            (
                "Out-of-fold internal AUC of from-scratch models that differ only in the "
                "readout (what the head reads from the latest scan's tokens) and the patch stem "
                "(how a patch becomes a token); same folds, seeds and finetuning recipe as the "
                "pipeline's diagnostic models."
            ),
        )
    profile = os.environ.get(PROFILE_ENV)
    command = "lungjepa " + (f"--profile {profile} " if profile else "") + "ablation"
    command += " --pretrain" if args.pretrain else ""
    atomic_write_json(
        paths.metrics / name,
        {
            "note": note,
            "provenance": f"{command} ({time.perf_counter() - start:.0f} s)",
            # the measured params and generator settings (RESULTS.md flags other ones)
            "settings_fingerprint": settings_fingerprint(),
            "rows": rows,
        },
    )
    # RESULTS.md is rendered by the evaluation asset, which reads metrics/*ablation.json
    return 0 if materialize(["evaluation"]).success else 1


def cmd_promote(args: argparse.Namespace) -> int:
    """Move the production pointer by hand (`promote VERSION`, `rollback`); logged like the gate."""
    from models.promotion import read_log, rollback_target
    from orchestration.assets.export import PROMOTION_LOG, move_production
    from orchestration.resources import PipelinePaths

    paths = PipelinePaths(**({"artifacts_dir": args.artifacts_dir} if args.artifacts_dir else {}))
    models = paths.artifacts / "models"
    try:
        if args.command == "promote":
            record = move_production(paths, args.version, "promote", args.reason)
        else:
            pointer = models / "production.json"
            current = json.loads(pointer.read_text())["version"] if pointer.exists() else None
            target = rollback_target(read_log(models / PROMOTION_LOG), current)
            if target is None:
                print("lungjepa rollback: no earlier production model in the log", file=sys.stderr)
                return 2
            record = move_production(paths, target, "rollback", args.reason)
    except ValueError as error:
        print(f"lungjepa {args.command}: {error}", file=sys.stderr)
        return 2
    print(f"production model: {record['challenger']} (was {record['champion']}); logged")
    return 0


def _serving_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(data folder with feast/, artifacts folder): the flags, else params.yaml paths."""
    paths = section("paths")
    data_dir = resolve_path(args.data_dir or paths["data"])
    return data_dir, resolve_path(args.artifacts_dir or paths["artifacts"])


def _serving_curation() -> Any:
    """The curation settings a prediction must share with training (params.yaml)."""
    from serving.predict import CurationSettings

    return CurationSettings(
        min_slices=int(section("curate")["min_slices"]),
        date_shift_max_days=privacy_config().date_shift_max_days,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """The prediction service (serving/http.py): models and feature store kept open."""
    from serving.http import serve
    from serving.service import PredictionService, ServiceConfig

    data_dir, artifacts_dir = _serving_dirs(args)
    service = PredictionService(
        ServiceConfig(
            artifacts_dir=artifacts_dir,
            data_dir=data_dir,
            feature_repo_dir=REPO_ROOT / "feature_repo",
            curation=_serving_curation(),
            allowed_dirs=tuple(Path(d) for d in args.allow_dir or ()),
        )
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"lungjepa serve: listening on {args.host}, beyond this machine: put it behind the "
            "hospital's TLS proxy and access control",
            file=sys.stderr,
        )
    health = service.health()
    print(
        f"lungjepa serve: http://{args.host}:{args.port} ({health['status']}, production "
        f"{health['production_version']}); POST /predict, /predict/batch; GET /health, /models",
        file=sys.stderr,
    )
    serve(service, args.host, args.port)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Torch-free: reads DICOM with the curation code, Feast online features, verified ONNX.

    Exit status: 0 done; 2 a bad input (message on stderr); batch mode: 1 when some rows
    could not be predicted (each such row carries its ``error``).
    """
    from models.onnx_runtime import ModelIntegrityError
    from serving.predict import (
        BatchRequest,
        PredictionError,
        PredictRequest,
        parse_date,
        parse_nodule,
        predict,
        predict_batch,
        resolve_model_path,
    )

    single = (args.dicom, args.nodule, args.patient_id)
    batch = (args.annotations, args.dicom_root)
    if not (all(single) and not any(batch)) and not (all(batch) and not any(single)):
        print(
            "lungjepa predict: give --dicom, --nodule and --patient-id (one nodule), "
            "or --annotations and --dicom-root (batch)",
            file=sys.stderr,
        )
        return 2
    data_dir, artifacts_dir = _serving_dirs(args)
    settings = _serving_curation()
    try:
        model_path = resolve_model_path(args.model, artifacts_dir)
        if args.annotations:
            rows = predict_batch(
                BatchRequest(
                    annotations_csv=Path(args.annotations),
                    dicom_root=Path(args.dicom_root),
                    model_path=model_path,
                    data_dir=data_dir,
                    feature_repo_dir=REPO_ROOT / "feature_repo",
                    curation=settings,
                    allow_missing_ehr=args.allow_missing_ehr,
                )
            )
            for row in rows:
                print(json.dumps(row))
            failed = sum("error" in row for row in rows)
            print(
                f"lungjepa predict: {len(rows) - failed} predicted, {failed} failed",
                file=sys.stderr,
            )
            return 1 if failed else 0
        request = PredictRequest(
            dicom_dir=Path(args.dicom),
            nodule_xyz_mm=parse_nodule(args.nodule),
            patient_id=args.patient_id,
            model_path=model_path,
            data_dir=data_dir,
            feature_repo_dir=REPO_ROOT / "feature_repo",
            curation=settings,
            at=parse_date(args.at) if args.at else None,
            diameter_mm=args.diameter,
            features_json=Path(args.features_json) if args.features_json else None,
            allow_missing_ehr=args.allow_missing_ehr,
        )
        result = predict(request)
    except (PredictionError, ModelIntegrityError) as error:
        print(f"lungjepa predict: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungjepa", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="params.yaml profile, e.g. tiny (default: none)")
    sub = parser.add_subparsers(dest="command", required=True)

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

    promote = sub.add_parser("promote", help="point production at a model version by hand")
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted by hand")
    promote.add_argument("--artifacts-dir", help="default params.yaml paths.artifacts")
    promote.set_defaults(func=cmd_promote)
    rollback = sub.add_parser("rollback", help="point production back at the previous model")
    rollback.add_argument("--reason", default="rolled back by hand")
    rollback.add_argument("--artifacts-dir", help="default params.yaml paths.artifacts")
    rollback.set_defaults(func=cmd_promote)

    ablation = sub.add_parser(
        "ablation", help="readout / tokenizer ablation, out of fold (metrics/ablation.json)"
    )
    ablation.add_argument(
        "--pretrain",
        action="store_true",
        help="the JEPA pretraining ablation instead (metrics/pretrain_ablation.json)",
    )
    ablation.set_defaults(func=cmd_ablation)

    synth = sub.add_parser("synth", help="write a synthetic raw archive")
    synth.add_argument("--out", required=True)
    synth.add_argument("--preset", choices=["tiny", "demo", "study"])
    synth.add_argument("--seed", type=int)
    synth.add_argument("--regime", type=float)
    synth.add_argument("--workers", type=int)
    synth.set_defaults(func=cmd_synth)

    curate = sub.add_parser("curate", help="curate one cohort's DICOM export")
    curate.add_argument(
        "--input",
        required=True,
        help="a folder of DICOM files in any layout, or the pipeline's raw cohort folder "
        "(dicom/ with annotations.csv and labels.csv beside it)",
    )
    curate.add_argument(
        "--output", required=True, help="curated output folder (not inside --input)"
    )
    curate.add_argument(
        "--annotations", help="nodule annotations CSV (seriesuid, coordX/Y/Z mm, diameter_mm)"
    )
    curate.add_argument(
        "--labels", help="labels CSV (person_id, seriesuid, malignant, diagnosis_date)"
    )
    curate.add_argument("--workers", type=int)
    curate.set_defaults(func=cmd_curate)

    pred = sub.add_parser(
        "predict", help="malignancy probability for one nodule (ONNX, Feast online; no torch)"
    )
    pred.add_argument("--dicom", help="folder with the patient's DICOM files")
    pred.add_argument(
        "--nodule",
        help="X,Y,Z world mm (LPS, as annotations.csv); write --nodule=-1,2,3 when X < 0",
    )
    pred.add_argument("--diameter", type=float, help="nodule diameter, mm (reported)")
    pred.add_argument("--patient-id", help="hospital patient id (DICOM PatientID)")
    pred.add_argument(
        "--at",
        help="the real scan date YYYY-MM-DD: picks the study (default: latest); outputs carry "
        "the shifted date",
    )
    pred.add_argument("--model", help="model.onnx path, or a name in production.json (jepa)")
    pred.add_argument("--features-json", help="EHR features {name: value} instead of Feast")
    pred.add_argument(
        "--allow-missing-ehr", action="store_true", help="unknown patient: imaging only"
    )
    pred.add_argument("--annotations", help="batch: LUNA16 CSV (seriesuid,coordX,coordY,coordZ)")
    pred.add_argument("--dicom-root", help="batch: folder holding the CSV's series")
    pred.add_argument("--data-dir", help="data folder with feast/ (default: params paths.data)")
    pred.add_argument("--artifacts-dir", help="artifacts folder (default: params paths.artifacts)")
    pred.set_defaults(func=cmd_predict)

    srv = sub.add_parser(
        "serve", help="HTTP prediction service: models and Feast kept open (no torch)"
    )
    srv.add_argument("--host", default="127.0.0.1", help="default loopback only")
    srv.add_argument("--port", type=int, default=8765)
    srv.add_argument(
        "--allow-dir",
        action="append",
        help="a folder requests may name (DICOM, annotations); repeatable; default: any",
    )
    srv.add_argument("--data-dir", help="data folder with feast/ (default: params paths.data)")
    srv.add_argument("--artifacts-dir", help="artifacts folder (default: params paths.artifacts)")
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.profile:
        os.environ[PROFILE_ENV] = args.profile
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

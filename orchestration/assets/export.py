"""ONNX export of the diagnostic models, parity with torch, and promotion to production."""

import json

import dagster as dg
import numpy as np
import torch

from cohorts.example_set import FIELDS, load_examples
from cohorts.files import atomic_write_json
from cohorts.quality.drift import ERROR, DriftThresholds, compare_cohorts, load_profile
from models.export import ExportSettings, export_onnx, record_parity, verify_parity
from models.figures import plot_promotions
from models.finetune import load_model
from models.onnx_runtime import load_verified_session, predict_onnx
from models.promotion import PromotionConfig, append_log, decide, manual_decision, read_log
from models.protocol import Ensemble
from orchestration.assets.evaluation import TRAINING_PROFILE, evaluation
from orchestration.configs import config_class, domain_values
from orchestration.dvc_versions import dvc_md5
from orchestration.lineage import MODELS, built_on
from orchestration.metadata import image_markdown, markdown_table
from orchestration.params import params, section
from orchestration.resources import PipelinePaths

_EXPORT = section("export")
_PROMOTION = section("promotion")
PROMOTION_LOG = "promotions.jsonl"
PROMOTION_PLOT = "promotions.png"  # the production AUC over the log (models/figures.py)
EXPORTED_MODELS: tuple[str, ...] = ("jepa", "imaging_only")


ExportConfig = config_class("ExportConfig", ExportSettings, _EXPORT, doc=ExportSettings.__doc__)


def date_shift_metadata(records: dict[str, dict]) -> dict[str, str]:
    """The training cohorts' date shift (params.yaml privacy when they were curated), for
    serving to shift a new scan's date alike; {} when older cohorts did not record it."""
    shifts = {r.get("date_shift_max_days") for r in records.values()} - {None}
    if len(shifts) > 1:
        raise dg.Failure(f"the cohorts were date-shifted differently ({sorted(shifts)} days)")
    return {"date_shift_max_days": str(shifts.pop())} if shifts else {}


PARITY_CASES = 32


def _ensemble(folder, name: str) -> Ensemble:
    """Every fold (x seed) member of one model kind: what was evaluated on the external cohort."""
    members = [load_model(p) for p in sorted((folder / name).glob("*.safetensors"))]
    return Ensemble(members).eval()


@dg.asset(
    pool="onnx_model",
    group_name="deployment",
    deps=[evaluation],
    kinds={"onnx"},
    code_version="1",
    description="The JEPA-finetuned model (and the imaging-only fallback), each the ensemble of "
    "its fold models, as ONNX with embedded input spec and versions, a sha256 card, and "
    "torch-vs-onnxruntime parity on external cases.",
)
def onnx_model(
    context: dg.AssetExecutionContext, config: ExportConfig, paths: PipelinePaths
) -> dg.MaterializeResult:
    version, folder = built_on(context, paths, MODELS)
    card = json.loads((folder / "card.json").read_text())
    # Parity is numerics, not accuracy: any real cases do; every internal patient is some
    # fold member's training data, so the external cohort is used, as in deployment.
    external = load_examples(paths.examples("external"))
    held_out = external.subset(np.arange(min(PARITY_CASES, len(external))))
    inputs = tuple(getattr(held_out, f) for f in FIELDS)
    example = tuple(torch.from_numpy(np.asarray(a[:2])) for a in inputs)
    example = (example[0].float(), *example[1:])
    rows, exported = [], {}
    for name in EXPORTED_MODELS:
        if not (folder / name).is_dir():
            continue
        model = _ensemble(folder, name)
        onnx_path = folder / "onnx" / name / "model.onnx"
        metadata = {
            "model": name,
            "model_version": version,
            "encoder_version": card["encoder_version"],
            "inputs": json.dumps(list(FIELDS)),
            "crop_shape_zyx": json.dumps(list(held_out.crops_hu.shape[2:])),
            "crop_spacing_mm": str(held_out.crop_spacing_mm),
            "max_timepoints": str(held_out.crops_hu.shape[1]),
            "ehr_feature_names": json.dumps([str(n) for n in held_out.ehr_feature_names]),
            "hu_window": json.dumps(list(model.members[0].encoder.config.hu_window)),
            "output": "probability of malignancy per patient",
            "key_fingerprints": json.dumps(
                {c: r.get("key_fingerprint") for c, r in card.get("privacy", {}).items()},
                sort_keys=True,
            ),
            **date_shift_metadata(card.get("privacy", {})),
        }
        export_onnx(model, example, onnx_path, metadata, opset=config.opset)
        parity = verify_parity(model, onnx_path, inputs, tolerance=config.parity_tolerance)
        record_parity(onnx_path.parent / "card.json", parity)
        exported[name] = str(onnx_path.relative_to(paths.artifacts))
        rows.append(
            {
                "model": name,
                "max_abs_diff": parity.max_abs_diff,
                "cases": parity.n_cases,
                "passed": parity.passed,
            }
        )
    atomic_write_json(folder / "onnx" / "exported.json", {"version": version, "models": exported})
    return dg.MaterializeResult(
        metadata={
            "version": dg.MetadataValue.text(version),
            "parity": markdown_table(rows),
            **{
                f"parity_max_abs_diff/{r['model']}": dg.MetadataValue.float(r["max_abs_diff"])
                for r in rows
            },
        },
        data_version=dg.DataVersion(version),
    )


class _PromotionRun(dg.Config):
    """params.yaml `promotion` (fields built from PromotionConfig, orchestration/configs.py):
    the non-inferiority gate of models/promotion.py."""

    def domain(self) -> PromotionConfig:
        return PromotionConfig(**domain_values(PromotionConfig, self.model_dump()))


PromotionRunConfig = config_class("PromotionRunConfig", PromotionConfig, _PROMOTION, _PromotionRun)


def _parity_checks(paths: PipelinePaths, exported: dict[str, str]) -> dict[str, bool]:
    """parity/<model>: did the exported ONNX model match torch (its card, written by onnx_model)?"""
    return {
        f"parity/{name}": bool(
            json.loads((paths.artifacts / rel).parent.joinpath("card.json").read_text())
            .get("extra", {})
            .get("parity", {})
            .get("passed", False)
        )
        for name, rel in exported.items()
    }


def training_drift(paths: PipelinePaths, champion: str, challenger: str) -> dict | None:
    """Drift of the challenger's training data against the champion's (their saved profiles).

    A challenger trained on data unlike its champion's (an arrival batch from a new scanner,
    a coding change in the EHR) may still score well on the frozen set; severity ERROR blocks
    its promotion until a person looks (and promotes by hand). None when either version has no
    profile (models built before profiles were saved).
    """
    profiles = [
        load_profile(paths.artifacts / "models" / v / TRAINING_PROFILE)
        for v in (champion, challenger)
    ]
    if profiles[0] is None or profiles[1] is None:
        return None
    groups = {g: (profiles[0][g], profiles[1][g]) for g in profiles[0]}
    result = compare_cohorts(groups, DriftThresholds.from_params(params()))
    return {
        "reference": champion,
        "candidate": challenger,
        "severity": result.severity,
        "errors": [f"{f.group}/{f.feature}" for f in result.with_severity(ERROR)],
        "counts": result.counts(),
    }


def move_production(paths: PipelinePaths, version: str, action: str, reason: str) -> dict:
    """Point production.json at `version` by hand (`promote` / `rollback`), logged like the gate.

    Refuses a version without exported models or whose parity failed: a by-hand move skips
    the comparison, never the checks.
    """
    folder = paths.artifacts / "models" / version
    exported_path = folder / "onnx" / "exported.json"
    if not exported_path.exists():
        raise ValueError(f"model version {version} has no exported ONNX models ({exported_path})")
    exported = json.loads(exported_path.read_text())["models"]
    checks = _parity_checks(paths, exported)
    failed = sorted(name for name, passed in checks.items() if not passed)
    if failed:
        raise ValueError(f"model version {version} failed {', '.join(failed)}; not promoted")
    pointer_path = paths.artifacts / "models" / "production.json"
    champion = json.loads(pointer_path.read_text())["version"] if pointer_path.exists() else None
    decision = manual_decision(action, version, champion, checks, reason)
    atomic_write_json(pointer_path, {"version": version, "models": exported})
    log_decision(paths, decision.to_dict())
    return decision.to_dict()


def log_decision(paths: PipelinePaths, record: dict) -> list[dict]:
    """Append a decision to promotions.jsonl and redraw promotions.png; the whole log."""
    models = paths.artifacts / "models"
    append_log(models / PROMOTION_LOG, record)
    log = read_log(models / PROMOTION_LOG)
    plot_promotions(log, models / PROMOTION_PLOT)
    return log


def _scores(paths: PipelinePaths, relative: str, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    """Probabilities of a verified ONNX model (path relative to artifacts/) on the inputs."""
    onnx_path = paths.artifacts / relative
    session, _ = load_verified_session(onnx_path, onnx_path.parent / "card.json")
    return predict_onnx(session, inputs)


@dg.asset(
    pool="production_model",
    group_name="deployment",
    deps=[onnx_model],
    kinds={"onnx"},
    code_version="3",
    description="Champion/challenger gate: points artifacts/models/production.json at the new "
    "models only if their checks passed and the challenger is non-inferior to the champion on "
    "the frozen evaluation set (the external cohort, which no model trains on); every decision "
    "is appended to artifacts/models/promotions.jsonl. Older versions stay on disk.",
)
def production_model(
    context: dg.AssetExecutionContext, config: PromotionRunConfig, paths: PipelinePaths
) -> dg.MaterializeResult:
    version, folder = built_on(context, paths, MODELS)
    exported = json.loads((folder / "onnx" / "exported.json").read_text())
    pointer_path = paths.artifacts / "models" / "production.json"
    champion = json.loads(pointer_path.read_text()) if pointer_path.exists() else None
    frozen_path = paths.examples("external")
    frozen = load_examples(frozen_path)
    frozen = frozen.subset(frozen.label >= 0)
    inputs = tuple(getattr(frozen, f) for f in FIELDS)
    checks = _parity_checks(paths, exported["models"])
    drift = None
    if champion is not None and champion["version"] != version:
        drift = training_drift(paths, champion["version"], version)
        if drift is not None:
            checks["training_drift"] = drift["severity"] != ERROR
    if config.model not in exported["models"]:
        raise ValueError(f"promotion model {config.model!r} was not exported by {version}")
    champion_scores = None
    if champion is not None and config.model in champion.get("models", {}):
        if (paths.artifacts / champion["models"][config.model]).exists():
            champion_scores = _scores(paths, champion["models"][config.model], inputs)
        else:
            context.log.warning(f"champion {champion['version']} files are gone: no comparison")
            champion = None
    decision = decide(
        frozen.label,
        _scores(paths, exported["models"][config.model], inputs),
        champion_scores,
        checks,
        config.domain(),
        challenger=version,
        champion=None if champion is None else champion["version"],
        evaluation_set=f"external examples md5 {dvc_md5(frozen_path)}",
    )
    if decision.promoted:
        atomic_write_json(pointer_path, {"version": version, "models": exported["models"]})
    log = log_decision(paths, {**decision.to_dict(), "training_drift": drift})
    in_production = version if decision.promoted else decision.champion
    context.log.info(f"promotion of {version}: {decision.reason}")
    history = [r for r in log if r["promoted"]]
    return dg.MaterializeResult(
        metadata={
            "version": dg.MetadataValue.text(str(in_production)),
            "challenger": dg.MetadataValue.text(version),
            "promoted": dg.MetadataValue.bool(decision.promoted),
            "reason": dg.MetadataValue.text(decision.reason),
            "challenger_auc": dg.MetadataValue.float(decision.challenger_auc),
            "training_drift": dg.MetadataValue.text(
                "not compared" if drift is None else f"{drift['severity']} {drift['errors']}"
            ),
            "champion_auc": dg.MetadataValue.float(
                float("nan") if decision.champion_auc is None else decision.champion_auc
            ),
            "production_auc_over_time": image_markdown(
                paths.artifacts / "models" / PROMOTION_PLOT, "Production AUC over time"
            ),
            "promotions": markdown_table(
                [
                    {"time": r["time"], "version": r["challenger"], "auc": r["challenger_auc"]}
                    for r in history[-10:]
                ]
            ),
        },
        data_version=dg.DataVersion(str(in_production)),
    )

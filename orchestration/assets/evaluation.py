"""Diagnostic models (ours and the baselines) and their internal / external evaluation."""

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from cohorts.batches import manifest_summary, read_manifests
from cohorts.example_set import ExampleSet, load_examples
from cohorts.files import atomic_output, atomic_write_json, atomic_write_text
from cohorts.privacy import read_key_record
from cohorts.quality.drift import save_profile, training_profile
from models.baselines import ReaderError
from models.encoders import load_encoder
from models.evaluation import (
    label_efficiency_summary,
    preregistered_comparisons,
    rank_agreement,
    reliability_curve,
    roc_curve_points,
)
from models.figures import plot_label_efficiency, plot_reliability, plot_roc
from models.finetune import FinetuneConfig, save_model
from models.jepa.versioning import data_hash
from models.protocol import (
    ProtocolConfig,
    evaluate_predictions,
    label_efficiency_frame,
    predictions_frame,
    predictions_from_frame,
    run_protocol,
)
from models.reporting import (
    CALIBRATION_MODELS,
    PAPER_AUC,
    results_markdown,
)
from orchestration.assets.instrument import INSTRUMENT_JSON
from orchestration.assets.training import jepa_encoder
from orchestration.configs import config_class, domain_values
from orchestration.dvc_versions import dvc_metadata
from orchestration.lineage import ENCODERS, MODELS, built_on
from orchestration.metadata import flat_numbers, image_markdown, markdown_table
from orchestration.params import section, storage_root
from orchestration.resources import PipelinePaths
from orchestration.study import settings_fingerprint

TRAINING_PROFILE = "training_profile"  # <models version>/training_profile/{ehr,image}.parquet
_FINETUNE = section("finetune")
_EVALUATE = section("evaluate")


ReaderErrorConfig = config_class("ReaderErrorConfig", ReaderError, _EVALUATE["reader"])


class _DiagnosticRun(dg.Config):
    """params.yaml `finetune` (fields built from FinetuneConfig and ProtocolConfig,
    orchestration/configs.py), plus the fold seed and the reader error of `evaluate`."""

    split_seed: int = Field(
        default=_EVALUATE["seed"], description="params.yaml evaluate.seed: folds and reader draws"
    )
    reader: ReaderErrorConfig = ReaderErrorConfig()  # type: ignore[valid-type]

    def domain(self) -> ProtocolConfig:
        values = self.model_dump()
        return ProtocolConfig(
            finetune=FinetuneConfig(**domain_values(FinetuneConfig, values)),
            **domain_values(ProtocolConfig, {k: v for k, v in values.items() if k != "reader"}),
            reader=ReaderError(
                **domain_values(ReaderError, values["reader"]), seed=self.split_seed
            ),
        )


DiagnosticConfig = config_class(
    "DiagnosticConfig", (FinetuneConfig, ProtocolConfig), _FINETUNE, _DiagnosticRun
)


@dg.asset(
    group_name="diagnosis",
    deps=[jepa_encoder],
    kinds={"pytorch", "safetensors"},
    code_version="3",  # 3: the training profile beside the models
    pool="gpu",
    description="JEPA-finetuned, frozen-probe, multimodal-from-scratch and imaging-only models, "
    "cross-fitted on repeated stratified folds of the internal cohort (out-of-fold predictions "
    "for every labeled patient, fold ensembles for external), the label-efficiency curve, and "
    "the clinical baselines (Brock and Mayo on a reader-measured diameter, the exact-size oracle).",
)
def diagnostic_models(
    context: dg.AssetExecutionContext, config: DiagnosticConfig, paths: PipelinePaths
) -> dg.MaterializeResult:
    encoder_version, encoder_folder = built_on(context, paths, ENCODERS)
    encoder_path = encoder_folder / "encoder.safetensors"
    internal = load_examples(paths.examples("internal"))
    external = load_examples(paths.examples("external"))
    protocol = config.domain()
    source = json.dumps(
        {
            "encoder": encoder_version,
            "internal": data_hash(internal),
            "external": data_hash(external),
            "config": config.model_dump(),
        },
        sort_keys=True,
    )
    version = hashlib.sha256(source.encode()).hexdigest()[:12]
    result = run_protocol(internal, external, load_encoder(encoder_path), protocol)
    out = paths.artifacts / "models" / version
    card = {
        "version": version,
        "encoder_version": encoder_version,
        "config": config.model_dump(),
        "crop_spacing_mm": internal.crop_spacing_mm,  # travels with the examples (curation's)
        # key fingerprint and date shift of each cohort's ids (cohorts/privacy.py), never a key
        "privacy": read_key_record(paths.data / "examples"),
        # the membership of each cohort the models saw (cohorts/batches.py), by version
        "cohort_manifests": manifest_summary(read_manifests(paths.data / "examples")),
    }
    for name, ensemble in result.ensembles.items():
        for member_name, member in zip(result.member_names[name], ensemble.members, strict=True):
            save_model(member, out / name / f"{member_name}.safetensors", {**card, "model": name})
    with atomic_output(out / "predictions.parquet") as tmp:
        predictions_frame(result).to_parquet(tmp, index=False)
    with atomic_output(out / "label_efficiency.parquet") as tmp:
        label_efficiency_frame(result).to_parquet(tmp, index=False)
    atomic_write_json(out / "folds.json", [fold.to_dict() for fold in result.folds])
    # what the models' training data looked like (archive + internal): the promotion gate
    # compares a later challenger's with it (orchestration/assets/export.py)
    archive = load_examples(paths.examples("archive"))
    save_profile(training_profile(ExampleSet.concat([archive, internal])), out / TRAINING_PROFILE)
    atomic_write_json(out / "card.json", {**card, "per_fold_auc": result.per_fold_auc})
    paths.point_latest("models", version, out)
    rows = [
        {"model": name, "fold_aucs": ", ".join(f"{a:.3f}" for a in aucs)}
        for name, aucs in result.per_fold_auc.items()
    ]
    return dg.MaterializeResult(
        metadata={
            "version": dg.MetadataValue.text(version),
            "encoder_version": dg.MetadataValue.text(encoder_version),
            **{f"manifest/{c}": m["version"] for c, m in card["cohort_manifests"].items()},
            "folds": dg.MetadataValue.int(len(result.folds)),
            "internal_patients_out_of_fold": dg.MetadataValue.int(len(result.labels["internal"])),
            "per_fold_auc": markdown_table(rows),
            **dvc_metadata(out),
        },
        data_version=dg.DataVersion(version),
    )


class EvaluationConfig(dg.Config):
    bootstrap_replicates: int = _EVALUATE["bootstrap_replicates"]
    seed: int = _EVALUATE["seed"]
    comparisons: dict[str, Any] = _EVALUATE["comparisons"]
    results_markdown: str = str(storage_root() / "docs" / "RESULTS.md")


@dg.asset(
    pool="evaluation",
    group_name="diagnosis",
    # cohort_drift (orchestration/quality.py) is upstream so RESULTS.md can set its signals
    # beside the measured external AUC change; named by key to keep the import one-way.
    # cause_visibility (orchestration/assets/instrument.py): the instrument's own check.
    deps=[diagnostic_models, dg.AssetKey("cohort_drift"), dg.AssetKey("cause_visibility")],
    kinds={"python"},
    code_version="1",
    description="AUC with percentile-bootstrap 95% CIs, Brier, DeLong tests (ours vs each model) "
    "on the internal test split and the external cohort; ROC curves; docs/RESULTS.md.",
)
def evaluation(
    context: dg.AssetExecutionContext, config: EvaluationConfig, paths: PipelinePaths
) -> dg.MaterializeResult:
    version, folder = built_on(context, paths, MODELS)
    labels, predictions = predictions_from_frame(pd.read_parquet(folder / "predictions.parquet"))
    evaluation_json = evaluate_predictions(
        labels, predictions, config.bootstrap_replicates, config.seed
    )
    evaluation_json["comparisons"] = preregistered_comparisons(
        labels, predictions, config.comparisons, config.bootstrap_replicates, config.seed
    )
    curve_path = folder / "label_efficiency.parquet"
    curve = pd.read_parquet(curve_path) if curve_path.exists() else pd.DataFrame()
    evaluation_json["label_efficiency"] = label_efficiency_summary(
        curve, config.bootstrap_replicates, config.seed
    )
    folds = json.loads((folder / "folds.json").read_text())
    evaluation_json["protocol"] = {
        "internal": "out-of-fold",
        "folds": len({f["fold"] for f in folds}),
        "repeats": len({f["repeat"] for f in folds}),
        "external": "ensemble of every fold model",
    }
    metrics = paths.metrics
    atomic_write_json(metrics / "evaluation.json", evaluation_json)
    metadata: dict[str, dg.MetadataValue] = {}
    for cohort in labels:
        curves = {
            name: roc_curve_points(labels[cohort], p) for name, p in predictions[cohort].items()
        }
        long = pd.concat(
            [frame.assign(model=name) for name, frame in curves.items()], ignore_index=True
        )
        atomic_write_text(metrics / f"roc_{cohort}.csv", long.to_csv(index=False))
        aucs = {name: evaluation_json[cohort][name]["auc"] for name in curves}
        png = metrics / f"roc_{cohort}.png"
        plot_roc(curves, png, title=f"ROC, {cohort} cohort", aucs=aucs)
        metadata[f"roc_{cohort}"] = image_markdown(png, f"ROC, {cohort}")
        reliability = {
            name: reliability_curve(labels[cohort], p)
            for name, p in predictions[cohort].items()
            if name in CALIBRATION_MODELS
        }
        png = metrics / f"reliability_{cohort}.png"
        plot_reliability(reliability, png, title=f"Calibration, {cohort} cohort")
        metadata[f"reliability_{cohort}"] = image_markdown(png, f"Calibration, {cohort}")
    if evaluation_json["label_efficiency"]["models"]:
        png = metrics / "label_efficiency.png"
        plot_label_efficiency(evaluation_json["label_efficiency"], png)
        metadata["label_efficiency"] = image_markdown(png, "Label efficiency (internal, OOF)")
    card = json.loads((folder / "card.json").read_text())
    encoder_version = card["encoder_version"]
    manifests = card.get("cohort_manifests", {})
    provenance = {
        "command": "make demo (or: lungjepa materialize --select evaluation)",
        # the content versions of the cohorts the models were trained and tested on
        "data_version": ", ".join(f"{c} {m['version']}" for c, m in sorted(manifests.items()))
        or "not recorded",
        "models_version": version,
        "encoder_version": encoder_version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    drift_path = folder / "drift.json"
    drift = json.loads(drift_path.read_text()) if drift_path.exists() else None
    agreement = {cohort: rank_agreement(predictions[cohort]) for cohort in labels}
    encoder_card = paths.artifacts / "encoders" / encoder_version / "card.json"
    probe = json.loads(encoder_card.read_text()).get("probe") if encoder_card.exists() else None
    instrument_path = metrics / INSTRUMENT_JSON
    instrument = json.loads(instrument_path.read_text()) if instrument_path.exists() else None
    if instrument is not None and instrument.get("encoder_version") != encoder_version:
        context.log.info(f"{instrument_path} is of another encoder: not reported")
        instrument = None
    ablations = {
        name: json.loads(path.read_text()) if (path := metrics / f"{name}.json").exists() else None
        for name in ("ablation", "pretrain_ablation")
    }
    # the synthetic study's own summary (`lungjepa --profile study study`): its verdict is
    # quoted under the pointer to docs/STUDY.md
    study_path = metrics / "study.json"
    study = json.loads(study_path.read_text()) if study_path.exists() else None
    markdown = results_markdown(
        evaluation_json,
        PAPER_AUC,
        provenance,
        drift,
        agreement,
        probe,
        ablations["ablation"],
        ablations["pretrain_ablation"],
        [json.loads(f.read_text()) for f in sorted((metrics / "replicates").glob("seed*.json"))],
        instrument,
        settings_fingerprint(),
        study,
    )
    atomic_write_text(Path(config.results_markdown), markdown)
    rows = [
        {
            "cohort": c,
            "model": m,
            "auc": r["auc"],
            "ci": f"{r['ci'][0]:.3f}-{r['ci'][1]:.3f}",
            "n": r["n"],
        }
        for c in labels
        for m, r in evaluation_json[c].items()
    ]
    primary = evaluation_json["comparisons"]["primary"]
    auc_numbers = {c: {m: r["auc"] for m, r in evaluation_json[c].items()} for c in labels}
    return dg.MaterializeResult(
        metadata={
            "table": markdown_table(rows),
            **flat_numbers(auc_numbers, prefix="auc/"),
            **flat_numbers(evaluation_json["delong"], prefix="delong_p/"),
            "primary_comparison": dg.MetadataValue.text(
                f"{primary['cohort']}: {primary['model']} vs {primary['versus']}"
            ),
            **flat_numbers(
                {k: primary[k] for k in ("diff", "p") if k in primary}, prefix="primary/"
            ),
            **metadata,
        }
    )

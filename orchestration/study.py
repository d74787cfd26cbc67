"""The paper's synthetic experiment: when does JEPA pretraining help, and when does it not?

Each cell of the sweep (causal regime x seed) is one ordinary run of the full_pipeline job on
its own data folder, with only the generator's regime and seed changed, so the study measures
exactly the product people run (and every cell shows in the Dagster UI, tagged). The
aggregate (models/study.py), JEPA minus from-scratch multimodal AUC per regime with a CI
over seeds, goes to metrics/study.json, a plot and docs/STUDY.md.

A finished cell leaves a small durable record, metrics/study/<cell>/{cell.json,
predictions.parquet}: its evaluation, the out-of-fold and external predictions and the
fingerprint of the settings it ran under. The summary is computed from these records only,
so the cells' bulky data folders may be deleted, the records are versioned with the other
metrics, and a sweep interrupted in one session resumes in the next (``--summarise`` writes
the summary of the finished cells without running any).
"""

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from cohorts.files import atomic_output, atomic_write_json
from cohorts.synthetic import preset_config
from models.evaluation import delong_test, rank_agreement
from models.protocol import predictions_from_frame
from models.study import (
    AGREEMENT,
    COMPARISONS,
    StudySettings,
    agreement_by_regime,
    instrument_by_regime,
    plot_study,
    power_analysis,
    primary_result,
    summarise,
    trends,
)
from models.study_report import study_markdown
from orchestration.assets.instrument import INSTRUMENT_JSON
from orchestration.params import params, section
from orchestration.resources import PipelinePaths, resources_under

CELL_MARKER = "cell.json"  # written last by a finished cell; its presence makes a rerun skip it
STUDY_COMMAND = "lungjepa --profile study study"
RECORDS_SUBDIR = "study"  # metrics/study/<cell>/: the durable record of each finished cell
PREDICTIONS = "predictions.parquet"
# the params.yaml sections that decide what a cell measures (paths and the gate do not)
MEASURED_SECTIONS: tuple[str, ...] = (
    "synth", "curate", "privacy", "features", "examples", "pretrain", "finetune", "evaluate",
)  # fmt: skip


def cell_run_config(root: Path, regime: float, seed: int) -> dict[str, Any]:
    """Run config of one cell: its own folders, this regime and seed.

    The cohort sizes are the active profile's (``--profile study`` for the study's own; the
    tiny profile in tests), never a second copy of them here.
    """
    return {
        "resources": resources_under(root),
        "ops": {
            "raw_archive": {"config": {"seed": seed, "regime": regime}},
            "evaluation": {"config": {"results_markdown": str(root / "RESULTS.md")}},
        },
    }


def run_cell(instance: dg.DagsterInstance, root: Path, regime: float, seed: int) -> dict[str, Any]:
    """Materialise the chain up to evaluation for one cell and return its evaluation.json."""
    from orchestration.definitions import defs

    job = defs.resolve_job_def("full_pipeline")
    keys = [
        dg.AssetKey(name)
        for name in (
            "raw_archive",
            "curated_scans",
            "ehr_features",
            "training_examples",
            "jepa_encoder",
            "diagnostic_models",
            "cause_visibility",
            "evaluation",
        )
    ]
    result = job.execute_in_process(
        run_config=cell_run_config(root, regime, seed),
        instance=instance,
        asset_selection=keys,
        tags={
            "lungjepa/study": "synthetic",
            "lungjepa/regime": str(regime),
            "lungjepa/seed": str(seed),
        },
    )
    if not result.success:
        raise RuntimeError(
            f"study cell regime={regime} seed={seed} failed; see run {result.run_id}"
        )
    return json.loads((root / "metrics" / "evaluation.json").read_text())


def cell_instrument(root: Path) -> dict[str, Any] | None:
    """The cell's instrument check (metrics/cause_visibility.json), None if it has none."""
    path = root / "metrics" / INSTRUMENT_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def cell_name(regime: float, seed: int) -> str:
    """Folder name of one cell, e.g. ``regime0.33_seed10``."""
    return f"regime{regime:g}_seed{seed}"


def settings_fingerprint(settings: dict[str, Any] | None = None) -> str:
    """sha256 (12 hex) of the MEASURED_SECTIONS of the active params, seed and regime left out.

    Two cells with one fingerprint ran the same method at the same sizes; a record whose
    fingerprint differs from the sweep's is never pooled with it.
    """
    settings = params() if settings is None else settings
    measured = {name: settings[name] for name in MEASURED_SECTIONS}
    synth = measured["synth"]
    sizes = {k: synth[k] for k in ("n_archive", "n_internal", "n_external") if synth.get(k)}
    generator = asdict(preset_config(synth["preset"], **sizes))  # the preset's sizes and rates
    measured["synth"] = {
        k: v for k, v in generator.items() if k not in ("seed", "regime", "workers")
    }
    text = json.dumps(measured, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_record(record_dir: Path, cell: dict[str, Any], predictions: Path) -> None:
    """The cell's durable record: predictions first, cell.json last (its presence = finished)."""
    record_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(record_dir / PREDICTIONS) as tmp:
        shutil.copyfile(predictions, tmp)
    atomic_write_json(record_dir / CELL_MARKER, cell)


def read_record(record_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """A finished cell's record, None when there is none; refuses one run under other settings."""
    marker = record_dir / CELL_MARKER
    if not marker.is_file() or not (record_dir / PREDICTIONS).is_file():
        return None
    cell = json.loads(marker.read_text())
    if cell.get("settings_fingerprint") != fingerprint:
        raise ValueError(
            f"{marker}: this cell ran under settings {cell.get('settings_fingerprint')}, the sweep "
            f"runs under {fingerprint} (params.yaml {', '.join(MEASURED_SECTIONS)}); move the "
            "record away to rerun the cell, or restore the settings it ran under"
        )
    return cell


def _cell_predictions(record_dir: Path) -> tuple[dict, dict]:
    """Labels and predictions per cohort, from the cell's record."""
    return predictions_from_frame(pd.read_parquet(record_dir / PREDICTIONS))


def cell_agreement(record_dir: Path, cohort: str = "internal") -> dict[str, float]:
    """Spearman correlation of the AGREEMENT pairs' predictions in one cell."""
    _, predictions = _cell_predictions(record_dir)
    matrix = rank_agreement(predictions[cohort])
    return {f"{a} ~ {b}": matrix[a][b] for a, b in AGREEMENT if a in matrix and b in matrix}


def cell_paired_differences(record_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per cohort and comparison: one cell's paired DeLong AUC difference and its variance.

    Read from the predictions in the cell's record (those the evaluation asset saved next to
    the cell's models), so a finished cell never has to be rerun to be summarised.
    """
    labels, predictions = _cell_predictions(record_dir)
    paired: dict[str, dict[str, dict[str, float]]] = {}
    for cohort, y in labels.items():
        for ours, other in COMPARISONS:
            if ours in predictions[cohort] and other in predictions[cohort]:
                test = delong_test(y, predictions[cohort][ours], predictions[cohort][other])
                paired.setdefault(cohort, {})[f"{ours} - {other}"] = {
                    "difference": test.diff,
                    "variance": test.var,
                    "n": int(y.size),
                }
    return paired


def run_study(
    root: Path,
    metrics_dir: Path,
    regimes: Sequence[float],
    seeds: Sequence[int],
    instance: dg.DagsterInstance,
    plan: StudySettings | None = None,
    run_missing: bool = True,
    document: Path | None = None,
) -> dict[str, Any]:
    """Run every (regime, seed) cell under ``root`` and write metrics/study.json + study.png.

    A cell with a record under metrics/study/ is not run again, nor is one whose data folder
    under ``root`` holds a finished cell (its record is written from it). ``run_missing``
    False summarises the finished cells only; the missing ones are listed in study.json and
    the pre-registered test is not met until every planned cell has run. ``document``:
    where to write the study's markdown (docs/STUDY.md from the CLI).
    """
    fingerprint = settings_fingerprint()
    cells, missing = [], []
    # seed by seed, every regime each time: a sweep stopped part-way still spans the regimes
    for seed in seeds:
        for regime in regimes:
            name = cell_name(regime, seed)
            cell_root, record_dir = root / name, metrics_dir / RECORDS_SUBDIR / name
            cell = read_record(record_dir, fingerprint)
            if cell is None:
                if (cell_root / CELL_MARKER).is_file():  # finished before its record was written
                    finished = json.loads((cell_root / CELL_MARKER).read_text())
                    if finished.get("settings_fingerprint", fingerprint) != fingerprint:
                        raise ValueError(
                            f"{cell_root / CELL_MARKER}: ran under other settings "
                            f"({finished['settings_fingerprint']}, the sweep: {fingerprint})"
                        )
                    evaluation = finished["evaluation"]
                elif run_missing:
                    evaluation = run_cell(instance, cell_root, regime, seed)
                else:
                    missing.append(name)
                    continue
                cell = {
                    "regime": float(regime),
                    "seed": int(seed),
                    "settings_fingerprint": fingerprint,
                    "evaluation": evaluation,
                    "instrument": cell_instrument(cell_root),
                }
                _, models = PipelinePaths(artifacts_dir=str(cell_root / "artifacts")).latest(
                    "models"
                )
                write_record(record_dir, cell, models / PREDICTIONS)
                atomic_write_json(cell_root / CELL_MARKER, cell)
            cells.append(
                {
                    **cell,
                    "paired": cell_paired_differences(record_dir),
                    "agreement": cell_agreement(record_dir),
                }
            )
    rows = summarise(cells, "internal") + summarise(cells, "external")
    trend_rows = trends(cells, "internal") + trends(cells, "external")
    plan = plan or StudySettings.from_params(section("study"))
    study = {
        "title": "Synthetic study: JEPA gain by causal regime",
        "note": "Each cell is a full pipeline run (study preset) with its own data, encoder and "
        "models. Per regime, the cells' paired DeLong AUC differences are pooled with "
        "DerSimonian-Laird random-effects weights (pooled_*: 95% CI, p); seed_mean and its "
        "t-interval over seeds are shown beside it. The trend is the meta-regression slope "
        "of the difference on the regime (negative: the gain shrinks as causes separate).",
        "regimes": [float(r) for r in regimes],
        "seeds": [int(s) for s in seeds],
        "settings_fingerprint": fingerprint,
        "cells_planned": len(regimes) * len(seeds),
        "cells_missing": missing,
        "rows": rows,
        "primary": primary_result(rows, trend_rows, plan, missing),
        "trends": trend_rows,
        "agreement": agreement_by_regime(cells),
        "instrument": instrument_by_regime(cells),
        "power": power_analysis(cells, plan),
        "cells": cells,
    }
    atomic_write_json(metrics_dir / "study.json", study)
    plot_study([r for r in rows if r["cohort"] == "internal"], metrics_dir / "study.png")
    if document is not None:  # rendered from the file as written, as anyone can rerender it
        saved = json.loads((metrics_dir / "study.json").read_text())
        with atomic_output(document) as tmp:
            tmp.write_text(study_markdown(saved, STUDY_COMMAND))
    return study

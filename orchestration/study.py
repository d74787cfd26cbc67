"""The paper's synthetic experiment: when does JEPA pretraining help, and when does it not?

Each cell of the sweep (causal regime x seed) is one ordinary run of the full_pipeline job on
its own data folder, with only the generator's regime and seed changed, so the study measures
exactly the product people run (and every cell shows in the Dagster UI, tagged). The
aggregate, JEPA minus from-scratch multimodal AUC per regime with a CI over seeds, goes to
metrics/study.json and a plot.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from cohorts.files import atomic_output, atomic_write_json
from orchestration.params import section

COMPARISONS: tuple[tuple[str, str], ...] = (
    ("jepa", "multimodal"),
    ("jepa", "imaging_only"),
    ("jepa_probe", "multimodal"),
)


def cell_run_config(root: Path, regime: float, seed: int) -> dict[str, Any]:
    """Run config of one cell: its own folders, the study preset, this regime and seed."""
    return {
        "resources": {
            "paths": {
                "config": {
                    "data_dir": str(root / "data"),
                    "artifacts_dir": str(root / "artifacts"),
                    "metrics_dir": str(root / "metrics"),
                }
            },
            "feature_store": {"config": {"data_dir": str(root / "data")}},
        },
        "ops": {
            "raw_archive": {"config": {"preset": "study", "seed": seed, "regime": regime}},
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


def summarise(cells: list[dict[str, Any]], cohort: str = "internal") -> list[dict[str, Any]]:
    """Per regime and comparison: mean AUC difference over seeds with a t-interval (95%)."""
    rows = []
    for regime in sorted({c["regime"] for c in cells}):
        at_regime = [c for c in cells if c["regime"] == regime]
        for ours, other in COMPARISONS:
            diffs = np.array(
                [
                    c["evaluation"][cohort][ours]["auc"] - c["evaluation"][cohort][other]["auc"]
                    for c in at_regime
                    if ours in c["evaluation"][cohort] and other in c["evaluation"][cohort]
                ]
            )
            if diffs.size == 0:
                continue
            mean = float(diffs.mean())
            if diffs.size > 1:
                half = float(
                    stats.t.ppf(0.975, diffs.size - 1) * diffs.std(ddof=1) / np.sqrt(diffs.size)
                )
            else:
                half = float("nan")
            rows.append(
                {
                    "regime": regime,
                    "comparison": f"{ours} - {other}",
                    "cohort": cohort,
                    "mean_auc_difference": mean,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                    "n_seeds": int(diffs.size),
                }
            )
    return rows


def plot_study(rows: list[dict[str, Any]], path: Path) -> None:
    """AUC difference vs regime, one line per comparison, with the seed CIs as error bars."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    ax.axhline(0.0, color="grey", linewidth=1, linestyle=":")
    for comparison in dict.fromkeys(r["comparison"] for r in rows):
        sel = [r for r in rows if r["comparison"] == comparison]
        x = [r["regime"] for r in sel]
        y = [r["mean_auc_difference"] for r in sel]
        err = [
            [r["mean_auc_difference"] - r["ci_low"] for r in sel],
            [r["ci_high"] - r["mean_auc_difference"] for r in sel],
        ]
        ax.errorbar(
            x, y, yerr=np.nan_to_num(np.asarray(err)), marker="o", capsize=3, label=comparison
        )
    ax.set(
        xlabel="regime (0 = shared causes, 1 = independent modality-specific causes)",
        ylabel="AUC difference (internal test)",
        title="When does JEPA pretraining help?",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def run_study(
    root: Path,
    metrics_dir: Path,
    regimes: Sequence[float],
    seeds: Sequence[int],
    instance: dg.DagsterInstance,
) -> dict[str, Any]:
    """Run every (regime, seed) cell under ``root`` and write metrics/study.json + study.png."""
    cells = []
    for regime in regimes:
        for seed in seeds:
            cell_root = root / f"regime{regime:g}_seed{seed}"
            evaluation = run_cell(instance, cell_root, regime, seed)
            cells.append({"regime": float(regime), "seed": int(seed), "evaluation": evaluation})
    rows = summarise(cells, "internal") + summarise(cells, "external")
    study = {
        "title": "Synthetic study: JEPA gain by causal regime",
        "note": "Each cell is a full pipeline run (study preset). Differences are paired within a "
        "cell; the interval is a t-interval over seeds.",
        "regimes": [float(r) for r in regimes],
        "seeds": [int(s) for s in seeds],
        "rows": rows,
        "cells": cells,
    }
    atomic_write_json(metrics_dir / "study.json", study)
    plot_study([r for r in rows if r["cohort"] == "internal"], metrics_dir / "study.png")
    return study


def default_sweep() -> tuple[list[float], list[int]]:
    """Regimes and seeds from params.yaml `study`."""
    study = section("study")
    return [float(r) for r in study["regimes"]], [int(s) for s in study["seeds"]]

"""The figures beside docs/RESULTS.md and in Dagster metadata: ROC, calibration, label efficiency.

Rendered with matplotlib's object API (Agg, no pyplot global state) and written atomically.
Legends use the model names of models/reporting.py.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cohorts.files import atomic_write_bytes
from models.reporting import MODEL_LABELS


def _save_figure(fig: Figure, path: Path) -> None:
    """Render to PNG in memory (Agg, no pyplot global state) and write atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(Path(path), buffer.getvalue())


def plot_roc(
    curves: Mapping[str, pd.DataFrame],
    path: Path,
    title: str = "ROC",
    aucs: Mapping[str, float] | None = None,
) -> None:
    """ROC curves (roc_curve_points frames: fpr, tpr) of several models on one PNG."""
    fig = Figure(figsize=(5.0, 5.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, frame in curves.items():
        label = MODEL_LABELS.get(name, name)
        if aucs is not None and name in aucs:
            label += f" (AUC {aucs[name]:.3f})"
        ax.step(frame["fpr"], frame["tpr"], where="post", label=label)
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=7)
    _save_figure(fig, path)


def plot_reliability(
    curves: Mapping[str, pd.DataFrame], path: Path, title: str = "Reliability"
) -> None:
    """Reliability diagrams (reliability_curve frames) of several models on one PNG."""
    fig = Figure(figsize=(5.0, 5.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, frame in curves.items():
        ax.plot(
            frame["mean_predicted"],
            frame["observed_fraction"],
            marker="o",
            label=MODEL_LABELS.get(name, name),
        )
    ax.set(xlabel="mean predicted probability", ylabel="observed malignant fraction", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=7)
    _save_figure(fig, path)


def plot_label_efficiency(curve: Mapping[str, Any], path: Path) -> None:
    """Out-of-fold internal AUC vs fraction of labeled training data, with 95% CIs."""
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.subplots()
    for model, points in curve["models"].items():
        x = [p["fraction"] * 100 for p in points]
        y = [p["auc"] for p in points]
        low = [p["auc"] - p["ci"][0] for p in points]
        high = [p["ci"][1] - p["auc"] for p in points]
        ax.errorbar(
            x, y, yerr=[low, high], marker="o", capsize=3, label=MODEL_LABELS.get(model, model)
        )
    ax.set(
        xlabel="labeled training data used (% of each training fold)",
        ylabel="internal AUC (out of fold)",
        title="Label efficiency",
    )
    ax.legend(loc="lower right", fontsize=7)
    _save_figure(fig, path)


def plot_promotions(records: list[Mapping[str, Any]], path: Path) -> None:
    """The production model's AUC on the frozen evaluation set over the promotion log.

    One point per gate decision: the challenger's AUC with its 95% CI, filled when it was
    promoted, hollow when refused; the line is the AUC of whatever was in production after
    each decision (the champion's, re-measured at that decision, when the challenger was
    refused). By-hand moves (promote, rollback) carry no AUC and show as vertical marks.
    """
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.subplots()
    steps: list[tuple[int, float]] = []
    for k, record in enumerate(records):
        auc = record.get("challenger_auc")
        if record.get("action", "gate") != "gate" or auc is None:
            ax.axvline(k, color="grey", linestyle=":", linewidth=1)
            ax.annotate(str(record.get("action")), (k, 0.97), xycoords=("data", "axes fraction"),
                        fontsize=7, rotation=90, color="grey", ha="right", va="top")  # fmt: skip
            continue
        low, high = record.get("challenger_ci") or (auc, auc)
        promoted = bool(record.get("promoted"))
        ax.errorbar([k], [auc], yerr=[[auc - low], [high - auc]], fmt="o", capsize=3,
                    color="tab:green" if promoted else "tab:red",
                    markerfacecolor="tab:green" if promoted else "white")  # fmt: skip
        current = auc if promoted else record.get("champion_auc")
        if current is not None:
            steps.append((k, float(current)))
    if steps:
        xs, ys = zip(*steps, strict=True)
        ax.step(xs, ys, where="post", color="black", linewidth=1, label="in production")
        ax.legend(loc="lower right", fontsize=7)
    ax.set(
        xlabel="decision (promotions.jsonl, oldest first)",
        ylabel="AUC, frozen evaluation set",
        title="Champion and challengers (filled: promoted, hollow: refused)",
    )
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save_figure(fig, path)


def plot_headroom(check: Mapping[str, Any], path: Path) -> None:
    """Horizontal bars: the truth-label AUC each set of inputs reaches (models/instrument.py)."""
    rows = list(check["headroom"])
    fig = Figure(figsize=(7.0, 0.45 * len(rows) + 1.2))
    ax = fig.add_subplot()
    ax.barh([r["features"] for r in rows], [r["auc"] for r in rows], color="#4c72b0")
    for i, row in enumerate(rows):
        ax.text(row["auc"] + 0.005, i, f"{row['auc']:.3f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.5, 1.0)
    ax.set_xlabel("cross-validated AUC of the truth label")
    ax.set_title(f"What each view leaves for pretraining (n = {check['n']})")
    _save_figure(fig, path)

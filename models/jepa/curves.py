"""A pretraining run's curves: pretrain.csv, one row per epoch, and pretrain.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from cohorts.files import atomic_write_bytes, atomic_write_text

CSV_COLUMNS: tuple[str, ...] = (
    "epoch",
    "step",
    "loss",
    "lr",
    "weight_decay",
    "ema_momentum",
    "target_std_mean",
    "target_std_min",
    "effective_rank",
    "collapsed",
    "samples_per_s",
)


def write_curves(out_dir: Path, history: list[dict[str, Any]], plot: bool = True) -> None:
    """pretrain.csv (one row per epoch) and, with plot, pretrain.png (loss, target std, rank)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in CSV_COLUMNS})
    atomic_write_text(out_dir / "pretrain.csv", buffer.getvalue())
    if not plot or not history:
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(
        axes,
        ("loss", "target_std_mean", "effective_rank"),
        ("JEPA loss", "target embedding std (mean over dims)", "effective rank"),
        strict=True,
    ):
        ax.plot(epochs, [r[key] for r in history], marker="o", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out_dir / "pretrain.png", png.getvalue())

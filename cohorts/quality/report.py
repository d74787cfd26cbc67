"""The drift report: markdown table of every feature, JSON of the numbers, histogram PNGs.

Every file is written atomically (cohorts.files), so a reader never sees half a report.
Histograms are drawn for the WARN and ERROR features (at most ``max_plots``, worst first).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohorts.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from cohorts.quality.drift import SEVERITY_RANK, SKIPPED, DriftResult, FeatureDrift


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def histogram_png(
    reference: np.ndarray, candidate: np.ndarray, title: str, labels: tuple[str, str]
) -> bytes:
    """Overlaid density histograms of two samples on shared bins, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    ref, cand = ref[np.isfinite(ref)], cand[np.isfinite(cand)]
    edges = np.histogram_bin_edges(np.concatenate([ref, cand]), bins=30)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(ref, bins=edges, density=True, alpha=0.5, label=f"{labels[0]} (n={len(ref)})")
    ax.hist(cand, bins=edges, density=True, alpha=0.5, label=f"{labels[1]} (n={len(cand)})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def json_safe(value: Any) -> Any:
    """NaN and infinities as None, so drift.json is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _fmt(value: float) -> str:
    return "" if value != value else f"{value:.3g}"  # NaN -> empty cell


def _row(f: FeatureDrift) -> str:
    cells = [
        f.group,
        f.feature,
        f"{f.n_reference}/{f.n_candidate}",
        _fmt(f.reference_mean),
        _fmt(f.candidate_mean),
        _fmt(f.ks_statistic),
        _fmt(f.ks_p_adjusted),
        _fmt(f.psi) + ("" if f.psi_used or f.severity == SKIPPED else " (n too small)"),
        f"**{f.severity}**" if f.severity in ("WARN", "ERROR") else f.severity,
    ]
    return "| " + " | ".join(cells) + " |"


def write_drift_report(
    result: DriftResult,
    groups: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
    out_dir: Path,
    labels: tuple[str, str] = ("reference", "candidate"),
    extra: dict[str, Any] | None = None,
    max_plots: int = 12,
) -> Path:
    """Write out_dir/report.md, out_dir/drift.json and out_dir/hist_<group>_<feature>.png.

    ``groups`` holds the values the result was computed from (for the histograms); ``extra``
    (JSON-ready) is added to drift.json and listed in the report, e.g. a cross-modal signal.
    Returns the report's path.
    """
    out_dir = Path(out_dir)
    flagged = sorted(
        (f for f in result.features if SEVERITY_RANK[f.severity] > 0),
        key=lambda f: (
            -SEVERITY_RANK[f.severity],
            -(f.ks_statistic if f.ks_statistic == f.ks_statistic else 0),
        ),
    )
    images = []
    for f in flagged[:max_plots]:
        reference, candidate = groups[f.group]
        name = f"hist_{_slug(f.group)}_{_slug(f.feature)}.png"
        title = f"{f.group}/{f.feature}: {f.severity} (KS D={f.ks_statistic:.2f}, PSI={f.psi:.2f})"
        png = histogram_png(reference[f.feature], candidate[f.feature], title, labels)
        atomic_write_bytes(out_dir / name, png)
        images.append((f, name))

    lines = [
        f"# Cohort drift: {labels[1]} vs {labels[0]}",
        "",
        f"Overall severity: **{result.severity}**. Counts per group: "
        + "; ".join(
            f"{group}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
            for group, counts in result.counts().items()
        ),
        "",
        "KS p-values are Bonferroni-adjusted within each group.",
        "",
    ]
    if extra:
        lines += ["## Other signals", ""]
        lines += [f"- {key}: {value}" for key, value in extra.items()]
        lines.append("")
    lines += [
        "## Features",
        "",
        "| group | feature | n ref/cand | mean ref | mean cand | KS D | KS p (adj.) | PSI "
        "| severity |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            _row(f)
            for f in sorted(result.features, key=lambda f: (f.group, -SEVERITY_RANK[f.severity]))
        ],
        "",
    ]
    if images:
        lines += ["## Histograms (WARN and ERROR features)", ""]
        lines += [f"![{f.group}/{f.feature}]({name})" for f, name in images]
        lines.append("")
    atomic_write_json(out_dir / "drift.json", json_safe({**result.to_dict(), "extra": extra or {}}))
    return atomic_write_text(out_dir / "report.md", "\n".join(lines))

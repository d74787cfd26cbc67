"""The synthetic study's statistics: cells pooled per regime, the trend, the verdict, the plot.

Plain Python over the cells' paired DeLong differences (orchestration/study.py runs the cells
and keeps their records): per regime the seeds are pooled with DerSimonian-Laird
random-effects weights, the trend over regimes is a mixed-effects meta-regression slope, and
the pre-registered test of params.yaml ``study.primary`` is read off both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from cohorts.files import atomic_output
from models.evaluation import POWER, detectable_difference
from models.meta_analysis import Pooled, random_effects_mean, random_effects_slope

COMPARISONS: tuple[tuple[str, str], ...] = (
    ("jepa", "multimodal"),
    ("jepa", "imaging_only"),
    ("jepa_probe", "multimodal"),
)
AGREEMENT: tuple[tuple[str, str], ...] = (
    ("jepa", "multimodal"),  # did finetuning leave the pretrained start behind?
    ("multimodal", "clinical_refit"),  # does the multimodal model lean on the EHR?
    ("multimodal", "clinical_brock"),  # ... or on nodule size, as Brock does?
    ("jepa_probe", "clinical_refit"),  # what the frozen pretrained features carry
    ("jepa_probe", "clinical_brock"),
)


@dataclass(frozen=True)
class StudySettings:
    """params.yaml `study`: the sweep and its pre-registered primary test.

    The primary test is fixed before the first run of the protocol: at ``regime`` the pooled
    internal gain ``model - versus`` must have a 95% CI above 0, and the meta-regression slope
    of that gain over the regime must be negative with p < ``alpha``.
    """

    regimes: tuple[float, ...]
    seeds: tuple[int, ...]
    cohort: str
    model: str
    versus: str
    regime: float
    alpha: float

    @classmethod
    def from_params(cls, study: Mapping[str, Any]) -> StudySettings:
        """From params.yaml ``study`` (regimes, seeds, primary, alpha)."""
        primary = study["primary"]
        return cls(
            regimes=tuple(float(r) for r in study["regimes"]),
            seeds=tuple(int(s) for s in study["seeds"]),
            cohort=str(primary["cohort"]),
            model=str(primary["model"]),
            versus=str(primary["versus"]),
            regime=float(primary["regime"]),
            alpha=float(study["alpha"]),
        )

    @property
    def comparison(self) -> str:
        return f"{self.model} - {self.versus}"


def primary_result(
    rows: Sequence[dict[str, Any]],
    trend_rows: Sequence[dict[str, Any]],
    plan: StudySettings,
    missing: Sequence[str] = (),
) -> dict[str, Any]:
    """The pre-registered verdict, read off the pooled rows and trends (never set by hand).

    ``met`` is True only when both halves hold on the whole planned sweep: a half whose row is
    missing (the regime or a second regime was not run) is None, and with ``missing`` cells
    the verdict is provisional and never a pass.
    """
    gain = next(
        (
            r
            for r in rows
            if r["cohort"] == plan.cohort
            and r["comparison"] == plan.comparison
            and np.isclose(r["regime"], plan.regime)
        ),
        None,
    )
    trend = next(
        (
            t
            for t in trend_rows
            if t["cohort"] == plan.cohort and t["comparison"] == plan.comparison
        ),
        None,
    )
    gain_holds = None if gain is None else bool(gain["pooled_ci_low"] > 0.0)
    slope_holds = (
        None
        if trend is None
        else bool(trend["slope_per_unit_regime"] < 0.0 and trend["p_value"] < plan.alpha)
    )
    return {
        "cohort": plan.cohort,
        "comparison": plan.comparison,
        "regime": plan.regime,
        "alpha": plan.alpha,
        "gain": None if gain is None else gain["pooled_difference"],
        "gain_ci": None if gain is None else [gain["pooled_ci_low"], gain["pooled_ci_high"]],
        "gain_ci_above_zero": gain_holds,
        "slope": None if trend is None else trend["slope_per_unit_regime"],
        "slope_p": None if trend is None else trend["p_value"],
        "slope_negative_significant": slope_holds,
        "complete": not missing,
        "met": bool(gain_holds and slope_holds and not missing),
    }


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    if values.size < 2:  # one seed: no interval, not a made-up one
        return float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size))
    return float(values.mean()) - half, float(values.mean()) + half


def summarise(cells: list[dict[str, Any]], cohort: str = "internal") -> list[dict[str, Any]]:
    """Per regime and comparison: the random-effects pooled AUC difference over seeds.

    Each cell contributes its paired DeLong difference weighted by 1 / (variance + tau^2);
    the plain mean over seeds with its t-interval is kept beside it for comparison.
    """
    rows = []
    for regime in sorted({c["regime"] for c in cells}):
        at_regime = [c for c in cells if c["regime"] == regime]
        for ours, other in COMPARISONS:
            name = f"{ours} - {other}"
            found = [c["paired"][cohort][name] for c in at_regime if name in c["paired"][cohort]]
            if not found:
                continue
            diffs = np.array([f["difference"] for f in found])
            pooled = random_effects_mean(diffs, [f["variance"] for f in found])
            t_low, t_high = _t_interval(diffs)
            rows.append(
                {
                    "cohort": cohort,
                    "regime": regime,
                    "comparison": name,
                    "pooled_difference": pooled.estimate,
                    "pooled_ci_low": pooled.ci_low,
                    "pooled_ci_high": pooled.ci_high,
                    "pooled_p": pooled.p_value,
                    "tau2": pooled.tau2,
                    "seed_mean": float(diffs.mean()),
                    "seed_t_ci_low": t_low,
                    "seed_t_ci_high": t_high,
                    "n_seeds": int(diffs.size),
                    "test_patients_per_cell": float(np.mean([f["n"] for f in found])),
                }
            )
    return rows


def trends(cells: list[dict[str, Any]], cohort: str = "internal") -> list[dict[str, Any]]:
    """Per comparison: change of the AUC difference from regime 0 to 1 (meta-regression slope).

    This is the study's question in one number: a negative slope means JEPA's advantage
    shrinks as the label's causes become modality-specific.
    """
    rows = []
    for ours, other in COMPARISONS:
        name = f"{ours} - {other}"
        found = [
            (c["regime"], c["paired"][cohort][name]) for c in cells if name in c["paired"][cohort]
        ]
        if len({regime for regime, _ in found}) < 2:
            continue
        slope = random_effects_slope(
            [regime for regime, _ in found],
            [f["difference"] for _, f in found],
            [f["variance"] for _, f in found],
        )
        rows.append(
            {
                "cohort": cohort,
                "comparison": name,
                "slope_per_unit_regime": slope.estimate,
                "ci_low": slope.ci_low,
                "ci_high": slope.ci_high,
                "p_value": slope.p_value,
                "tau2": slope.tau2,
                "cells": slope.k,
            }
        )
    return rows


def agreement_by_regime(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per regime: mean over seeds of each AGREEMENT pair's Spearman rho (internal test)."""
    rows = []
    for regime in sorted({c["regime"] for c in cells}):
        at_regime = [c["agreement"] for c in cells if c["regime"] == regime]
        row: dict[str, Any] = {"regime": regime}
        for pair in dict.fromkeys(k for a in at_regime for k in a):
            row[pair] = float(np.mean([a[pair] for a in at_regime if pair in a]))
        rows.append(row)
    return rows


INSTRUMENT_COLUMNS: dict[str, tuple[str, str | None]] = {
    "size + EHR": ("size + EHR", None),
    "added by true S": ("size + EHR + true S", "size + EHR"),
    "added by JEPA image tokens": ("size + EHR + JEPA image tokens", "size + EHR"),
    "size, growth + EHR": ("size, growth + EHR", None),
}
"""Study columns from each cell's instrument check (models/instrument.py headroom rows): an
AUC, or the AUC one set of inputs adds to another."""


def _instrument_value(check: Mapping[str, Any], column: str) -> float | None:
    """One INSTRUMENT_COLUMNS value of one cell's instrument check (None where not measured)."""
    inputs, minus = INSTRUMENT_COLUMNS[column]
    auc = {r["features"]: r["auc"] for r in check["headroom"]}
    if inputs not in auc or (minus is not None and minus not in auc):
        return None
    return float(auc[inputs] - (auc[minus] if minus else 0.0))


def instrument_by_regime(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per regime: mean over seeds of the instrument check's headroom (INSTRUMENT_COLUMNS) and
    of the S and size R^2 of the frozen JEPA vs random-init image tokens.

    Cells run before the check existed carry no ``instrument`` and are not counted.
    """
    rows = []
    for regime in sorted({c["regime"] for c in cells}):
        checks = [c["instrument"] for c in cells if c["regime"] == regime and c.get("instrument")]
        if not checks:
            continue
        row: dict[str, Any] = {"regime": regime, "cells": len(checks)}
        for column in INSTRUMENT_COLUMNS:
            values = [v for check in checks if (v := _instrument_value(check, column)) is not None]
            row[column] = float(np.mean(values)) if values else None
        for cause, short in (("shared_damage", "S"), ("log_diameter", "size")):
            for view, name in (("jepa_image", "JEPA"), ("random_image", "random")):
                values = [
                    r["r2"]
                    for check in checks
                    for r in check["visibility"]
                    if r["cause"] == cause and r["view"] == view
                ]
                row[f"{short} R^2, {name}"] = float(np.mean(values)) if values else None
        rows.append(row)
    return rows


ROOM_COLUMN = "added by true S"
"""The instrument's room: the AUC a perfect reader of the shared cause S adds to size + EHR."""


def _power_row(
    test: str, pooled: Pooled, room: float | None, seeds: int, alpha: float
) -> dict[str, Any]:
    """One half of the pre-registered test against the room the data leave for it.

    ``detectable``: the smallest true effect the test finds with POWER, (z_(1-alpha/2) +
    z_POWER) x SE. ``power_at_room``: the chance it finds an effect as large as ``room`` (in
    the pre-registered direction). ``seeds_for_power``: seeds per regime that would give POWER
    at ``room``, the SE shrinking as 1 / sqrt(seeds) (each cell's variance includes tau^2).
    """
    z_alpha = float(stats.norm.ppf(1.0 - alpha / 2.0))
    detectable = detectable_difference(pooled.se, alpha)
    usable = room is not None and abs(room) > 0.0 and pooled.se > 0.0
    return {
        "test": test,
        "estimate": pooled.estimate,
        "se": pooled.se,
        "detectable_with_80pct_power": detectable,
        "room_perfect_S_reader": room,
        "power_at_room": float(stats.norm.cdf(abs(room) / pooled.se - z_alpha)) if usable else None,
        "seeds_per_regime_now": seeds,
        "seeds_per_regime_for_80pct_power": (
            int(np.ceil(seeds * (detectable / abs(room)) ** 2)) if usable else None
        ),
    }


def power_analysis(cells: list[dict[str, Any]], plan: StudySettings) -> dict[str, Any] | None:
    """Could the sweep see the gain its data allow? Both halves of the pre-registered test
    set against the instrument's room (models/instrument.py, generator truth).

    Why: a test that fails says nothing about the method unless the sweep could have passed
    it. Pretraining can add at regime 0 only what the shared cause S adds to size + EHR, and
    a perfect reader of S bounds that: its measured gain (ROOM_COLUMN, per cell) is the
    largest regime-dependent effect any model could show. So the gain half is set against
    the room at ``plan.regime``, and the slope half against the least-squares slope of the
    cells' room over the regime (what the trend of a perfect S reader would be). The gain a
    model shows beyond that room (e.g. reading growth better) is not regime-dependent.

    Returns None until cells with an instrument check span two regimes.
    """
    found = [
        (c, c["paired"][plan.cohort][plan.comparison])
        for c in cells
        if plan.comparison in c["paired"].get(plan.cohort, {})
    ]
    rooms = [
        (c["regime"], room)
        for c, _ in found
        if c.get("instrument")
        and (room := _instrument_value(c["instrument"], ROOM_COLUMN)) is not None
    ]
    at_regime = [(c, f) for c, f in found if np.isclose(c["regime"], plan.regime)]
    if not at_regime or len({r for r, _ in rooms}) < 2:
        return None
    gain = random_effects_mean(
        [f["difference"] for _, f in at_regime], [f["variance"] for _, f in at_regime]
    )
    slope = random_effects_slope(
        [c["regime"] for c, _ in found],
        [f["difference"] for _, f in found],
        [f["variance"] for _, f in found],
    )
    room_here = [room for r, room in rooms if np.isclose(r, plan.regime)]
    room_slope = float(np.polyfit([r for r, _ in rooms], [room for _, room in rooms], 1)[0])
    seeds = len(at_regime)
    per_regime = round(len(found) / len({c["regime"] for c, _ in found}))
    return {
        "cohort": plan.cohort,
        "comparison": plan.comparison,
        "regime": plan.regime,
        "alpha": plan.alpha,
        "power": POWER,
        "rows": [
            _power_row(
                f"gain at regime {plan.regime:g}",
                gain,
                float(np.mean(room_here)) if room_here else None,
                seeds,
                plan.alpha,
            ),
            _power_row("slope over the regime", slope, room_slope, per_regime, plan.alpha),
        ],
    }


def plot_study(rows: list[dict[str, Any]], path: Path) -> None:
    """Pooled AUC difference vs regime, one line per comparison, 95% CIs as error bars."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    ax.axhline(0.0, color="grey", linewidth=1, linestyle=":")
    comparisons = list(dict.fromkeys(r["comparison"] for r in rows))
    for k, comparison in enumerate(comparisons):
        sel = [r for r in rows if r["comparison"] == comparison]
        dodge = 0.015 * (k - (len(comparisons) - 1) / 2)  # keep the error bars apart
        x = [r["regime"] + dodge for r in sel]
        y = [r["pooled_difference"] for r in sel]
        err = [
            [r["pooled_difference"] - r["pooled_ci_low"] for r in sel],
            [r["pooled_ci_high"] - r["pooled_difference"] for r in sel],
        ]
        ax.errorbar(
            x, y, yerr=np.nan_to_num(np.asarray(err)), marker="o", capsize=3, label=comparison
        )
    ax.set(
        xlabel="regime (0 = shared causes, 1 = independent modality-specific causes)",
        ylabel="AUC difference, pooled over seeds (internal test)",
        title="When does JEPA pretraining help?",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)

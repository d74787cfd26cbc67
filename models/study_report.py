"""docs/STUDY.md: the synthetic study (metrics/study.json) rendered, never typed in.

The study is its own experiment, run by `lungjepa --profile study study`; that command writes
this document from the cells' records, so it is regenerated exactly when its numbers change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.reporting import markdown_table

# JSON files keep keys sorted; the table reads better in this order.
STUDY_COLUMN_ORDER: tuple[str, ...] = (
    "cohort",
    "regime",
    "comparison",
    "pooled_difference",
    "pooled_ci_low",
    "pooled_ci_high",
    "pooled_p",
    "n_seeds",
)


def _study_primary(primary: Mapping[str, Any]) -> str:
    """One paragraph: the pre-registered test (params.yaml `study.primary`) and its verdict."""

    def verdict(value: bool | None) -> str:
        return "not run" if value is None else ("yes" if value else "no")

    gain = (
        "not run"
        if primary.get("gain") is None
        else f"{primary['gain']:+.3f} [{primary['gain_ci'][0]:+.3f}, {primary['gain_ci'][1]:+.3f}]"
    )
    slope = (
        "not run"
        if primary.get("slope") is None
        else f"{primary['slope']:+.3f} per unit regime, p = {primary['slope_p']:.3g}"
    )
    return (
        f"**Pre-registered test** (params.yaml `study.primary`, {primary['cohort']}, "
        f"`{primary['comparison']}`): pooled gain at regime {primary['regime']:g} {gain}, "
        f"95% CI above 0: **{verdict(primary.get('gain_ci_above_zero'))}**; trend {slope}, "
        f"negative with p < {primary['alpha']:g}: "
        f"**{verdict(primary.get('slope_negative_significant'))}**. "
        f"Both hold on the whole planned sweep: **{'yes' if primary.get('met') else 'no'}**."
    )


def study_section(study: Mapping[str, Any]) -> str:
    """Synthetic study: `{"title"?, "note"?, "rows": [...], "trends"?: [...]}` as tables."""
    rows = list(study.get("rows", []))
    parts = [f"# {study.get('title', 'Synthetic study')}", ""]
    if study.get("note"):
        parts += [str(study["note"]), ""]
    if not rows:
        return "\n".join([*parts, "No study rows were produced."])
    if study.get("cells_missing"):
        missing = list(study["cells_missing"])
        done = int(study["cells_planned"]) - len(missing)
        parts += [
            f"**Provisional: {done} of {study['cells_planned']} planned cells have run** "
            f"(not yet: {', '.join(missing)}). Rerun `lungjepa --profile study study` to "
            "run the rest; finished cells are kept in metrics/study/.",
            "",
        ]
    if study.get("primary"):
        parts += [_study_primary(study["primary"]), ""]
    parts += markdown_table(rows, STUDY_COLUMN_ORDER)
    if study.get("trends"):
        parts += ["", "## Trend over the regime (meta-regression slope)", ""]
        parts += markdown_table(list(study["trends"]), ("cohort", "comparison"))
    if study.get("agreement"):
        parts += [
            "",
            "## How alike the models rank patients, by regime (Spearman, internal test, "
            "mean over seeds)",
            "",
        ]
        parts += markdown_table(list(study["agreement"]), ("regime",))
    if study.get("instrument"):
        parts += [
            "",
            "## Room the data leave, by regime (generator truth, mean over seeds)",
            "",
            "Each cell's instrument check (docs/ARCHITECTURE.md, models/instrument.py) on its "
            "site-1 patients: cross-validated AUC of the truth label from size + EHR, what the "
            "true shared cause S or the frozen JEPA image tokens add to it, the same with "
            "growth, and how well the frozen JEPA and a random-init encoder's image tokens "
            "read S and size (R^2).",
            "",
        ]
        parts += markdown_table(list(study["instrument"]), ("regime", "cells"))
    return "\n".join(parts)


def study_markdown(study: Mapping[str, Any], command: str) -> str:
    """The whole docs/STUDY.md: how to regenerate it, the sweep's settings, then the tables."""
    cells = study.get("cells", [])
    lines = [
        study_section(study).split("\n", 1)[0],
        "",
        "Generated from measured metrics; do not edit by hand. Regenerate with:",
        "",
        "```",
        command,
        "```",
        "",
        f"- regimes: {', '.join(f'{r:g}' for r in study.get('regimes', []))}; generator seeds: "
        f"{', '.join(str(s) for s in study.get('seeds', []))} (params.yaml `study`)",
        f"- cells finished: {len(cells)} of {study.get('cells_planned', len(cells))}; settings "
        f"fingerprint `{study.get('settings_fingerprint', 'not recorded')}`",
        "- per-cell records (evaluation, predictions): metrics/study/<cell>/; the plot: "
        "metrics/study.png",
        "",
    ]
    body = study_section(study).split("\n", 1)[1].lstrip("\n")
    return "\n".join(lines) + "\n" + body + "\n"

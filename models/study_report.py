"""docs/STUDY.md: the synthetic study (metrics/study.json) rendered, never typed in.

The study is its own experiment, run by `lungjepa --profile study study`; that command writes
this document from the cells' records, so it is regenerated exactly when its numbers change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.report_format import markdown_table

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


# The study is its own experiment with its own command and document; RESULTS.md points at it
# and quotes its verdict rather than copying its tables (which a demo would have to refresh).
STUDY_POINTER = (
    "## Synthetic study\n\n"
    "The paper's synthetic experiment (when does JEPA pretraining help?) is reported in "
    "[docs/STUDY.md](STUDY.md), written by `lungjepa --profile study study` from its own runs."
)

POWER_COLUMN_ORDER: tuple[str, ...] = (
    "test",
    "estimate",
    "se",
    "detectable_with_80pct_power",
    "room_perfect_S_reader",
    "power_at_room",
    "seeds_per_regime_now",
    "seeds_per_regime_for_80pct_power",
)


def power_reading(power: Mapping[str, Any], instrument: list[Mapping[str, Any]]) -> str:
    """One paragraph: what the sweep could detect against the room, and what the frozen JEPA
    image tokens read of S beside a random-init encoder's (models/study.py power_analysis)."""
    gain, slope = power["rows"]
    if gain["power_at_room"] is None or slope["power_at_room"] is None:
        text = (
            "**Could the sweep pass?** The instrument leaves no room for a regime-dependent "
            "gain here (a perfect reader of S adds nothing to size + EHR), so no sweep size "
            "could show one."
        )
    else:
        underpowered = max(gain["power_at_room"], slope["power_at_room"]) < power["power"]
        text = (
            f"**Could the sweep pass?** A perfect reader of the shared cause S adds "
            f"{gain['room_perfect_S_reader']:+.3f} AUC to size + EHR at regime "
            f"{power['regime']:g}, and that gain changes by "
            f"{slope['room_perfect_S_reader']:+.3f} per unit regime (generator truth, mean "
            f"over seeds). With {gain['seeds_per_regime_now']} seeds per regime the "
            f"pre-registered test detects, with {power['power']:.0%} power, a gain of "
            f"{gain['detectable_with_80pct_power']:.3f} and a slope of "
            f"{slope['detectable_with_80pct_power']:.3f}. Its power at the room is "
            f"{gain['power_at_room']:.0%} for the gain and {slope['power_at_room']:.0%} for "
            f"the slope; {power['power']:.0%} would take about "
            f"{gain['seeds_per_regime_for_80pct_power']} and "
            f"{slope['seeds_per_regime_for_80pct_power']} seeds per regime. "
            + (
                "So even a model that read S perfectly would most likely fail this test: "
                "the room the data leave, not only the method, decides the verdict."
                if underpowered
                else "So the sweep could see a perfect reader of S: a failed test is the method's."
            )
        )
    first = next((r for r in instrument if r.get("S R^2, JEPA") is not None), None)
    if first is not None and first.get("added by JEPA image tokens") is not None:
        text += (
            f" What the method learned: at regime {first['regime']:g} the frozen JEPA image "
            f"tokens read S with R^2 {first['S R^2, JEPA']:.3f} against "
            f"{first['S R^2, random']:.3f} for a random-init encoder, and add "
            f"{first['added by JEPA image tokens']:+.3f} AUC to size + EHR."
        )
    return text


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
    if study.get("power"):
        parts += [
            "",
            "## Power: could the sweep see the gain the data allow?",
            "",
            "Each half of the pre-registered test (its pooled estimate and SE over the cells) "
            "beside the room the instrument measures for it: what a perfect reader of S adds "
            "to size + EHR at the primary regime, and the least-squares slope of that over the "
            "regime. Detectable: the smallest true effect found with 80% power at alpha; "
            "seeds for 80% power at the room: SE shrinking as 1 / sqrt(seeds) "
            "(models/study.py power_analysis).",
            "",
            power_reading(study["power"], list(study.get("instrument", []))),
            "",
        ]
        parts += markdown_table(list(study["power"]["rows"]), POWER_COLUMN_ORDER)
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


def study_summary(study: Mapping[str, Any] | None) -> str:
    """RESULTS.md's study section: the pointer to docs/STUDY.md, then (given metrics/study.json)
    its pre-registered verdict and whether the sweep could have passed it."""
    parts = [STUDY_POINTER]
    if study and study.get("primary"):
        if study.get("cells_missing"):
            done = int(study["cells_planned"]) - len(study["cells_missing"])
            parts.append(f"Provisional: {done} of {study['cells_planned']} planned cells have run.")
        parts.append(_study_primary(study["primary"]))
        if study.get("power"):
            parts.append(power_reading(study["power"], list(study.get("instrument", []))))
    return "\n\n".join(parts)

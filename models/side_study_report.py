"""RESULTS.md's side-study sections: the demo replicated on other generator seeds
(metrics/replicates/*.json) and the two out-of-fold ablations (metrics/ablation.json,
metrics/pretrain_ablation.json, from `lungjepa ablation [--pretrain]`).

Each is a measured table with its note and provenance; rows recorded under other settings than
this run's (another settings fingerprint, or none) are shown under a banner saying so.
models/reporting.py assembles them into the document.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from models.report_format import fmt, fmt_p

REPLICATE_MODELS: tuple[str, ...] = ("jepa", "multimodal", "imaging_only", "jepa_probe")


def replicates_section(replicates: Sequence[Mapping[str, Any]], current: str | None = None) -> str:
    """The demo on other generator seeds: does the ordering hold on patients never looked at?"""
    header = ["generator seed", *(f"`{m}` internal / external" for m in REPLICATE_MODELS),
              "primary: difference, p"]  # fmt: skip

    def cells(row: Mapping[str, Any]) -> list[str]:
        evaluation = row["evaluation"]
        aucs = [
            f"{fmt(evaluation['internal'][m]['auc'])} / {fmt(evaluation['external'][m]['auc'])}"
            if m in evaluation["internal"]
            else "n/a"
            for m in REPLICATE_MODELS
        ]
        primary = evaluation.get("comparisons", {}).get("primary")
        tested = "n/a" if not primary else f"{primary['diff']:+.3f}, p {fmt_p(primary['p'])}"
        return [str(row["seed"]), *aucs, tested]

    commands = "; ".join(f"{r['command']} ({r['minutes']:.1f} min)" for r in replicates)
    note = (
        "The same demo (recipe, folds rule, seeds, pre-registered comparisons) on data drawn "
        "with other generator seeds, none of which was used to choose any setting. Internal: "
        "out of fold; external: the fold ensemble."
    )
    recorded = {r.get("settings_fingerprint") for r in replicates}
    table = {
        "note": note,
        "rows": list(replicates),
        "provenance": commands,
        "settings_fingerprint": recorded.pop() if len(recorded) == 1 else None,
    }
    return _measured_table("Replicates on other generator seeds", table, header, cells, current)


def _measured_table(
    title: str,
    ablation: Mapping[str, Any],
    header: list[str],
    cells: Callable[[dict], list[str]],
    current: str | None = None,
) -> str:
    """An ablation file as a section: its note, one table row per record, its provenance.

    current: this run's settings fingerprint; when the file's differs (or it has none), a
    banner says the rows measured other settings (an earlier generator or method).
    """
    lines = [f"## {title}", ""]
    recorded = ablation.get("settings_fingerprint")
    if current is not None and recorded != current:
        lines += [
            f"**Measured under other settings** (fingerprint `{recorded or 'not recorded'}`; "
            f"this run: `{current}`): these rows describe an earlier generator or method, not "
            "this run's data. Rerun the command below to refresh them.",
            "",
        ]
    lines += [
        str(ablation.get("note", "")),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in ablation.get("rows", [])]
    if ablation.get("provenance"):
        lines += ["", f"Measured by `{ablation['provenance']}`."]
    return "\n".join(lines)


def _auc_ci(row: Mapping[str, Any]) -> str:
    return f"{fmt(row['auc'])} [{fmt(row['ci'][0])}, {fmt(row['ci'][1])}]"


def ablation_section(ablation: Mapping[str, Any], current: str | None = None) -> str:
    """Readout / tokenizer ablation (metrics/ablation.json from `lungjepa ablation`)."""
    header = ["readout", "patch stem", "model", "internal AUC (OOF) [95% CI]", "n",
              "finetuning s / fold"]  # fmt: skip
    return _measured_table(
        "Readout and tokenizer ablation",
        ablation,
        header,
        lambda row: [
            f"`{row['readout']}`",
            f"`{row['patch_stem']}`",
            f"`{row['model']}`",
            _auc_ci(row),
            str(row["n"]),
            fmt(row["seconds_per_fold"], 1),
        ],  # fmt: skip
        current,
    )


def _shared_cause(row: Mapping[str, Any]) -> str:
    """The frozen encoder's S R^2 beside its random-init twin's (n/a: not generator data, or a
    record from before the instrument was read per variant)."""
    if row.get("shared_cause_r2") is None:
        return "n/a"
    return f"{fmt(row['shared_cause_r2'])} ({fmt(row['shared_cause_r2_random'])})"


def pretrain_ablation_section(ablation: Mapping[str, Any], current: str | None = None) -> str:
    """JEPA ingredients (metrics/pretrain_ablation.json from `lungjepa ablation --pretrain`)."""
    header = ["variant", "changes", "model", "internal AUC (OOF) [95% CI]", "external AUC",
              "diameter R^2, centre token", "diameter R^2, mean pool", "archive",
              "EMA target-to-init", "pretraining s", "S R^2, frozen (random init)",
              "AUC added to size + EHR"]  # fmt: skip
    return _measured_table(
        "What each JEPA ingredient is worth",
        ablation,
        header,
        lambda row: [
            f"`{row['variant']}`",
            ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "none",
            f"`{row['model']}`",
            _auc_ci(row),
            fmt(row["external_auc"]),
            fmt(row["diameter_r2_centre"]),
            fmt(row["diameter_r2_mean"]),
            str(row["n_archive"]),
            fmt(row.get("ema_target_to_init")),
            fmt(row["pretrain_seconds"], 0),
            _shared_cause(row),
            fmt(row.get("auc_added_to_size_ehr")),
        ],  # fmt: skip
        current,
    )

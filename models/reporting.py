"""docs/RESULTS.md and its figures, rendered from measured metrics only.

Why: results must be regenerated from metrics/evaluation.json, never typed in. The only
literal numbers here are the paper's published AUCs (PAPER_AUC), shown in a column labelled
as the paper's so a reader can compare, never mixed with ours.

The side-study tables (replicates, ablations) are rendered in models/side_study_report.py;
the number formatters both share are in models/report_format.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models.evaluation import MODELS, POWER
from models.instrument import instrument_markdown
from models.report_format import fmt, fmt_p
from models.side_study_report import (
    ablation_section,
    pretrain_ablation_section,
    replicates_section,
)
from models.study_report import study_summary

PAPER_SOURCE = "Li et al., arXiv 2509.15470 (2025), abstract"
# Published AUCs (malignant vs benign) from the paper's abstract; None where not reported.
PAPER_AUC: dict[str, dict[str, float]] = {
    "internal": {"jepa": 0.91, "multimodal": 0.88, "imaging_only": 0.73},
    "external": {"jepa": 0.72, "imaging_only": 0.75},
}

MODEL_LABELS: dict[str, str] = {
    "jepa": "JEPA-pretrained, finetuned",
    "multimodal": "Multimodal, unregularized (from scratch)",
    "imaging_only": "Imaging-only",
    "clinical_brock": "Brock/PanCan (published coefficients, reader-measured size)",
    "clinical_mayo": "Mayo Clinic (published coefficients, reader-measured size)",
    "oracle_brock": "ORACLE: Brock on the generator's exact size",
    "clinical_refit": "Clinical logistic refit (EHR)",
    "jepa_probe": "JEPA linear probe (frozen encoder)",
}
CALIBRATION_MODELS: tuple[str, ...] = ("jepa", "multimodal", "imaging_only", "clinical_brock")
"""Models drawn in the reliability plots (more lines would hide each other)."""
NON_COHORT_KEYS: tuple[str, ...] = ("delong", "comparisons", "label_efficiency", "protocol")
"""Top-level keys of evaluation.json that are not cohorts."""
COHORT_LABELS: dict[str, str] = {"internal": "Internal cohort", "external": "External cohort"}
REQUIRED_PROVENANCE: tuple[str, ...] = (
    "command", "data_version", "models_version", "encoder_version", "date",
)  # fmt: skip


def _ordered_models(results: Mapping[str, Any]) -> list[str]:
    known = [m for m in MODELS if m in results]
    return known + sorted(m for m in results if m not in MODELS)


def _cohort_table(cohort: str, results: Mapping[str, Any], paper: Mapping[str, float]) -> str:
    lines = [
        "| model | AUC | 95% CI | n | malignant | Brier | paper AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in _ordered_models(results):
        m = results[name]
        lo, hi = m["ci"]
        label = MODEL_LABELS.get(name, name)
        lines.append(
            f"| {label} (`{name}`) | {fmt(m['auc'])} | [{fmt(lo)}, {fmt(hi)}] | {m['n']} "
            f"| {m.get('n_pos', 'n/a')} | {fmt(m.get('brier'))} "
            f"| {fmt(paper[name], 2) if name in paper else 'not reported'} |"
        )
    return "\n".join(lines)


def _delong_table(comparisons: Mapping[str, float]) -> str:
    lines = ["| comparison | p (two-sided, paired DeLong) |", "|---|---|"]
    lines += [f"| `{k}` | {fmt_p(float(p))} |" for k, p in comparisons.items()]
    return "\n".join(lines)


def results_markdown(
    evaluation: Mapping[str, Any],
    paper_table: Mapping[str, Mapping[str, float]],
    provenance: Mapping[str, Any],
    drift: Mapping[str, Any] | None = None,
    agreement: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    probe: Mapping[str, float] | None = None,
    ablation: Mapping[str, Any] | None = None,
    pretrain_ablation: Mapping[str, Any] | None = None,
    replicates: Sequence[Mapping[str, Any]] = (),
    instrument: Mapping[str, Any] | None = None,
    settings_fingerprint: str | None = None,
    study: Mapping[str, Any] | None = None,
) -> str:
    """Render docs/RESULTS.md from metrics/evaluation.json (combine_cohort_results shape).

    evaluation may also hold "protocol", "comparisons" (preregistered_comparisons) and
    "label_efficiency" (label_efficiency_summary); ablation is metrics/ablation.json,
    pretrain_ablation metrics/pretrain_ablation.json, replicates the metrics/replicates/*.json
    records of `lungjepa demo --seed N --out DIR` (the same demo on other generator seeds).

    agreement: per cohort, rank_agreement of the models' predictions (a Spearman matrix).
    instrument: metrics/cause_visibility.json (models/instrument.py; generator data only).
    settings_fingerprint: this run's (orchestration/study.py settings_fingerprint: the measured
    params and the generator's settings); a side study recorded under another one, or none,
    is shown under a banner saying so, never as if it measured this run's data.
    probe: the encoder card's frozen-encoder probes (pretrained vs random initialisation).
    study: metrics/study.json, the synthetic study's own summary; its verdict and power are
    quoted under a pointer to docs/STUDY.md (models/study_report.py study_summary).

    drift: the cohort_drift summary (drift.json next to the model card); when given, a
    section sets its signals beside each model's measured internal -> external AUC change.

    provenance must give command (that regenerates the file), data_version (the cohort
    manifests' content versions), models_version, encoder_version and date; further keys
    are listed as they are. The paper's numbers sit in their own labelled column and are
    never used in any computation.
    """
    missing = [k for k in REQUIRED_PROVENANCE if k not in provenance]
    if missing:
        raise KeyError(f"provenance lacks {missing}")
    cohorts = [c for c in evaluation if c not in NON_COHORT_KEYS]
    delong = evaluation.get("delong", {})
    out = [
        "# Results",
        "",
        "Generated from measured metrics; do not edit by hand. Regenerate with:",
        "",
        "```",
        str(provenance["command"]),
        "```",
        "",
        "## Provenance",
        "",
        f"- data version (cohort manifests): `{provenance['data_version']}`",
        f"- models version: `{provenance['models_version']}`",
        f"- encoder version: `{provenance['encoder_version']}`",
        f"- date: {provenance['date']}",
    ]
    out += [
        f"- {key.replace('_', ' ')}: `{value}`"
        for key, value in provenance.items()
        if key not in REQUIRED_PROVENANCE
    ]
    protocol = evaluation.get("protocol")
    if protocol:
        out += [
            "",
            f"Internal: {protocol['repeats']} x {protocol['folds']}-fold stratified "
            "cross-validation; every labeled patient's prediction comes from models that never "
            "saw them (out of fold). External: the ensemble of every fold model.",
        ]
    out += [
        "",
        "AUC: malignant vs benign, one prediction per patient. 95% CI: percentile bootstrap "
        "over patients. Brier: mean squared error of the probability (n/a for scores that "
        f"are not probabilities). Paper AUC: published values ({PAPER_SOURCE}), for "
        "comparison only; their cohorts are not ours. Brock and Mayo read a diameter with a "
        "reader's measurement error (docs/SYNTHETIC.md); the ORACLE row reads the exact size.",
    ]
    if evaluation.get("comparisons"):
        out += ["", _comparisons_section(evaluation["comparisons"])]
    for cohort in cohorts:
        out += [
            "",
            f"## {COHORT_LABELS.get(cohort, cohort)}",
            "",
            _cohort_table(cohort, evaluation[cohort], paper_table.get(cohort, {})),
        ]
        if delong.get(cohort):
            out += ["", f"DeLong tests, {cohort}:", "", _delong_table(delong[cohort])]
    if evaluation.get("label_efficiency", {}).get("models"):
        out += ["", _label_efficiency_section(evaluation["label_efficiency"])]
    if replicates:
        out += ["", replicates_section(replicates, settings_fingerprint)]
    if ablation:
        out += ["", ablation_section(ablation, settings_fingerprint)]
    if pretrain_ablation:
        out += ["", pretrain_ablation_section(pretrain_ablation, settings_fingerprint)]
    if probe:
        out += ["", _probe_section(probe)]
    if instrument:
        out += ["", instrument_markdown(instrument, str(instrument["encoder_version"]))]
    if agreement:
        out += ["", _agreement_section(agreement)]
    if drift is not None and {"internal", "external"} <= set(cohorts):
        out += ["", _drift_section(drift, evaluation)]
    out += ["", study_summary(study)]
    return "\n".join(out) + "\n"


def _comparison_row(role: str, c: Mapping[str, Any]) -> str:
    name = f"{c['cohort']}: `{c['model']}` vs `{c['versus']}`"
    if c.get("missing"):
        return f"| {role} | {name} | not produced by this run | | | | |"
    lo, hi = c["ci"]
    p_holm = fmt_p(c["p_holm"]) if "p_holm" in c else "(tested alone)"
    detectable = fmt(c["detectable"]) if "detectable" in c else "n/a"
    return (
        f"| {role} | {name} | {fmt(c['auc_a'])} vs {fmt(c['auc_b'])} "
        f"| {c['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {fmt_p(c['p'])} | {p_holm} | {detectable} |"
    )


def _comparisons_section(comparisons: Mapping[str, Any]) -> str:
    """The pre-registered comparisons (params.yaml `evaluate.comparisons`)."""
    lines = [
        "## Pre-registered comparisons",
        "",
        "Fixed in params.yaml before the runs. Paired DeLong on the same patients (all labeled "
        "internal patients, out of fold; or the external cohort); the CI is the paired "
        f"percentile bootstrap of the difference. alpha = {comparisons['alpha']}; the "
        "secondary p-values are Holm-adjusted together. Detectable: the smallest true "
        f"difference the DeLong test finds with {POWER:.0%} power at alpha (its SE x "
        "(z_(1-alpha/2) + z_power)); a difference below it going unfound says little.",
        "",
        "| role | comparison | AUCs | difference [95% CI] | p | p (Holm) | detectable |",
        "|---|---|---|---|---|---|---|",
        _comparison_row("primary", comparisons["primary"]),
    ]
    lines += [_comparison_row("secondary", c) for c in comparisons.get("secondary", [])]
    return "\n".join(lines)


def _label_efficiency_section(curve: Mapping[str, Any]) -> str:
    """Out-of-fold internal AUC at each fraction of the labeled training folds."""
    fractions = curve["fractions"]
    lines = [
        "## Label efficiency",
        "",
        "Internal AUC (out of fold, all labeled patients tested) when each model is trained on "
        "a stratified fraction of every training fold; validation parts and test folds "
        "unchanged. Figure: `metrics/label_efficiency.png`.",
        "",
        "| model | " + " | ".join(f"{f:.0%} of labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for model, points in curve["models"].items():
        by_fraction = {p["fraction"]: p for p in points}
        cells = [
            f"{fmt(by_fraction[f]['auc'])} [{fmt(by_fraction[f]['ci'][0])}, "
            f"{fmt(by_fraction[f]['ci'][1])}]"
            if f in by_fraction
            else "n/a"
            for f in fractions
        ]
        lines.append(f"| {MODEL_LABELS.get(model, model)} | " + " | ".join(cells) + " |")
    if curve.get("delong"):
        lines += ["", "Paired DeLong p at each fraction:", ""]
        for fraction, tests in curve["delong"].items():
            text = ", ".join(f"`{k}` {fmt_p(float(p))}" for k, p in tests.items())
            lines.append(f"- {float(fraction):.0%}: {text}")
    return "\n".join(lines)


def _probe_section(probe: Mapping[str, float]) -> str:
    """Frozen-encoder probes from the encoder card: what pretraining made linearly readable."""
    rows = [
        ("malignancy, logistic probe: test AUC", "pretrained_auc", "random_auc"),
        ("nodule size, ridge probe on image tokens: test R^2 of log diameter",
         "pretrained_diameter_r2", "random_diameter_r2"),
    ]  # fmt: skip
    lines = [
        "## What pretraining learned (frozen-encoder probes)",
        "",
        f"Linear probes on the JEPA encoder's frozen features of the latest scan, fitted on "
        f"{probe.get('n_train', 'n/a')} internal patients and tested on "
        f"{probe.get('n_test', 'n/a')} others, beside the same probe on a randomly "
        "initialised encoder of the same shape.",
        "",
        "| probe | pretrained | random init |",
        "|---|---|---|",
    ]
    lines += [
        f"| {label} | {fmt(probe.get(ours))} | {fmt(probe.get(random))} |"
        for label, ours, random in rows
        if ours in probe
    ]
    return "\n".join(lines)


def _agreement_section(agreement: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Spearman matrices: which models rank the same patients alike (same signal learned)."""
    lines = [
        "## How alike the models rank patients",
        "",
        "Spearman correlation between two models' predictions on the same test patients. "
        "Near 1: the two rank patients alike, whatever their AUCs (e.g. a finetuned encoder "
        "that ended where the from-scratch model did, or a multimodal model leaning on the EHR "
        "as the EHR-only refit does).",
    ]
    for cohort, matrix in agreement.items():
        names = list(matrix)
        lines += ["", f"{COHORT_LABELS.get(cohort, cohort)}:", ""]
        lines += ["| | " + " | ".join(f"`{n}`" for n in names) + " |"]
        lines += ["|---|" + "---|" * len(names)]
        lines += [
            f"| `{a}` | " + " | ".join(fmt(matrix[a][b]) for b in names) + " |" for a in names
        ]
    return "\n".join(lines)


def _drift_section(drift: Mapping[str, Any], evaluation: Mapping[str, Any]) -> str:
    """Does the drift check see the external drop coming? Signals beside the measured change."""
    counts = drift.get("counts", {})
    lines = [
        "## Drift signals and the external AUC change",
        "",
        f"Reference `{drift.get('reference')}`, candidate `{drift.get('candidate')}`: overall "
        f"severity **{drift.get('severity')}**. Per-feature KS (Bonferroni within a group) and "
        "PSI; the cross-modal signal is the JEPA predictor's error on the candidate divided by "
        "its error on the reference (1.0 = no change).",
        "",
        "| signal group | ERROR | WARN | OK |",
        "|---|---|---|---|",
    ]
    for group, by_level in counts.items():
        lines.append(
            f"| {group} | {by_level.get('ERROR', 0)} | {by_level.get('WARN', 0)} "
            f"| {by_level.get('OK', 0)} |"
        )
    lines += [
        "",
        f"- ERROR features: {', '.join(f'`{e}`' for e in drift.get('errors', [])) or 'none'}",
        f"- cross-modal error ratio, EHR predicted from imaging: "
        f"{fmt(drift.get('ehr_from_image_error_ratio'))}",
        f"- cross-modal error ratio, imaging predicted from EHR: "
        f"{fmt(drift.get('image_from_ehr_error_ratio'))}",
        "",
        "| model | internal AUC | external AUC | change |",
        "|---|---|---|---|",
    ]
    for model in _ordered_models(evaluation["internal"]):
        if model not in evaluation["external"]:
            continue
        inside = evaluation["internal"][model]["auc"]
        outside = evaluation["external"][model]["auc"]
        lines.append(
            f"| {MODEL_LABELS.get(model, model)} | {fmt(inside)} | {fmt(outside)} "
            f"| {outside - inside:+.3f} |"
        )
    return "\n".join(lines)

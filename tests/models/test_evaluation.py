"""Evaluation statistics against sklearn and a slow, by-definition DeLong reference."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from models.evaluation import (
    POWER,
    bootstrap_auc_ci,
    bootstrap_aucs,
    brier_score,
    combine_cohort_results,
    compare_paired,
    delong_test,
    detectable_difference,
    evaluate_models,
    holm_adjust,
    label_efficiency_summary,
    preregistered_comparisons,
    rank_agreement,
    reliability_curve,
    roc_auc,
    roc_curve_points,
)
from models.figures import plot_label_efficiency, plot_reliability, plot_roc
from models.reporting import PAPER_AUC, results_markdown
from models.study_report import STUDY_POINTER


def _labels_and_scores(n: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    y[:2] = [0, 1]
    p = 1.0 / (1.0 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))
    return y, p


def _slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong (1988) from the definition of the structural components; returns (diff, var, p)."""
    from scipy.stats import norm

    def psi(x: float, v: float) -> float:
        return 1.0 if x > v else 0.5 if x == v else 0.0

    comps = []
    for s in (a, b):
        xs, ys = s[y == 1], s[y == 0]
        v10 = np.array([np.mean([psi(x, v) for v in ys]) for x in xs])
        v01 = np.array([np.mean([psi(x, v) for x in xs]) for v in ys])
        comps.append((v10.mean(), v10, v01))
    m, n = (y == 1).sum(), (y == 0).sum()
    s10 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    s01 = np.cov(np.vstack([comps[0][2], comps[1][2]]))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = comps[0][0] - comps[1][0]
    return diff, var, 2 * norm.sf(abs(diff / np.sqrt(var)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    y, p = _labels_and_scores(300, seed)
    p_tied = np.round(p, 1)  # heavy ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert roc_auc(y, p_tied) == pytest.approx(roc_auc_score(y, p_tied), abs=1e-12)


def test_auc_rejects_one_class_and_unlabeled() -> None:
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc(np.array([0, 1, -1]), np.arange(3.0))


@pytest.mark.parametrize("seed", [0, 3])
def test_delong_matches_definition(seed: int) -> None:
    y, a = _labels_and_scores(80, seed)
    rng = np.random.default_rng(seed + 100)
    b = np.round(a + rng.normal(scale=0.3, size=a.shape), 1)  # correlated, with ties
    diff, var, p = _slow_delong(y, a, b)
    result = delong_test(y, a, b)
    assert result.diff == pytest.approx(diff, abs=1e-12)
    assert result.var == pytest.approx(var, rel=1e-9)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)


def test_delong_identical_and_clearly_different() -> None:
    y, p = _labels_and_scores(400, 5, signal=2.0)
    same = delong_test(y, p, p)
    assert same.p_value == 1.0
    assert same.diff == 0.0
    noise = np.random.default_rng(9).random(p.shape[0])
    different = delong_test(y, p, noise)
    assert different.diff > 0.3
    assert different.p_value < 1e-10


def test_bootstrap_ci_contains_auc_narrows_and_is_reproducible() -> None:
    y_small, p_small = _labels_and_scores(60, 0)
    y_large, p_large = _labels_and_scores(1200, 0)
    lo_s, hi_s = bootstrap_auc_ci(y_small, p_small, n_replicates=400, seed=1)
    lo_l, hi_l = bootstrap_auc_ci(y_large, p_large, n_replicates=400, seed=1)
    assert lo_s <= roc_auc(y_small, p_small) <= hi_s
    assert lo_l <= roc_auc(y_large, p_large) <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 2
    assert bootstrap_auc_ci(y_small, p_small, 400, seed=1) == (lo_s, hi_s)
    assert bootstrap_auc_ci(y_small, p_small, 400, seed=2) != (lo_s, hi_s)


def test_bootstrap_counts_one_class_replicates_and_groups_patients() -> None:
    y = np.array([1, 0, 0, 0])
    p = np.array([0.9, 0.1, 0.2, 0.3])
    aucs, skipped = bootstrap_aucs(y, p, n_replicates=200, seed=0)
    assert skipped > 0 and aucs.size + skipped == 200
    # Rows of one patient travel together: duplicating every row per patient keeps AUC 1.
    y2, p2 = np.repeat([1, 0, 1, 0], 2), np.repeat([0.9, 0.1, 0.8, 0.2], 2)
    groups = np.repeat(["a", "b", "c", "d"], 2)
    aucs2, _ = bootstrap_aucs(y2, p2, n_replicates=50, seed=0, groups=groups)
    assert np.all(aucs2 == 1.0)


def test_brier_reliability_and_roc_points() -> None:
    y, p = _labels_and_scores(500, 4)
    assert brier_score(y, p) == pytest.approx(np.mean((p - y) ** 2))
    curve = reliability_curve(y, p, n_bins=10)
    assert curve["count"].sum() == 500
    assert (curve["mean_predicted"] >= curve["bin_lower"]).all()
    assert (curve["mean_predicted"] <= curve["bin_upper"]).all()
    edge = reliability_curve(np.array([0, 1]), np.array([0.0, 1.0]), n_bins=4)
    assert list(edge["count"]) == [1, 1] and edge["bin_upper"].iloc[-1] == 1.0

    p_tied = np.round(p, 1)
    ours = roc_curve_points(y, p_tied)
    fpr, tpr, _ = roc_curve(y, p_tied, drop_intermediate=False)
    np.testing.assert_allclose(ours["fpr"], fpr)
    np.testing.assert_allclose(ours["tpr"], tpr)
    assert np.trapezoid(ours["tpr"], ours["fpr"]) == pytest.approx(roc_auc(y, p_tied))
    assert isinstance(ours, pd.DataFrame)


def test_evaluate_models_and_combined_shape_is_json_ready() -> None:
    per_cohort = {}
    for i, cohort in enumerate(("internal", "external")):
        y, p = _labels_and_scores(120, 10 + i, signal=1.5)
        rng = np.random.default_rng(i)
        preds = {
            "jepa": p,
            "imaging_only": rng.random(120),
            "clinical_brock": np.clip(p + 0.1, 0, 1),
        }
        per_cohort[cohort] = evaluate_models(y, preds, reference="jepa", n_replicates=200, seed=0)
    combined = combine_cohort_results(per_cohort)
    assert set(combined) == {"internal", "external", "delong"}
    assert set(combined["internal"]) == {"jepa", "imaging_only", "clinical_brock"}
    assert set(combined["delong"]["external"]) == {"jepa_vs_imaging_only", "jepa_vs_clinical_brock"}
    entry = combined["internal"]["jepa"]
    assert entry["ci"][0] <= entry["auc"] <= entry["ci"][1]
    assert entry["n"] == 120 and 0 < entry["n_pos"] < 120
    assert json.loads(json.dumps(combined)) == combined
    with pytest.raises(KeyError, match="reference"):
        evaluate_models(np.array([0, 1]), {"a": np.array([0.1, 0.9])}, reference="b")


def test_rank_agreement_is_spearman_between_every_pair() -> None:
    rng = np.random.default_rng(3)
    a = rng.random(50)
    scores = {"a": a, "monotone_of_a": np.exp(3 * a), "reversed": -a, "noise": rng.random(50)}
    matrix = rank_agreement(scores)
    assert matrix["a"]["monotone_of_a"] == pytest.approx(1.0)
    assert matrix["a"]["reversed"] == pytest.approx(-1.0)
    assert matrix["noise"]["a"] == pytest.approx(stats.spearmanr(scores["noise"], a).statistic)
    assert matrix["noise"]["a"] == matrix["a"]["noise"]


def test_results_markdown_and_plots(tmp_path: Path) -> None:
    per_cohort = {}
    curves = {}
    for i, cohort in enumerate(("internal", "external")):
        y, p = _labels_and_scores(100, 20 + i, signal=1.5)
        rng = np.random.default_rng(i)
        preds = {"jepa": p, "imaging_only": rng.random(100), "clinical_brock": rng.random(100)}
        per_cohort[cohort] = evaluate_models(y, preds, reference="jepa", n_replicates=100)
        curves[cohort] = {name: roc_curve_points(y, q) for name, q in preds.items()}
    evaluation = combine_cohort_results(per_cohort)
    provenance = {
        "command": "lungjepa report",
        "data_version": "internal d123",
        "models_version": "m789",
        "encoder_version": "e456",
        "date": "2026-11-28",
        "bootstrap_replicates": 100,
    }
    text = results_markdown(evaluation, PAPER_AUC, provenance)
    assert text.rstrip().endswith(STUDY_POINTER)  # the study's numbers live in docs/STUDY.md
    ours = evaluation["internal"]["jepa"]
    assert f"| {ours['auc']:.3f} | [{ours['ci'][0]:.3f}, {ours['ci'][1]:.3f}] |" in text
    assert "| 0.91 |" in text and "not reported" in text  # paper column, labelled
    assert "lungjepa report" in text and "`internal d123`" in text and "e456" in text
    assert "- models version: `m789`" in text
    assert "`jepa_vs_imaging_only`" in text
    assert "How alike" not in text
    agreement = {"internal": rank_agreement({"a": np.arange(5.0), "b": -np.arange(5.0)})}
    with_agreement = results_markdown(evaluation, PAPER_AUC, provenance, None, agreement)
    assert "| `a` | 1.000 | -1.000 |" in with_agreement
    probe = {"pretrained_auc": 0.71, "random_auc": 0.62, "pretrained_diameter_r2": 0.25,
             "random_diameter_r2": 0.4, "n_train": 70, "n_test": 30}  # fmt: skip
    with_probe = results_markdown(evaluation, PAPER_AUC, provenance, probe=probe)
    assert "fitted on 70 internal patients" in with_probe
    assert "test R^2 of log diameter | 0.250 | 0.400 |" in with_probe
    with pytest.raises(KeyError, match="provenance"):
        results_markdown(evaluation, PAPER_AUC, {"command": "x"})
    assert "Drift signals" not in text
    drift = {
        "reference": "internal",
        "candidate": "external",
        "severity": "ERROR",
        "counts": {"ehr": {"ERROR": 1, "WARN": 2, "OK": 5}},
        "errors": ["ehr/emphysema"],
        "ehr_from_image_error_ratio": 1.25,
        "image_from_ehr_error_ratio": 0.9,
    }
    with_drift = results_markdown(evaluation, PAPER_AUC, provenance, drift)
    change = evaluation["external"]["jepa"]["auc"] - ours["auc"]
    assert "severity **ERROR**" in with_drift and "`ehr/emphysema`" in with_drift
    assert "| ehr | 1 | 2 | 5 |" in with_drift and "1.250" in with_drift
    assert f"| {change:+.3f} |" in with_drift

    roc_png, rel_png = tmp_path / "roc.png", tmp_path / "rel.png"
    plot_roc(curves["internal"], roc_png, aucs={"jepa": ours["auc"]})
    y, p = _labels_and_scores(100, 20, signal=1.5)
    plot_reliability({"jepa": reliability_curve(y, p)}, rel_png)
    for png in (roc_png, rel_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_holm_adjustment_by_hand() -> None:
    # sorted 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04)
    assert holm_adjust([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjust([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_comparison_interval_and_delong() -> None:
    y, good = _labels_and_scores(300, 7, signal=2.0)
    rng = np.random.default_rng(1)
    weak = good + rng.normal(0, 2.0, size=300)
    c = compare_paired(y, good, weak, n_replicates=300, seed=0)
    assert c["diff"] == pytest.approx(roc_auc(y, good) - roc_auc(y, weak))
    assert 0 < c["ci"][0] < c["diff"] < c["ci"][1] and c["p"] < 0.01
    same = compare_paired(y, good, good, n_replicates=50, seed=0)
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0] and same["p"] == 1.0


def test_the_detectable_difference_is_the_one_found_with_the_stated_power() -> None:
    y, good = _labels_and_scores(300, 7, signal=2.0)
    weak = good + np.random.default_rng(1).normal(0, 2.0, size=300)
    se = np.sqrt(delong_test(y, good, weak).var)
    c = compare_paired(y, good, weak, n_replicates=50, seed=0)
    assert c["detectable"] == pytest.approx(detectable_difference(se))
    # a true difference of exactly `detectable` gives z ~ N(detectable / se, 1): the test
    # (|z| > z_0.975) then finds it with POWER
    z = detectable_difference(se) / se
    assert stats.norm.sf(stats.norm.ppf(0.975) - z) == pytest.approx(POWER)
    # half the patients: the SE grows about sqrt(2)-fold, and so does what can be detected
    half = compare_paired(y[::2], good[::2], weak[::2], n_replicates=50, seed=0)
    assert 1.2 < half["detectable"] / c["detectable"] < 1.7


def test_preregistered_comparisons_follow_the_spec() -> None:
    y, good = _labels_and_scores(200, 3, signal=2.0)
    rng = np.random.default_rng(2)
    preds = {
        "jepa": good,
        "multimodal": good + rng.normal(0, 1, 200),
        "imaging_only": rng.random(200),
    }
    spec = {
        "primary": {"cohort": "internal", "model": "jepa", "versus": "multimodal"},
        "secondary": [
            {"cohort": "internal", "model": "jepa", "versus": "imaging_only"},
            {"cohort": "internal", "model": "multimodal", "versus": "imaging_only"},
            {"cohort": "internal", "model": "jepa", "versus": "clinical_brock"},
        ],
        "alpha": 0.05,
    }
    out = preregistered_comparisons({"internal": y}, {"internal": preds}, spec, 100, 0)
    assert out["primary"]["versus"] == "multimodal" and "p_holm" not in out["primary"]
    tested = [c for c in out["secondary"] if "p" in c]
    assert len(tested) == 2 and out["secondary"][2] == {**spec["secondary"][2], "missing": True}
    assert [c["p_holm"] for c in tested] == pytest.approx(holm_adjust([c["p"] for c in tested]))
    assert tested[0]["significant"] and json.dumps(out)


def test_label_efficiency_summary_per_fraction() -> None:
    y, p = _labels_and_scores(120, 5, signal=1.5)
    rng = np.random.default_rng(0)
    rows = []
    for fraction, noise in ((0.25, 3.0), (1.0, 0.1)):
        for model in ("jepa", "multimodal"):
            rows.append(pd.DataFrame({
                "fraction": fraction, "model": model, "patient_id": [f"p{i}" for i in range(120)],
                "label": y, "probability": p + rng.normal(0, noise, 120),
            }))  # fmt: skip
    frame = pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=0)  # any row order
    out = label_efficiency_summary(frame, n_replicates=100, seed=0)
    assert out["fractions"] == [0.25, 1.0]
    jepa = {pt["fraction"]: pt for pt in out["models"]["jepa"]}
    assert jepa[0.25]["auc"] < jepa[1.0]["auc"] and jepa[1.0]["n"] == 120
    order = frame[(frame.fraction == 1.0) & (frame.model == "jepa")].sort_values("patient_id")
    assert jepa[1.0]["auc"] == pytest.approx(
        roc_auc(order["label"].to_numpy(), order["probability"].to_numpy())
    )
    assert set(out["delong"]["0.25"]) == {"jepa_vs_multimodal"}
    assert label_efficiency_summary(pd.DataFrame(), 10, 0)["models"] == {}


def test_results_markdown_reports_protocol_comparisons_curve_and_ablation(tmp_path: Path) -> None:
    y, p = _labels_and_scores(150, 9, signal=1.5)
    rng = np.random.default_rng(3)
    preds = {"jepa": p, "multimodal": p + rng.normal(0, 1, 150), "imaging_only": rng.random(150)}
    evaluation = combine_cohort_results(
        {"internal": evaluate_models(y, preds, reference="jepa", n_replicates=50)}
    )
    spec = {"primary": {"cohort": "internal", "model": "jepa", "versus": "multimodal"},
            "secondary": [{"cohort": "internal", "model": "jepa", "versus": "imaging_only"}]}  # fmt: skip
    evaluation["comparisons"] = preregistered_comparisons(
        {"internal": y}, {"internal": preds}, spec, 50, 0
    )
    frame = pd.DataFrame({"fraction": 0.5, "model": "jepa", "patient_id": np.arange(150).astype(str),
                          "label": y, "probability": p})  # fmt: skip
    evaluation["label_efficiency"] = label_efficiency_summary(frame, 50, 0)
    evaluation["protocol"] = {"folds": 5, "repeats": 2, "internal": "out-of-fold", "external": "x"}
    ablation = {"note": "same folds", "provenance": "lungjepa ablation (3 s)", "rows": [
        {"readout": "mean", "patch_stem": "linear", "model": "imaging_only", "auc": 0.7512,
         "ci": [0.65, 0.84], "n": 150, "external_auc": 0.6, "seconds_per_fold": 12.34}]}  # fmt: skip
    provenance = {
        "command": "c",
        "data_version": "d",
        "models_version": "m",
        "encoder_version": "e",
        "date": "t",
    }
    pretrain_ablation = {"note": "one change each", "provenance": "lungjepa ablation --pretrain",
        "rows": [{"variant": "no_tube", "overrides": {"mask_tube": False}, "model": "jepa",
                  "auc": 0.8123, "ci": [0.7, 0.9], "n": 150, "external_auc": 0.8,
                  "diameter_r2_centre": 0.77, "diameter_r2_mean": 0.49, "n_archive": 638,
                  "ema_target_to_init": 0.86, "pretrain_seconds": 139.4},
                 {"variant": "no_pretraining", "overrides": {"pretrain": False}, "model": "jepa",
                  "auc": 0.7, "ci": [0.6, 0.8], "n": 150, "external_auc": 0.7,
                  "diameter_r2_centre": 0.83, "diameter_r2_mean": 0.39, "n_archive": 0,
                  "ema_target_to_init": None, "pretrain_seconds": 0.1}]}  # fmt: skip
    text = results_markdown(
        evaluation, PAPER_AUC, provenance, ablation=ablation,
        pretrain_ablation=pretrain_ablation,
        replicates=[{"seed": 4, "command": "lungjepa demo --seed 4 --out r4", "minutes": 14.2,
                     "evaluation": {**evaluation, "external": evaluation["internal"]}}],
    )  # fmt: skip
    auc = evaluation["internal"]["jepa"]["auc"]
    assert "## Replicates on other generator seeds" in text
    assert (
        f"| 4 | {auc:.3f} / {auc:.3f} |" in text
        and f"{evaluation['comparisons']['primary']['diff']:+.3f}, p" in text
    )
    assert "lungjepa demo --seed 4 --out r4 (14.2 min)" in text
    assert "## What each JEPA ingredient is worth" in text
    assert (
        "| `no_tube` | mask_tube=False | `jepa` | 0.812 [0.700, 0.900] | 0.800 | 0.770 | 0.490 "
        "| 638 | 0.860 | 139 |" in text
    )
    assert "| `no_pretraining` | pretrain=False | `jepa` |" in text and "| 0 | n/a | 0 |" in text
    primary = evaluation["comparisons"]["primary"]
    assert "2 x 5-fold stratified cross-validation" in text
    assert "## Pre-registered comparisons" in text and f"{primary['diff']:+.3f}" in text
    assert "(tested alone)" in text
    assert "## Label efficiency" in text and "50% of labels" in text
    assert "| `mean` | `linear` | `imaging_only` | 0.751 [0.650, 0.840] | 150 | 12.3 |" in text
    assert "protocol" not in [line.strip("# ") for line in text.splitlines()]  # not a cohort
    assert "Measured under other settings" not in text  # no run fingerprint: nothing to compare
    # side studies recorded under this run's settings stand as they are; others get a banner
    current = {**ablation, "settings_fingerprint": "abc"}
    flagged = results_markdown(
        evaluation, PAPER_AUC, provenance, ablation=current, pretrain_ablation=pretrain_ablation,
        settings_fingerprint="abc",
    )  # fmt: skip
    assert flagged.count("**Measured under other settings**") == 1
    assert "(fingerprint `not recorded`; this run: `abc`)" in flagged
    section = flagged.split("## What each JEPA ingredient is worth")[1]
    assert "**Measured under other settings**" in section.split("\n## ")[0]
    png = tmp_path / "curve.png"
    plot_label_efficiency(evaluation["label_efficiency"], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Evaluation statistics for binary malignancy predictions: AUC, bootstrap CIs, DeLong, calibration.

Why our own code rather than sklearn alone: the paper's lineage reported "95% CI" as
mean +/- z*SD/sqrt(n) over bootstrap replicates, which is far too narrow. We report
percentile bootstrap intervals (resampling patients) and paired DeLong tests (fast DeLong,
Sun & Xu 2014), and both need AUCs computed many times with midranks, so ties count 1/2.

Inputs everywhere: `y` holds one 0/1 label per patient, `p` one score per patient (any
monotone score works for AUC; Brier and reliability need probabilities in [0, 1]).

Size: about 460 lines of small statistical functions (AUC, bootstrap, DeLong, calibration,
Holm, the detectable difference, the pre-registered comparisons) that share the midrank AUC
and the input checks; split them and each piece would import the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

COHORTS: tuple[str, ...] = ("internal", "external")
MODELS: tuple[str, ...] = (
    "jepa",
    "multimodal",
    "imaging_only",
    "clinical_brock",
    "clinical_mayo",
    "oracle_brock",
    "clinical_refit",
    "jepa_probe",
)


def _check_binary(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate one label and one finite score per patient; labels must be 0/1."""
    y = np.asarray(y).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {p.shape[0]}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 (drop unlabeled -1 rows before evaluating)")
    if not np.isfinite(p).all():
        raise ValueError("scores contain NaN or infinity")
    return y.astype(np.int8), p


def _auc_from_ranks(ranks: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUC from midranks of the pooled scores (ties count 1/2)."""
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve; tied scores contribute 1/2 (midranks)."""
    y, p = _check_binary(y, p)
    return _auc_from_ranks(stats.rankdata(p), y)


def bootstrap_aucs(
    y: np.ndarray,
    p: np.ndarray,
    n_replicates: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Bootstrap AUC replicates resampling patients; returns (aucs, n_skipped_one_class).

    Replicates that draw only one class have no AUC; they are skipped and counted, so a
    caller can see when a cohort is too small for the interval to mean much. With `groups`
    (a patient id per row) whole patients are resampled, keeping their rows together.
    The same seed gives the same resamples for every model, so intervals are paired.
    """
    y, p = _check_binary(y, p)
    rng = np.random.default_rng(seed)
    members: list[np.ndarray] = []
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if groups.shape != y.shape:
            raise ValueError("groups must give one patient id per row")
        _, inverse = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    n_units = len(members) if groups is not None else y.shape[0]
    aucs: list[float] = []
    skipped = 0
    for _ in range(n_replicates):
        drawn = rng.integers(0, n_units, size=n_units)
        idx = drawn if groups is None else np.concatenate([members[g] for g in drawn])
        y_b = y[idx]
        n_pos = int(y_b.sum())
        if n_pos == 0 or n_pos == y_b.shape[0]:
            skipped += 1
            continue
        aucs.append(_auc_from_ranks(stats.rankdata(p[idx]), y_b))
    return np.asarray(aucs, dtype=np.float64), skipped


def bootstrap_auc_ci(
    y: np.ndarray,
    p: np.ndarray,
    n_replicates: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the AUC, resampling patients."""
    aucs, _ = bootstrap_aucs(y, p, n_replicates=n_replicates, seed=seed, groups=groups)
    if aucs.size == 0:
        raise ValueError("every bootstrap replicate drew a single class; no interval")
    lo, hi = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong comparison of two AUCs on the same patients (diff = auc_a - auc_b)."""

    auc_a: float
    auc_b: float
    diff: float
    z: float
    p_value: float
    var: float


def _midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties averaged), as in Sun & Xu's fast DeLong."""
    return stats.rankdata(x, method="average")


def _delong_components(
    y: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and structural components V10 [k, m], V01 [k, n] for k predictors (Sun & Xu 2014)."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs at least one positive and one negative label")
    k = scores.shape[0]
    tx = np.empty((k, m))
    ty = np.empty((k, n))
    tz = np.empty((k, m + n))
    for r in range(k):
        tx[r] = _midrank(pos[r])
        ty[r] = _midrank(neg[r])
        tz[r] = _midrank(np.concatenate([pos[r], neg[r]]))
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [k] and their DeLong covariance [k, k] for predictors `scores` [k, N]."""
    y = np.asarray(y).ravel().astype(np.int8)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    aucs, v10, v01 = _delong_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((scores.shape[0],) * 2)
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((scores.shape[0],) * 2)
    return aucs, s10 / m + s01 / n


def delong_test(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray) -> DeLongResult:
    """Two-sided paired DeLong test of AUC(a) = AUC(b); identical predictors give p = 1."""
    y, p_a = _check_binary(y, p_a)
    _, p_b = _check_binary(y, p_b)
    aucs, cov = delong_covariance(y, np.vstack([p_a, p_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    # Zero variance of the difference means the two rankings agree on every pair:
    # no evidence of a difference (guarding also against -0.0 or rounding below zero).
    if var <= 1e-15:
        z, p_value = 0.0, 1.0
    else:
        z = diff / float(np.sqrt(var))
        p_value = float(2.0 * stats.norm.sf(abs(z)))
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        diff=diff,
        z=float(z),
        p_value=p_value,
        var=max(var, 0.0),
    )


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of predicted probabilities (lower is better; calibration + sharpness)."""
    y, p = _check_binary(y, p)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("Brier score needs probabilities in [0, 1]")
    return float(np.mean((p - y) ** 2))


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Observed malignancy rate per equal-width probability bin (empty bins are dropped).

    Columns: bin_lower, bin_upper, mean_predicted, observed_fraction, count.
    """
    y, p = _check_binary(y, p)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("reliability curve needs probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed last bin so p = 1.0 lands in the top bin.
    bins = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = bins == b
        if not sel.any():
            continue
        rows.append(
            {
                "bin_lower": float(edges[b]),
                "bin_upper": float(edges[b + 1]),
                "mean_predicted": float(p[sel].mean()),
                "observed_fraction": float(y[sel].mean()),
                "count": int(sel.sum()),
            }
        )
    columns = ["bin_lower", "bin_upper", "mean_predicted", "observed_fraction", "count"]
    return pd.DataFrame(rows, columns=columns)


def roc_curve_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """ROC operating points at every distinct score threshold (predict positive if p >= t).

    The first row is threshold +inf (fpr = tpr = 0); the last reaches (1, 1).
    """
    y, p = _check_binary(y, p)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC curve needs at least one positive and one negative label")
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p_sorted) != 0), p_sorted.shape[0] - 1]
    tps = np.cumsum(y_sorted)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return pd.DataFrame(
        {
            "fpr": np.r_[0.0, fps / n_neg],
            "tpr": np.r_[0.0, tps / n_pos],
            "threshold": np.r_[np.inf, p_sorted[last_of_tie]],
        }
    )


def evaluate_models(
    y: np.ndarray,
    predictions: dict[str, np.ndarray],
    reference: str,
    n_replicates: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Metrics of every model on one cohort, plus DeLong p-values of reference vs each other.

    Returns `{name: {"auc", "ci": [lo, hi], "n", "n_pos", "brier", "n_bootstrap_skipped"},
    "delong": {f"{reference}_vs_{name}": p}}`, JSON-ready (plain floats and ints). Brier is
    None for a model whose scores are not probabilities. Every model is bootstrapped with
    the same seed, hence the same patient resamples. `groups` applies to the bootstrap
    only; DeLong assumes one row per patient.
    """
    if reference not in predictions:
        raise KeyError(f"reference model {reference!r} not among {sorted(predictions)}")
    if "delong" in predictions:
        raise ValueError("'delong' is reserved for the p-value block and cannot name a model")
    y = np.asarray(y).ravel()
    result: dict[str, Any] = {}
    for name, p in predictions.items():
        y_c, p_c = _check_binary(y, p)
        aucs, skipped = bootstrap_aucs(y_c, p_c, n_replicates, seed, groups)
        if aucs.size == 0:
            raise ValueError(f"{name}: every bootstrap replicate drew a single class")
        lo, hi = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
        probabilities = bool((p_c >= 0).all() and (p_c <= 1).all())
        result[name] = {
            "auc": roc_auc(y_c, p_c),
            "ci": [float(lo), float(hi)],
            "n": int(y_c.shape[0]),
            "n_pos": int(y_c.sum()),
            "brier": brier_score(y_c, p_c) if probabilities else None,
            "n_bootstrap_skipped": int(skipped),
        }
    result["delong"] = {
        f"{reference}_vs_{name}": delong_test(y, predictions[reference], p).p_value
        for name, p in predictions.items()
        if name != reference
    }
    return result


def rank_agreement(predictions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Spearman correlation of every pair of models' scores on the same patients.

    Why: two models with equal AUC can rank patients alike (they learned the same signal)
    or differently; a finetuned JEPA ranking like the from-scratch model, or a multimodal
    model ranking like the EHR-only refit, says which input the models actually use.
    """
    matrix = pd.DataFrame(
        {name: np.asarray(p, dtype=np.float64) for name, p in predictions.items()}
    )
    return {a: {b: float(v) for b, v in row.items()} for a, row in matrix.corr("spearman").items()}


def combine_cohort_results(per_cohort: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Assemble metrics/evaluation.json: models per cohort at the top, DeLong p-values together.

    Input: `{cohort: evaluate_models(...)}`. Output: `{cohort: {model: {...}}, ...,
    "delong": {cohort: {"ref_vs_model": p}}}`.
    """
    if "delong" in per_cohort:
        raise ValueError("'delong' is reserved and cannot name a cohort")
    combined: dict[str, Any] = {}
    delong: dict[str, Any] = {}
    for cohort, results in per_cohort.items():
        combined[cohort] = {k: v for k, v in results.items() if k != "delong"}
        delong[cohort] = dict(results.get("delong", {}))
    combined["delong"] = delong
    return combined


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), input order kept."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted.tolist()


POWER = 0.8
"""The power a comparison should have to find a true difference (the usual 80%): the
"detectable" difference of a test is the smallest it finds with this power."""


def detectable_difference(se: float, alpha: float = 0.05, power: float = POWER) -> float:
    """Smallest true difference a two-sided z test at ``alpha`` finds with ``power``:
    (z_(1-alpha/2) + z_power) x SE, in the units of ``se`` (AUC here).

    Why beside every p-value: a comparison that is not significant tells the reader something
    only if it could have found the difference they care about.
    """
    return float((stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power)) * se)


def compare_paired(
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    n_replicates: int,
    seed: int,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """AUC(a) - AUC(b) on the same patients: difference, paired percentile bootstrap CI, DeLong p
    and the difference DeLong's SE lets the test find with POWER (``detectable``).

    Both models are bootstrapped with one seed, so each replicate resamples the same
    patients for both and the interval is of the paired difference.
    """
    aucs_a, _ = bootstrap_aucs(y, p_a, n_replicates, seed)
    aucs_b, _ = bootstrap_aucs(y, p_b, n_replicates, seed)
    if aucs_a.size == 0:
        raise ValueError("every bootstrap replicate drew a single class; no interval")
    lo, hi = np.quantile(aucs_a - aucs_b, [alpha / 2.0, 1.0 - alpha / 2.0])
    test = delong_test(y, p_a, p_b)
    return {
        "auc_a": test.auc_a,
        "auc_b": test.auc_b,
        "diff": test.diff,
        "ci": [float(lo), float(hi)],
        "p": test.p_value,
        "detectable": detectable_difference(float(np.sqrt(test.var)), alpha),
        "n": int(np.asarray(y).shape[0]),
    }


def preregistered_comparisons(
    labels: dict[str, np.ndarray],
    predictions: dict[str, dict[str, np.ndarray]],
    spec: dict[str, Any],
    n_replicates: int,
    seed: int,
) -> dict[str, Any]:
    """The comparisons params.yaml `evaluate.comparisons` fixed before any run.

    spec: {"primary": {cohort, model, versus}, "secondary": [...], "alpha": a}. The primary
    is tested alone at alpha; the secondary p-values are Holm-adjusted together. A
    comparison naming a model the run did not produce is reported as missing, not dropped.
    """
    alpha = float(spec.get("alpha", 0.05))

    def one(item: dict[str, str]) -> dict[str, Any]:
        cohort, a, b = item["cohort"], item["model"], item["versus"]
        entry: dict[str, Any] = {"cohort": cohort, "model": a, "versus": b}
        by_model = predictions.get(cohort, {})
        if a not in by_model or b not in by_model:
            return {**entry, "missing": True}
        result = compare_paired(labels[cohort], by_model[a], by_model[b], n_replicates, seed, alpha)
        return {**entry, **result}

    primary = one(spec["primary"])
    if "p" in primary:
        primary["significant"] = bool(primary["p"] < alpha)
    secondary = [one(item) for item in spec.get("secondary", [])]
    tested = [c for c in secondary if "p" in c]
    for c, adjusted in zip(tested, holm_adjust([c["p"] for c in tested]), strict=True):
        c["p_holm"] = adjusted
        c["significant"] = bool(adjusted < alpha)
    return {"alpha": alpha, "primary": primary, "secondary": secondary}


def label_efficiency_summary(
    frame: pd.DataFrame, n_replicates: int, seed: int, reference: str = "jepa"
) -> dict[str, Any]:
    """Out-of-fold AUC (bootstrap CI) per model and label fraction, and reference - other p.

    frame: label_efficiency_frame's long table (fraction, model, patient_id, label,
    probability). Returns {"fractions": [...], "models": {model: [{fraction, auc, ci, n}]},
    "delong": {fraction: {f"{reference}_vs_{model}": p}}}.
    """
    out: dict[str, Any] = {"fractions": [], "models": {}, "delong": {}}
    if frame.empty:
        return out
    fractions = sorted(frame["fraction"].unique().tolist())
    out["fractions"] = [float(f) for f in fractions]
    for fraction in fractions:
        at = frame[frame["fraction"] == fraction]
        by_model = {m: rows.sort_values("patient_id") for m, rows in at.groupby("model", sort=True)}
        for model, rows in by_model.items():
            y, p = rows["label"].to_numpy(), rows["probability"].to_numpy()
            lo, hi = bootstrap_auc_ci(y, p, n_replicates, seed)
            out["models"].setdefault(model, []).append(
                {"fraction": float(fraction), "auc": roc_auc(y, p), "ci": [lo, hi], "n": len(y)}
            )
        if reference in by_model:
            ref = by_model[reference]
            out["delong"][f"{float(fraction):g}"] = {
                f"{reference}_vs_{m}": delong_test(
                    ref["label"].to_numpy(), ref["probability"].to_numpy(),
                    rows["probability"].to_numpy(),
                ).p_value
                for m, rows in by_model.items()
                if m != reference
            }  # fmt: skip
    return out

"""Pooling per-cell AUC differences across seeds: random-effects meta-analysis and trend.

Why: each cell of the synthetic study (regime x seed) is a separate dataset and training run
whose paired DeLong test gives an AUC difference *and* its sampling variance. A t-interval
over 3 seeds ignores those variances and has 2 degrees of freedom (t = 4.30), so it is very
wide. Weighting each cell by its DeLong variance plus the between-seed variance (tau^2,
DerSimonian & Laird 1986) uses all test patients while still widening the interval when
seeds disagree more than sampling noise explains. The trend (difference vs regime) is the
same model with a slope: a method-of-moments mixed-effects meta-regression.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Pooled:
    """A random-effects estimate: mean (or slope), its SE, 95% CI, two-sided p and tau^2."""

    estimate: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    tau2: float  # between-cell variance beyond sampling noise
    q: float  # Cochran's Q (heterogeneity statistic, fixed-effect weights)
    k: int  # cells pooled


def _check(estimates: Sequence[float], variances: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(estimates, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if y.shape != v.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"need equal-length 1-d estimates and variances, got {y.shape}, {v.shape}")
    if not (np.isfinite(y).all() and np.isfinite(v).all()) or (v < 0).any():
        raise ValueError("estimates must be finite and variances finite and >= 0")
    # a zero DeLong variance (identical rankings) would get infinite weight: floor it
    return y, np.maximum(v, 1e-12)


def _normal_summary(
    estimate: float, se: float, tau2: float, q: float, k: int, alpha: float
) -> Pooled:
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    p = float(2.0 * stats.norm.sf(abs(estimate) / se)) if se > 0 else 1.0
    return Pooled(estimate, se, estimate - z * se, estimate + z * se, p, tau2, q, k)


def random_effects_mean(
    estimates: Sequence[float], variances: Sequence[float], alpha: float = 0.05
) -> Pooled:
    """DerSimonian-Laird pooled mean of `estimates` with within-cell `variances`."""
    y, v = _check(estimates, variances)
    w = 1.0 / v
    fixed = float((w * y).sum() / w.sum())
    q = float((w * (y - fixed) ** 2).sum())
    c = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - (y.size - 1)) / c) if c > 0 else 0.0
    w_re = 1.0 / (v + tau2)
    mean = float((w_re * y).sum() / w_re.sum())
    return _normal_summary(mean, float(np.sqrt(1.0 / w_re.sum())), tau2, q, y.size, alpha)


def random_effects_slope(
    x: Sequence[float],
    estimates: Sequence[float],
    variances: Sequence[float],
    alpha: float = 0.05,
) -> Pooled:
    """Slope of `estimates` on `x` in a mixed-effects meta-regression (method of moments).

    tau^2 is the residual between-cell variance: (Q_E - (k - 2)) / (tr W - tr((X'WX)^-1 X'W^2X)),
    the DerSimonian-Laird estimator generalised to a covariate (Raudenbush 2009).
    """
    y, v = _check(estimates, variances)
    xs = np.asarray(x, dtype=np.float64)
    if xs.shape != y.shape or np.ptp(xs) == 0:
        raise ValueError("x must match the estimates and take at least two values")
    design = np.column_stack([np.ones_like(xs), xs])

    def wls(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xtwx_inv = np.linalg.inv(design.T @ (weights[:, None] * design))
        beta = xtwx_inv @ design.T @ (weights * y)
        return beta, xtwx_inv

    w = 1.0 / v
    beta, xtwx_inv = wls(w)
    q = float((w * (y - design @ beta) ** 2).sum())
    trace = float(w.sum() - np.trace(xtwx_inv @ design.T @ ((w**2)[:, None] * design)))
    tau2 = max(0.0, (q - (y.size - 2)) / trace) if trace > 0 else 0.0
    beta, xtwx_inv = wls(1.0 / (v + tau2))
    return _normal_summary(float(beta[1]), float(np.sqrt(xtwx_inv[1, 1])), tau2, q, y.size, alpha)

"""Cohort drift: per-feature two-sample KS test and population stability index (PSI).

Reference = the cohort a model was trained on; candidate = a new or external cohort. Each
feature gets a severity: ERROR when the Bonferroni-adjusted KS p-value falls below
``ks_p_error`` or PSI reaches ``psi_error``; WARN likewise for the WARN levels; OK otherwise;
SKIPPED when either side has fewer than ``min_samples`` finite values.

PSI is biased upwards on small samples: for k bins its sampling noise is about
(k - 1) * (1/n_ref + 1/n_cand). So the bins used shrink with the sample until that noise is at
most half the WARN level, and when even two bins cannot get there PSI is reported but does not
set the severity (the KS test, which is exact for small samples, still does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cohorts.example_set import ExampleSet
from cohorts.files import atomic_output

OK, WARN, ERROR, SKIPPED = "OK", "WARN", "ERROR", "SKIPPED"
SEVERITY_RANK = {SKIPPED: 0, OK: 0, WARN: 1, ERROR: 2}
PSI_EPSILON = 1e-4
"""Floor of a bin's share before the log, so an empty bin gives a large, finite PSI."""


@dataclass(frozen=True)
class DriftThresholds:
    """Mirrored 1:1 by params.yaml ``quality.drift``."""

    ks_p_warn: float = 0.01
    ks_p_error: float = 0.001
    psi_warn: float = 0.1
    psi_error: float = 0.25
    bins: int = 10
    min_samples: int = 10

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DriftThresholds:
        d = params["quality"]["drift"]
        return cls(
            ks_p_warn=float(d["ks_p_warn"]),
            ks_p_error=float(d["ks_p_error"]),
            psi_warn=float(d["psi_warn"]),
            psi_error=float(d["psi_error"]),
            bins=int(d["bins"]),
            min_samples=int(d["min_samples"]),
        )


@dataclass(frozen=True)
class FeatureDrift:
    """KS and PSI of one feature, reference vs candidate, and the severity they give."""

    group: str
    feature: str
    n_reference: int
    n_candidate: int
    reference_mean: float
    candidate_mean: float
    ks_statistic: float
    ks_p_value: float
    ks_p_adjusted: float
    psi: float
    psi_bins: int
    psi_used: bool
    severity: str


@dataclass
class DriftResult:
    """Every feature's drift; the overall severity is the worst feature's."""

    features: list[FeatureDrift] = field(default_factory=list)

    @property
    def severity(self) -> str:
        tested = [f.severity for f in self.features if f.severity != SKIPPED]
        if not tested:
            return SKIPPED
        return max(tested, key=SEVERITY_RANK.__getitem__)

    def with_severity(self, severity: str) -> list[FeatureDrift]:
        return [f for f in self.features if f.severity == severity]

    def counts(self) -> dict[str, dict[str, int]]:
        """group -> severity -> number of features."""
        out: dict[str, dict[str, int]] = {}
        for f in self.features:
            group = out.setdefault(f.group, {OK: 0, WARN: 0, ERROR: 0, SKIPPED: 0})
            group[f.severity] += 1
        return out

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(f) for f in self.features])

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "counts": self.counts(),
            "features": [asdict(f) for f in self.features],
        }


def _finite(values: np.ndarray | pd.Series) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def psi_bin_edges(reference: np.ndarray, bins: int) -> np.ndarray | None:
    """Interior bin edges at reference quantiles, or None when the reference has at most
    ``bins`` distinct values (then each value is its own bin)."""
    if len(np.unique(reference)) <= bins:
        return None
    quantiles = np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(quantiles)


def bin_shares(
    reference: np.ndarray, candidate: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shares of reference and candidate per bin (quantile bins, or one bin per value)."""
    edges = psi_bin_edges(reference, bins)
    if edges is None:
        values = np.union1d(np.unique(reference), np.unique(candidate))
        ref_counts = np.array([(reference == v).sum() for v in values], dtype=np.float64)
        cand_counts = np.array([(candidate == v).sum() for v in values], dtype=np.float64)
    else:  # bin i holds edges[i-1] < x <= edges[i]; the outer bins are open
        n = len(edges) + 1
        ref_counts = np.bincount(np.searchsorted(edges, reference), minlength=n).astype(float)
        cand_counts = np.bincount(np.searchsorted(edges, candidate), minlength=n).astype(float)
    return ref_counts / ref_counts.sum(), cand_counts / cand_counts.sum()


def population_stability_index(
    reference: np.ndarray, candidate: np.ndarray, bins: int = 10
) -> float:
    """PSI = sum over bins of (q - p) * ln(q / p), p reference and q candidate shares."""
    reference, candidate = _finite(reference), _finite(candidate)
    if not len(reference) or not len(candidate):
        raise ValueError("population_stability_index: both samples need finite values")
    p, q = bin_shares(reference, candidate, bins)
    p, q = np.maximum(p, PSI_EPSILON), np.maximum(q, PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_test(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS statistic and p-value (scipy; exact for small samples)."""
    result = stats.ks_2samp(_finite(reference), _finite(candidate), alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def psi_bins_for(n_reference: int, n_candidate: int, t: DriftThresholds) -> int:
    """Most bins (<= t.bins) whose PSI sampling noise stays <= half the WARN level; 0: none."""
    noise_per_bin = 1.0 / n_reference + 1.0 / n_candidate
    k = 1 + int(np.floor(t.psi_warn / (2.0 * noise_per_bin)))
    return min(t.bins, k) if k >= 2 else 0


def _severity(p_adjusted: float, psi: float, psi_used: bool, t: DriftThresholds) -> str:
    if p_adjusted < t.ks_p_error or (psi_used and psi >= t.psi_error):
        return ERROR
    if p_adjusted < t.ks_p_warn or (psi_used and psi >= t.psi_warn):
        return WARN
    return OK


def feature_drift(
    group: str,
    feature: str,
    reference: np.ndarray | pd.Series,
    candidate: np.ndarray | pd.Series,
    t: DriftThresholds,
    n_tests: int = 1,
) -> FeatureDrift:
    """KS + PSI of one feature; the KS p-value is Bonferroni-adjusted for ``n_tests`` features."""
    ref, cand = _finite(reference), _finite(candidate)
    nan = float("nan")
    means = (float(ref.mean()) if len(ref) else nan, float(cand.mean()) if len(cand) else nan)
    if min(len(ref), len(cand)) < t.min_samples:
        return FeatureDrift(
            group, feature, len(ref), len(cand), *means, nan, nan, nan, nan, 0, False, SKIPPED
        )
    statistic, p_value = ks_test(ref, cand)
    p_adjusted = min(1.0, p_value * max(1, n_tests))
    bins = psi_bins_for(len(ref), len(cand), t)
    psi_used = bins >= 2
    psi = population_stability_index(ref, cand, bins if psi_used else t.bins)
    return FeatureDrift(
        group=group,
        feature=feature,
        n_reference=len(ref),
        n_candidate=len(cand),
        reference_mean=means[0],
        candidate_mean=means[1],
        ks_statistic=statistic,
        ks_p_value=p_value,
        ks_p_adjusted=p_adjusted,
        psi=psi,
        psi_bins=bins if psi_used else t.bins,
        psi_used=psi_used,
        severity=_severity(p_adjusted, psi, psi_used, t),
    )


def compare_frames(
    group: str,
    reference: pd.DataFrame,
    candidate: pd.DataFrame,
    t: DriftThresholds,
    features: list[str] | None = None,
) -> list[FeatureDrift]:
    """Drift of every (numeric) column shared by both frames; Bonferroni within the group."""
    names = features or [
        c
        for c in reference.columns
        if c in candidate.columns and pd.api.types.is_numeric_dtype(reference[c])
    ]
    testable = [
        n
        for n in names
        if min(len(_finite(reference[n])), len(_finite(candidate[n]))) >= t.min_samples
    ]
    n_tests = max(1, len(testable))
    return [feature_drift(group, n, reference[n], candidate[n], t, n_tests) for n in names]


def compare_cohorts(
    groups: dict[str, tuple[pd.DataFrame, pd.DataFrame]], t: DriftThresholds
) -> DriftResult:
    """Drift per group of features, e.g. {"ehr": (ref, cand), "image": ..., "embedding": ...}."""
    result = DriftResult()
    for group, (reference, candidate) in groups.items():
        result.features.extend(compare_frames(group, reference, candidate, t))
    return result


def image_statistics(crops_hu: np.ndarray, scan_mask: np.ndarray) -> pd.DataFrame:
    """Per patient, the latest present crop's HU statistics: what a scanner change moves.

    Mean, standard deviation, percentiles and the high-frequency energy (mean absolute
    difference of neighbouring voxels along x, a noise proxy), in HU.
    """
    mask = np.asarray(scan_mask, dtype=bool)
    present = mask.any(axis=1)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    crops = np.asarray(crops_hu)[np.arange(len(mask)), last][present].astype(np.float64)
    flat = crops.reshape(len(crops), int(np.prod(crops.shape[1:])))
    return pd.DataFrame(
        {
            "hu_mean": flat.mean(axis=1),
            "hu_std": flat.std(axis=1),
            "hu_p10": np.percentile(flat, 10, axis=1),
            "hu_p50": np.percentile(flat, 50, axis=1),
            "hu_p90": np.percentile(flat, 90, axis=1),
            "hu_gradient_x": np.abs(np.diff(crops, axis=-1)).mean(axis=(1, 2, 3)),
        }
    )


def ehr_latest(ehr: np.ndarray, ehr_mask: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Per patient, the EHR feature vector as of the latest scan with EHR (NaN when none)."""
    mask = np.asarray(ehr_mask, dtype=bool)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    values = np.asarray(ehr, dtype=np.float64)[np.arange(len(mask)), last]
    values[~mask.any(axis=1)] = np.nan
    return pd.DataFrame(values, columns=list(names))


PROFILE_GROUPS: tuple[str, ...] = ("ehr", "image")


def training_profile(examples: ExampleSet) -> dict[str, pd.DataFrame]:
    """What a model's training patients looked like, per drift group (one row per patient).

    Saved beside each models version, so a later challenger's training data can be compared
    with its champion's (the promotion gate) after the examples files have moved on.
    """
    names = [str(n) for n in examples.ehr_feature_names]
    return {
        "ehr": ehr_latest(examples.ehr, examples.ehr_mask, names),
        "image": image_statistics(examples.crops_hu, examples.scan_mask),
    }


def save_profile(profile: dict[str, pd.DataFrame], folder: Path) -> Path:
    """``folder/<group>.parquet`` per group, each written atomically."""
    folder = Path(folder)
    for group, frame in profile.items():
        with atomic_output(folder / f"{group}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    return folder


def load_profile(folder: Path) -> dict[str, pd.DataFrame] | None:
    """The saved profile, or None when the folder lacks a group (a version from before)."""
    paths = {group: Path(folder) / f"{group}.parquet" for group in PROFILE_GROUPS}
    if not all(p.is_file() for p in paths.values()):
        return None
    return {group: pd.read_parquet(p) for group, p in paths.items()}

"""The synthetic study's aggregation: pooled paired AUC differences per regime, and the trend."""

import numpy as np
import pytest
from scipy import stats

from models.meta_analysis import random_effects_mean
from orchestration.study import (
    agreement_by_regime,
    cell_run_config,
    plot_study,
    summarise,
    trends,
)


def _cell(regime: float, seed: int, jepa_minus_multimodal: float, variance: float) -> dict:
    paired = {
        "jepa - multimodal": {"difference": jepa_minus_multimodal, "variance": variance, "n": 48}
    }
    return {"regime": regime, "seed": seed, "paired": {"internal": paired, "external": paired}}


def test_summary_pools_the_paired_differences_and_keeps_the_seed_t_interval(tmp_path) -> None:
    cells = [
        _cell(0.0, 0, 0.10, 0.002),
        _cell(0.0, 1, 0.12, 0.003),
        _cell(0.0, 2, 0.06, 0.002),
        _cell(1.0, 0, -0.10, 0.002),
    ]
    rows = summarise(cells, "internal")
    row = next(r for r in rows if r["regime"] == 0.0 and r["comparison"] == "jepa - multimodal")
    diffs = np.array([0.10, 0.12, 0.06])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert row["seed_mean"] == pytest.approx(diffs.mean())
    assert row["seed_t_ci_low"] == pytest.approx(diffs.mean() - half)
    assert row["seed_t_ci_high"] == pytest.approx(diffs.mean() + half)
    pooled = random_effects_mean(diffs, [0.002, 0.003, 0.002])
    assert row["pooled_difference"] == pytest.approx(pooled.estimate)
    assert row["pooled_ci_low"] == pytest.approx(pooled.ci_low)
    # the seeds agree within their sampling noise here, so pooling narrows the interval
    assert row["pooled_ci_high"] - row["pooled_ci_low"] < 2 * half
    assert row["n_seeds"] == 3 and row["test_patients_per_cell"] == 48
    single = next(r for r in rows if r["regime"] == 1.0 and r["comparison"] == "jepa - multimodal")
    assert single["pooled_difference"] == pytest.approx(-0.10)
    assert np.isnan(single["seed_t_ci_low"])  # one seed: no t-interval, not a made-up one
    for cell, rho in zip(cells, (0.9, 0.8, 0.7, 0.2), strict=True):
        cell["agreement"] = {"jepa ~ multimodal": rho}
    assert agreement_by_regime(cells) == [
        {"regime": 0.0, "jepa ~ multimodal": pytest.approx(0.8)},
        {"regime": 1.0, "jepa ~ multimodal": pytest.approx(0.2)},
    ]
    (trend,) = trends(cells, "internal")
    assert trend["slope_per_unit_regime"] < 0 and trend["cells"] == 4
    plot_study(rows, tmp_path / "study.png")
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"


def test_each_cell_gets_its_own_folders_and_generator_settings(tmp_path) -> None:
    config = cell_run_config(tmp_path / "cell", regime=0.67, seed=2)
    assert config["ops"]["raw_archive"]["config"] == {"preset": "study", "seed": 2, "regime": 0.67}
    assert config["resources"]["paths"]["config"]["data_dir"] == str(tmp_path / "cell" / "data")

"""The synthetic study's aggregation: paired AUC differences per regime with a t-interval."""

import numpy as np
import pytest
from scipy import stats

from orchestration.study import cell_run_config, plot_study, summarise


def _cell(regime: float, seed: int, jepa: float, multimodal: float, imaging: float) -> dict:
    models = {"jepa": jepa, "multimodal": multimodal, "imaging_only": imaging, "jepa_probe": 0.5}
    cohort = {name: {"auc": auc} for name, auc in models.items()}
    return {"regime": regime, "seed": seed, "evaluation": {"internal": cohort, "external": cohort}}


def test_summary_is_the_mean_paired_difference_with_a_t_interval(tmp_path) -> None:
    cells = [
        _cell(0.0, 0, 0.80, 0.70, 0.60),
        _cell(0.0, 1, 0.82, 0.70, 0.61),
        _cell(0.0, 2, 0.78, 0.72, 0.59),
        _cell(1.0, 0, 0.60, 0.70, 0.60),
    ]
    rows = summarise(cells, "internal")
    row = next(r for r in rows if r["regime"] == 0.0 and r["comparison"] == "jepa - multimodal")
    diffs = np.array([0.10, 0.12, 0.06])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert row["mean_auc_difference"] == pytest.approx(diffs.mean())
    assert row["ci_low"] == pytest.approx(diffs.mean() - half)
    assert row["ci_high"] == pytest.approx(diffs.mean() + half)
    assert row["n_seeds"] == 3
    single = next(r for r in rows if r["regime"] == 1.0 and r["comparison"] == "jepa - multimodal")
    assert single["mean_auc_difference"] == pytest.approx(-0.10)
    assert np.isnan(single["ci_low"])  # one seed: no interval, not a made-up one
    plot_study(rows, tmp_path / "study.png")
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"


def test_each_cell_gets_its_own_folders_and_generator_settings(tmp_path) -> None:
    config = cell_run_config(tmp_path / "cell", regime=0.67, seed=2)
    assert config["ops"]["raw_archive"]["config"] == {"preset": "study", "seed": 2, "regime": 0.67}
    assert config["resources"]["paths"]["config"]["data_dir"] == str(tmp_path / "cell" / "data")

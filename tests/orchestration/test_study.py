"""The synthetic study's aggregation: pooled paired AUC differences per regime, and the trend."""

import json

import numpy as np
import pytest
from scipy import stats

from models.meta_analysis import random_effects_mean
from models.study import agreement_by_regime, plot_study, summarise, trends
from orchestration.study import cell_run_config


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
    assert config["ops"]["raw_archive"]["config"] == {"seed": 2, "regime": 0.67}  # sizes: profile
    assert config["resources"]["paths"]["config"]["data_dir"] == str(tmp_path / "cell" / "data")


def test_run_study_runs_each_cell_once_resumes_from_its_record_and_summarises_its_predictions(
    tmp_path,
) -> None:
    """The driver on the tiny profile: one cell is a real pipeline run up to evaluation; its
    row is the paired DeLong difference of the predictions the cell saved (one seed: the
    pooled value is that cell's). The cell's record under metrics/study/ is all a rerun
    needs: with the cell's data folder deleted, a second call runs nothing and gives the same
    summary; `summarise` only lists the cells not yet run, and a record measured under other
    settings is refused, never pooled."""
    import shutil

    import dagster as dg
    import pandas as pd

    from models.evaluation import delong_test
    from models.protocol import predictions_from_frame
    from orchestration.study import CELL_MARKER, PREDICTIONS, run_study, settings_fingerprint

    metrics = tmp_path / "metrics"
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        study = run_study(tmp_path / "cells", metrics, [0.0], [0], instance)
        assert len(instance.get_run_records()) == 1
        cell = tmp_path / "cells" / "regime0_seed0"
        latest = json.loads((cell / "artifacts" / "models" / "latest.json").read_text())
        saved = cell / "artifacts" / latest["path"] / PREDICTIONS
        record = metrics / "study" / "regime0_seed0"
        assert (record / PREDICTIONS).read_bytes() == saved.read_bytes()
        marker = json.loads((record / CELL_MARKER).read_text())
        assert (
            marker["settings_fingerprint"]
            == settings_fingerprint()
            == study["settings_fingerprint"]
        )
        labels, predictions = predictions_from_frame(pd.read_parquet(saved))
        test = delong_test(
            labels["internal"],
            predictions["internal"]["jepa"],
            predictions["internal"]["multimodal"],
        )
        (row,) = [
            r
            for r in study["rows"]
            if r["cohort"] == "internal" and r["comparison"] == "jepa - multimodal"
        ]
        assert row["pooled_difference"] == pytest.approx(test.diff, abs=1e-12)
        assert row["n_seeds"] == 1 and row["test_patients_per_cell"] == labels["internal"].size
        assert study["trends"] == []  # one regime: no slope to fit
        # the cell's instrument check travels in its record and is summarised by regime
        check = json.loads((cell / "metrics" / "cause_visibility.json").read_text())
        assert marker["instrument"] == check
        (by_regime,) = study["instrument"]
        assert by_regime["regime"] == 0.0 and by_regime["cells"] == 1
        auc = {r["features"]: r["auc"] for r in check["headroom"]}
        assert by_regime["added by true S"] == pytest.approx(
            auc["size + EHR + true S"] - auc["size + EHR"]
        )
        assert study["cells_missing"] == [] and study["primary"]["complete"]
        shutil.rmtree(tmp_path / "cells")  # the bulky data: the record is enough
        again = run_study(tmp_path / "cells", metrics, [0.0], [0], instance)
        assert len(instance.get_run_records()) == 1  # resumed: the finished cell is not rerun
        rows = json.dumps(study["rows"], sort_keys=True)  # as text: NaN == NaN
        assert json.dumps(again["rows"], sort_keys=True) == rows
        document = tmp_path / "STUDY.md"
        partial = run_study(
            tmp_path / "cells", metrics, [0.0, 1.0], [0], instance, None, False, document
        )
        assert len(instance.get_run_records()) == 1  # summarise only: nothing ran
        assert "**Provisional: 1 of 2 planned cells have run**" in document.read_text()
        assert "## Room the data leave, by regime" in document.read_text()
        assert partial["cells_missing"] == ["regime1_seed0"] and partial["cells_planned"] == 2
        assert not partial["primary"]["complete"] and not partial["primary"]["met"]
        (record / CELL_MARKER).write_text(json.dumps({**marker, "settings_fingerprint": "other"}))
        with pytest.raises(ValueError, match="regime0_seed0.*ran under settings other"):
            run_study(tmp_path / "cells", metrics, [0.0], [0], instance)
    saved_study = json.loads((metrics / "study.json").read_text())
    assert saved_study["cells_missing"] == ["regime1_seed0"]
    assert (metrics / "study.png").is_file()


def test_the_pre_registered_verdict_is_read_off_the_rows_and_an_unrun_half_never_passes() -> None:
    from models.study import StudySettings, primary_result

    plan = StudySettings(
        regimes=(0.0, 1.0),
        seeds=(0, 1, 2),
        cohort="internal",
        model="jepa",
        versus="multimodal",
        regime=0.0,
        alpha=0.05,
    )
    gaining = [_cell(0.0, s, d, 0.0004) for s, d in enumerate((0.10, 0.12, 0.08))]
    fading = [_cell(1.0, s, d, 0.0004) for s, d in enumerate((-0.01, 0.0, 0.01))]
    cells = gaining + fading
    verdict = primary_result(summarise(cells, "internal"), trends(cells, "internal"), plan)
    assert verdict["gain_ci"][0] > 0 and verdict["gain_ci_above_zero"] is True
    assert verdict["slope"] < 0 and verdict["slope_p"] < 0.05
    assert verdict["met"] is True
    # the same gain at both regimes: no negative trend, so the test is not met
    flat = gaining + [_cell(1.0, s, d, 0.0004) for s, d in enumerate((0.10, 0.12, 0.08))]
    verdict = primary_result(summarise(flat, "internal"), trends(flat, "internal"), plan)
    assert verdict["gain_ci_above_zero"] is True and verdict["slope_negative_significant"] is False
    assert verdict["met"] is False
    # one regime only: the trend half was not run, and an unrun half never reads as a pass
    verdict = primary_result(summarise(gaining, "internal"), trends(gaining, "internal"), plan)
    assert verdict["slope_negative_significant"] is None and verdict["met"] is False


def test_the_study_settings_come_from_params_and_name_models_the_protocol_trains() -> None:
    from models.study import COMPARISONS, StudySettings
    from orchestration.params import section

    plan = StudySettings.from_params(section("study"))
    assert len(plan.regimes) >= 4 and len(plan.seeds) >= 5
    assert plan.regime in plan.regimes
    assert (plan.model, plan.versus) in COMPARISONS


def test_the_settings_fingerprint_ignores_seed_and_regime_and_sees_the_method() -> None:
    from orchestration.params import params
    from orchestration.study import settings_fingerprint

    base = params()
    other_cell = {**base, "synth": {**base["synth"], "seed": 99, "regime": 1.0}}
    assert settings_fingerprint(other_cell) == settings_fingerprint(base)
    longer = {**base, "pretrain": {**base["pretrain"], "epochs": base["pretrain"]["epochs"] + 1}}
    assert settings_fingerprint(longer) != settings_fingerprint(base)
    bigger = {**base, "synth": {**base["synth"], "n_archive": 1000}}
    assert settings_fingerprint(bigger) != settings_fingerprint(base)

"""models/study.py power_analysis: whether the sweep could pass its pre-registered test, set
against the room the instrument measures (a perfect reader of the shared cause S)."""

import numpy as np
import pytest
from scipy import stats

from models.study import POWER, StudySettings, power_analysis
from models.study_report import STUDY_POINTER, power_reading, study_summary

PLAN = StudySettings(
    regimes=(0.0, 1.0),
    seeds=(10, 11, 12, 13),
    cohort="internal",
    model="jepa",
    versus="multimodal",
    regime=0.0,
    alpha=0.05,
)
Z = stats.norm.ppf(0.975) + stats.norm.ppf(POWER)


def _cell(regime: float, seed: int, difference: float, variance: float, room: float) -> dict:
    """A study cell with its paired difference and an instrument check whose true-S reader
    adds ``room`` AUC to size + EHR."""
    return {
        "regime": regime,
        "seed": seed,
        "paired": {
            "internal": {"jepa - multimodal": {"difference": difference, "variance": variance}}
        },
        "instrument": {
            "headroom": [
                {"features": "size + EHR", "auc": 0.80},
                {"features": "size + EHR + true S", "auc": 0.80 + room},
            ],
            "visibility": [],
        },
    }


def _sweep(seeds: int, variance: float, room0: float) -> list[dict]:
    # the same difference in every cell of a regime: no heterogeneity, so tau^2 = 0 and the
    # pooled SE is sqrt(variance / seeds) exactly
    return [
        _cell(regime, seed, 0.05 * (1 - regime), variance, room0 * (1 - regime))
        for seed in range(seeds)
        for regime in (0.0, 1.0)
    ]


def test_power_is_set_against_the_room_with_the_pooled_standard_error() -> None:
    power = power_analysis(_sweep(seeds=4, variance=0.01, room0=0.04), PLAN)
    assert power is not None
    gain, slope = power["rows"]
    se = np.sqrt(0.01 / 4)
    assert gain["se"] == pytest.approx(se)
    assert gain["estimate"] == pytest.approx(0.05)
    assert gain["room_perfect_S_reader"] == pytest.approx(0.04)
    assert gain["detectable_with_80pct_power"] == pytest.approx(Z * se)
    assert gain["power_at_room"] == pytest.approx(stats.norm.cdf(0.04 / se - 1.959964))
    assert gain["seeds_per_regime_for_80pct_power"] == int(np.ceil(4 * (Z * se / 0.04) ** 2))
    # the slope half: a perfect reader's gain falls from 0.04 at regime 0 to 0 at regime 1
    assert slope["room_perfect_S_reader"] == pytest.approx(-0.04)
    assert slope["estimate"] == pytest.approx(-0.05)
    assert slope["se"] == pytest.approx(np.sqrt(2 * 0.01 / 4))  # two regimes x 4 cells
    assert slope["seeds_per_regime_now"] == 4


def test_more_seeds_shrink_what_is_detectable_and_enough_seeds_reach_the_power() -> None:
    few = power_analysis(_sweep(seeds=4, variance=0.01, room0=0.04), PLAN)["rows"][0]
    many = power_analysis(_sweep(seeds=16, variance=0.01, room0=0.04), PLAN)["rows"][0]
    assert many["detectable_with_80pct_power"] == pytest.approx(
        few["detectable_with_80pct_power"] / 2
    )
    assert few["power_at_room"] < POWER
    needed = few["seeds_per_regime_for_80pct_power"]
    enough = power_analysis(_sweep(seeds=needed, variance=0.01, room0=0.04), PLAN)["rows"][0]
    assert enough["power_at_room"] >= POWER > few["power_at_room"]


def test_without_instrument_checks_over_two_regimes_there_is_no_power_analysis() -> None:
    cells = _sweep(seeds=3, variance=0.01, room0=0.04)
    for cell in cells:
        cell.pop("instrument")
    assert power_analysis(cells, PLAN) is None
    assert power_analysis([c for c in _sweep(3, 0.01, 0.04) if c["regime"] == 0.0], PLAN) is None


def test_the_reading_says_whether_a_perfect_reader_could_pass() -> None:
    small_room = power_analysis(_sweep(seeds=4, variance=0.01, room0=0.04), PLAN)
    assert "even a model that read S perfectly would most likely fail" in power_reading(
        small_room, []
    )
    large_room = power_analysis(_sweep(seeds=4, variance=0.0001, room0=0.2), PLAN)
    assert "the sweep could see a perfect reader of S" in power_reading(large_room, [])
    no_room = power_analysis(_sweep(seeds=4, variance=0.01, room0=0.0), PLAN)
    assert "no room" in power_reading(no_room, [])


def test_results_quote_the_verdict_and_the_power_under_the_pointer() -> None:
    assert study_summary(None) == STUDY_POINTER
    primary = {
        "cohort": "internal",
        "comparison": "jepa - multimodal",
        "regime": 0.0,
        "alpha": 0.05,
        "gain": -0.03,
        "gain_ci": [-0.17, 0.10],
        "gain_ci_above_zero": False,
        "slope": 0.09,
        "slope_p": 0.13,
        "slope_negative_significant": False,
        "complete": True,
        "met": False,
    }
    power = power_analysis(_sweep(seeds=4, variance=0.01, room0=0.04), PLAN)
    text = study_summary({"primary": primary, "power": power, "cells_missing": []})
    assert text.startswith(STUDY_POINTER)
    assert "pooled gain at regime 0 -0.030 [-0.170, +0.100]" in text
    assert "**Could the sweep pass?**" in text

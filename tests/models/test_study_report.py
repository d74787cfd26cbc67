"""models/study_report.py: docs/STUDY.md rendered from a study summary."""

from models.study_report import study_markdown

PRIMARY = {
    "cohort": "internal",
    "comparison": "jepa - multimodal",
    "regime": 0.0,
    "alpha": 0.05,
    "gain": 0.0412,
    "gain_ci": [-0.0101, 0.0931],
    "gain_ci_above_zero": False,
    "slope": None,
    "slope_p": None,
    "slope_negative_significant": None,
    "complete": False,
    "met": False,
}


def test_study_markdown_states_the_verdict_the_sweep_and_what_has_not_run() -> None:
    study = {
        "title": "Synthetic study",
        "regimes": [0.0, 1.0],
        "seeds": [10, 11],
        "settings_fingerprint": "abc123",
        "cells_planned": 4,
        "cells_missing": ["regime1_seed10", "regime1_seed11"],
        "cells": [{"regime": 0.0, "seed": 10}, {"regime": 0.0, "seed": 11}],
        "rows": [{"regime": 0.0, "comparison": "jepa - multimodal", "pooled_difference": 0.8123}],
        "trends": [{"comparison": "jepa - multimodal", "slope_per_unit_regime": -0.2345}],
        "primary": PRIMARY,
    }
    text = study_markdown(study, "lungjepa --profile study study")
    assert text.startswith("# Synthetic study\n")
    assert "```\nlungjepa --profile study study\n```" in text
    assert "regimes: 0, 1; generator seeds: 10, 11" in text
    assert "cells finished: 2 of 4; settings fingerprint `abc123`\n" in text
    assert "the plot: metrics/study.png\n\n**Provisional" in text
    assert "**Provisional: 2 of 4 planned cells have run** (not yet: regime1_seed10, " in text
    assert "pooled gain at regime 0 +0.041 [-0.010, +0.093], 95% CI above 0: **no**" in text
    assert "trend not run" in text and "p < 0.05: **not run**" in text
    assert "Both hold on the whole planned sweep: **no**" in text
    assert "| 0.000 | jepa - multimodal | 0.812 |" in text
    assert "## Trend over the regime (meta-regression slope)" in text and "-0.234" in text
    assert "How alike" not in text
    done = {**study, "cells_missing": [], "primary": {**PRIMARY, "met": True}}
    assert "Provisional" not in study_markdown(done, "c")
    assert "Both hold on the whole planned sweep: **yes**" in study_markdown(done, "c")

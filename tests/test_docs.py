"""The committed documents are rendered from the committed metrics, never edited by hand.

docs/RELIABILITY.md and docs/BENCHMARKS.md come whole from metrics/reliability.json and
metrics/bench.json; docs/RESULTS.md also needs the run's artifacts (drift, encoder card,
predictions), which are not committed, so its measured tables (both cohorts and the
pre-registered comparisons) are checked against metrics/evaluation.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.report import render as render_benchmarks
from models.reporting import PAPER_AUC, _cohort_table, _comparisons_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reliability"))
from report import render as render_reliability  # noqa: E402


def _metrics(name: str) -> dict:
    return json.loads((REPO / "metrics" / name).read_text())


def test_reliability_md_is_rendered_from_the_committed_metrics() -> None:
    rendered = render_reliability(_metrics("reliability.json"))
    assert (REPO / "docs" / "RELIABILITY.md").read_text() == rendered, "run `make reliability`"


def test_benchmarks_md_is_rendered_from_the_committed_metrics() -> None:
    rendered = render_benchmarks(_metrics("bench.json"))
    assert (REPO / "docs" / "BENCHMARKS.md").read_text() == rendered, "run `make bench`"


def test_results_md_tables_are_those_of_the_committed_evaluation() -> None:
    evaluation = _metrics("evaluation.json")
    results = (REPO / "docs" / "RESULTS.md").read_text()
    for cohort in ("internal", "external"):
        assert _cohort_table(cohort, evaluation[cohort], PAPER_AUC.get(cohort, {})) in results
    assert _comparisons_section(evaluation["comparisons"]) in results

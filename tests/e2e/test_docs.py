"""The committed documents are rendered from the committed metrics, never edited by hand.

docs/RELIABILITY.md and docs/BENCHMARKS.md come whole from metrics/reliability.json and
metrics/bench.json; docs/RESULTS.md also needs the run's artifacts (drift, encoder card,
predictions), which are not committed, so its measured tables (both cohorts and the
pre-registered comparisons) are checked against metrics/evaluation.json. docs/STUDY.md comes
whole from metrics/study.json, whose summary is recomputed from the committed cell records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.report import render as render_benchmarks
from models.reporting import PAPER_AUC, _cohort_table, _comparisons_section

REPO = Path(__file__).resolve().parents[2]
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


def test_study_md_and_its_summary_come_from_the_committed_cell_records() -> None:
    """docs/STUDY.md is metrics/study.json rendered, and study.json's pooled rows are what the
    committed per-cell records (metrics/study/<cell>/) give when summarised again."""
    from models.study import summarise
    from models.study_report import study_markdown
    from orchestration.study import STUDY_COMMAND, cell_name, cell_paired_differences

    study = _metrics("study.json")
    rendered = study_markdown(study, STUDY_COMMAND)
    assert (REPO / "docs" / "STUDY.md").read_text() == rendered, f"run `{STUDY_COMMAND}`"
    cells = []
    for cell in study["cells"]:
        record = REPO / "metrics" / "study" / cell_name(cell["regime"], cell["seed"])
        recorded = json.loads((record / "cell.json").read_text())
        assert recorded["settings_fingerprint"] == study["settings_fingerprint"]
        cells.append({**recorded, "paired": cell_paired_differences(record)})
    rows = summarise(cells, "internal") + summarise(cells, "external")
    assert json.dumps(rows, sort_keys=True) == json.dumps(study["rows"], sort_keys=True)

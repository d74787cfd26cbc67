"""Reliability suite: shared helpers and the figures recorder behind docs/RELIABILITY.md.

Tests put what they measured (cases tried, crashes, quarantine reasons, recoveries) into the
session-wide ``figures`` dict. When LUNGJEPA_RELIABILITY_METRICS names a file (``make
reliability`` sets it), the session writes the figures and every test's outcome there, so the
document is rendered from the last full run and never from typed-in numbers.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: dicom_factory, pipeline_run

from cohorts.files import atomic_write_json  # noqa: E402

METRICS_ENV = "LUNGJEPA_RELIABILITY_METRICS"
_FIGURES: dict[str, Any] = {}
_OUTCOMES: dict[str, dict[str, Any]] = {}
_STARTED = time.time()


@pytest.fixture(scope="session")
def figures() -> dict[str, Any]:
    """Session-wide dict of measured figures; each test stores its own section under its name."""
    return _FIGURES


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep each reliability test's outcome and duration for the report."""
    if "tests/reliability/" not in report.nodeid.replace(os.sep, "/"):
        return
    entry = _OUTCOMES.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0})
    entry["seconds"] = round(entry["seconds"] + report.duration, 2)
    if report.failed:
        entry["outcome"] = "failed"
    elif report.skipped and report.when in ("setup", "call"):
        entry["outcome"] = "skipped"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(METRICS_ENV)
    if not target or not _OUTCOMES:
        return
    atomic_write_json(
        Path(target),
        {
            "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - _STARTED, 1),
            "exit_status": int(exitstatus),
            "markers": session.config.getoption("markexpr"),
            "python": platform.python_version(),
            "tests": _OUTCOMES,
            "figures": _FIGURES,
        },
    )

"""How the rendered results write a number: the formatters shared by models/reporting.py
(RESULTS.md) and models/side_study_report.py (its replicate and ablation tables).
"""

from __future__ import annotations

from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    """A number to `digits` decimals; n/a where there is none."""
    if value is None:
        return "n/a"
    return f"{float(value):.{digits}f}"


def fmt_p(p: float) -> str:
    """p-values: three decimals, scientific below 0.001 so tiny values stay readable."""
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"

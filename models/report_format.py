"""How the rendered results write a number or a table: the formatters shared by
models/reporting.py (RESULTS.md), models/side_study_report.py (its replicate and ablation
tables) and models/study_report.py (docs/STUDY.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd


def fmt(value: Any, digits: int = 3) -> str:
    """A number to `digits` decimals; n/a where there is none."""
    if value is None:
        return "n/a"
    return f"{float(value):.{digits}f}"


def fmt_p(p: float) -> str:
    """p-values: three decimals, scientific below 0.001 so tiny values stay readable."""
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def markdown_table(rows: list[Mapping[str, Any]], leading: Sequence[str]) -> list[str]:
    """Markdown table of dict rows, `leading` columns first, floats rounded."""
    frame = pd.DataFrame(rows)
    first = [c for c in leading if c in frame.columns]
    frame = frame[first + [c for c in frame.columns if c not in first]]
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join(fmt(v) if isinstance(v, float) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return [header, rule, *body]

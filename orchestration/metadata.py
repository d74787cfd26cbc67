"""Turning domain results into Dagster metadata the UI can plot and show."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg


def image_markdown(path: Path, title: str) -> dg.MetadataValue:
    """A PNG inlined as markdown, so the plot shows in the asset's page without a file server."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return dg.MetadataValue.md(f"### {title}\n\n![{title}](data:image/png;base64,{encoded})")


def flat_numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, dg.MetadataValue]:
    """Nested numbers as flat ``a/b`` metadata entries: numeric metadata is plotted over time."""
    flat: dict[str, dg.MetadataValue] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            flat[name] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            flat[name] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            flat[name] = dg.MetadataValue.float(value)
        elif isinstance(value, Mapping):
            flat.update(flat_numbers(value, prefix=f"{name}/"))
    return flat


def markdown_table(rows: list[Mapping[str, Any]]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("(empty)")
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))

"""Dagster Config classes built from the domain dataclasses and params.yaml, never retyped.

Why: a setting is declared twice, once in params.yaml (its value) and once in the domain
dataclass (its type and meaning). A run-config class that retyped every field would be a third
copy that could drift from both (docs/ARCHITECTURE.md, issue 18). ``config_class`` builds the
class from the two: one field per key of the params.yaml section, typed as the dataclass
types it (tuples as lists, which Dagster run config can carry), defaulting to the value in
params.yaml, so the launchpad shows and validates exactly the knobs params.yaml sets.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pydantic


def config_type(annotation: Any) -> Any:
    """The Dagster-config type of a dataclass annotation: ``tuple[X, ...]`` -> ``list[X]``."""
    if typing.get_origin(annotation) is tuple:
        args = {a for a in typing.get_args(annotation) if a is not Ellipsis}
        if len(args) != 1:
            raise TypeError(f"a tuple of mixed types {annotation} has no Dagster-config type")
        return list[args.pop()]
    return annotation


def config_class(
    name: str,
    domain: type,
    values: Mapping[str, Any],
    base: type[dg.Config] = dg.Config,
    doc: str | None = None,
) -> type[dg.Config]:
    """A ``base`` subclass with one field per key of ``values`` (a params.yaml section).

    Each field takes the type of the ``domain`` dataclass field of that name and defaults to
    the value. Raises ValueError naming a key the dataclass does not have (a typo in
    params.yaml fails here, at definition time, not in the middle of a run).
    """
    names = {f.name for f in dataclasses.fields(domain)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"params.yaml keys {unknown} are not {domain.__name__} fields")
    hints = typing.get_type_hints(domain)
    fields: dict[str, Any] = {
        key: (config_type(hints[key]), list(value) if isinstance(value, tuple) else value)
        for key, value in values.items()
    }
    return pydantic.create_model(
        name, __base__=base, __doc__=doc or base.__doc__, __module__=base.__module__, **fields
    )

"""Dagster Config classes built from the domain dataclasses and params.yaml, never retyped.

Why: a setting is declared twice, once in params.yaml (its value) and once in the domain
dataclass (its type and meaning). A run-config class that retyped every field would be a third
copy that could drift from both (docs/ARCHITECTURE.md, issue 18). ``config_class`` builds the
class from the two: one field per key of the params.yaml section, typed as the dataclass
types it (tuples as lists, which Dagster run config can carry; a nested dataclass as a nested
Config built the same way), defaulting to the value in params.yaml, so the launchpad shows and
validates exactly the knobs params.yaml sets. ``domain_values`` goes back: a Config's values
as the keyword arguments of one domain dataclass.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
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


def _hints(domains: Sequence[type]) -> dict[str, Any]:
    """Field name -> annotation over ``domains``; the first domain naming a field wins."""
    hints: dict[str, Any] = {}
    for domain in reversed(domains):
        names = {f.name for f in dataclasses.fields(domain)}
        hints.update({k: v for k, v in typing.get_type_hints(domain).items() if k in names})
    return hints


def config_class(
    name: str,
    domain: type | Sequence[type],
    values: Mapping[str, Any],
    base: type[dg.Config] = dg.Config,
    doc: str | None = None,
) -> type[dg.Config]:
    """A ``base`` subclass with one field per key of ``values`` (a params.yaml section).

    Each field takes the type of the ``domain`` dataclass field of that name (with several
    domains, the first that has it) and defaults to the value; a null value makes the field
    optional (unset: the domain's own default applies); a field typed as a dataclass with a
    mapping value becomes a nested Config of that dataclass. Raises ValueError naming a
    key no domain has (a typo in params.yaml fails here, at definition time, not in the middle
    of a run).
    """
    domains = (domain,) if isinstance(domain, type) else tuple(domain)
    hints = _hints(domains)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        owners = " or ".join(d.__name__ for d in domains)
        raise ValueError(f"params.yaml keys {unknown} are not {owners} fields")
    fields: dict[str, Any] = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            nested = config_class(f"{name}_{key}", hint, value)
            fields[key] = (nested, nested())
        elif value is None:  # null in params.yaml: "not set", the domain's default applies
            fields[key] = (config_type(hint) | None, None)
        else:
            fields[key] = (config_type(hint), list(value) if isinstance(value, tuple) else value)
    return pydantic.create_model(
        name, __base__=base, __doc__=doc or base.__doc__, __module__=base.__module__, **fields
    )


def domain_values(domain: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` (a Config's ``model_dump()``) that are ``domain`` fields, as
    that dataclass takes them: lists back to tuples, nested mappings to their dataclass."""
    hints = _hints((domain,))
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            out[key] = hint(**domain_values(hint, value))
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            out[key] = tuple(value)
        else:
            out[key] = value
    return out

"""params.yaml: the one place sizes and hyperparameters live.

Dagster Config defaults, the CLI and dvc.yaml all read it through this module. The file is
found through LUNGJEPA_PARAMS, else at the repository root.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cohorts.privacy import PrivacyConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_ENV = "LUNGJEPA_PARAMS"
PROFILE_ENV = "LUNGJEPA_PROFILE"
ROOT_ENV = "LUNGJEPA_ROOT"


def params_path() -> Path:
    return Path(os.environ.get(PARAMS_ENV, REPO_ROOT / "params.yaml"))


@cache
def load_params() -> dict[str, Any]:
    """The parsed params.yaml (cached; callers get a deep copy so nobody mutates the source)."""
    path = params_path()
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path} (set {PARAMS_ENV} or restore it)")
    with path.open() as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def active_profile() -> str | None:
    return os.environ.get(PROFILE_ENV) or None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _profile_overrides(profiles: dict[str, Any], name: str) -> dict[str, Any]:
    """The profile's overrides, with those of the profile it `extends` (recursively) under them."""
    chain: list[str] = []
    while name is not None:
        if name not in profiles:
            raise KeyError(f"{params_path()}: no profile {name!r}; known: {sorted(profiles)}")
        if name in chain:
            raise ValueError(f"{params_path()}: profiles extend in a cycle: {chain + [name]}")
        chain.append(name)
        name = (profiles[name] or {}).get("extends")
    merged: dict[str, Any] = {}
    for link in reversed(chain):
        own = {k: v for k, v in (profiles[link] or {}).items() if k != "extends"}
        merged = _merge(merged, own)
    return merged


_FIRST_ACTIVE: list[str | None] = []  # the active profile at this process's first read


def params(profile: str | None = None) -> dict[str, Any]:
    """params.yaml with the named profile (default: $LUNGJEPA_PROFILE) merged over it.

    Dagster Config defaults are read from here when their modules are imported (the launchpad
    shows a default only if the class has it; a lazy default is not displayed), so a process
    that changes $LUNGJEPA_PROFILE after its first read would run with defaults of the old
    profile and values of the new: that raises here instead of mixing them. Set the profile
    first (``lungjepa --profile``, tests/conftest.py), or name it (``params("tiny")``).
    """
    if profile is None:
        active = active_profile()
        if not _FIRST_ACTIVE:
            _FIRST_ACTIVE.append(active)
        elif _FIRST_ACTIVE[0] != active:
            raise RuntimeError(
                f"${PROFILE_ENV} changed from {_FIRST_ACTIVE[0]!r} to {active!r} after "
                f"{params_path()} was first read in this process: Config defaults already hold "
                f"{_FIRST_ACTIVE[0]!r}'s values. Set the profile before importing orchestration."
            )
    data = copy.deepcopy(load_params())
    profiles = data.pop("profiles", {}) or {}
    profile = profile or active_profile()
    if profile is None:
        return data
    return _merge(data, _profile_overrides(profiles, profile))


def section(name: str, profile: str | None = None) -> dict[str, Any]:
    """One section of params.yaml, e.g. ``section("pretrain")``."""
    data = params(profile)
    if name not in data:
        raise KeyError(f"{params_path()}: no section {name!r}")
    return data[name]


def privacy_config(profile: str | None = None) -> PrivacyConfig:
    """params.yaml ``privacy``: read here by curation, the EHR features and predict alike, and
    never a Dagster run-config field, so no launchpad override can shift CT and EHR apart."""
    return PrivacyConfig.from_params(section("privacy", profile))


def storage_root() -> Path:
    """Where the pipeline's outputs live: the repository, or $LUNGJEPA_ROOT when set.

    A deployment whose data, artifacts and reports live apart from its code checkout (the team
    deployment, deploy/team/) sets it; code, params.yaml and the Feast repo stay in the checkout.
    """
    root = os.environ.get(ROOT_ENV)
    return Path(root).resolve() if root else REPO_ROOT


def resolve_path(value: str | os.PathLike[str]) -> Path:
    """Relative paths in params.yaml are relative to `storage_root()` (default: the repository)."""
    path = Path(value)
    return path if path.is_absolute() else storage_root() / path

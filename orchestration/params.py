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


def params(profile: str | None = None) -> dict[str, Any]:
    """params.yaml with the named profile (default: $LUNGJEPA_PROFILE) merged over it."""
    data = copy.deepcopy(load_params())
    profiles = data.pop("profiles", {}) or {}
    profile = profile or active_profile()
    if profile is None:
        return data
    if profile not in profiles:
        raise KeyError(f"{params_path()}: no profile {profile!r}; known: {sorted(profiles)}")
    return _merge(data, profiles[profile])


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


def resolve_path(value: str | os.PathLike[str]) -> Path:
    """Relative paths in params.yaml are relative to the repository root."""
    path = Path(value)
    return path if path.is_absolute() else REPO_ROOT / path

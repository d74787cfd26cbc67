"""The EHR vector the model takes: from the Feast online store, a JSON file or the caller.

Features are put in the order the model's metadata names, with training's rules: age at scan
computed as ``add_age_at_scan`` does (from the store's birth reference day, or a typed year
of birth shifted like the store's), a missing feature set to 0 as ``assemble_examples`` does,
and ``ehr_mask`` False when all are missing.

Feast imports torch eagerly when it is installed (feast/torch_wrapper.py); the store is opened
and read with torch imports refused (``refuse_torch``), so the predict process never loads it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.abc
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohorts.ehr.features import (
    AGE_AT_SCAN,
    BIRTH_REFERENCE_DAY,
    age_years,
    birth_reference_days,
    scan_day_number,
)
from serving.errors import PredictionError

YEAR_OF_BIRTH = "year_of_birth"


@dataclass
class EhrInput:
    """One EHR vector in the model's feature order, and where it came from."""

    values: dict[str, float]
    available: bool
    source: str
    warnings: list[str] = field(default_factory=list)


StoreOpener = Callable[[], Any]
"""Returns the open Feast store; called only when a prediction needs online features."""


class _RefuseTorch(importlib.abc.MetaPathFinder):
    """Makes ``import torch`` fail, so an optional torch import elsewhere stays off."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(
                f"torch is not loaded on the predict path ({name})", name=name
            )
        return None


@contextlib.contextmanager
def refuse_torch() -> Iterator[None]:
    """While active, importing torch raises ModuleNotFoundError (unless already imported)."""
    finder = _RefuseTorch()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def age_at_scan_years(birth_reference_day: float, scan_date: dt.date) -> float:
    """Age by training's rule (``age_years``, which ``add_age_at_scan`` applies), both dates
    shifted alike; without a one-row DataFrame (2 ms a row, most of a batch's EHR time)."""
    return float(age_years(scan_day_number(scan_date), birth_reference_day))


def _birth_day(raw: dict[str, Any], shift_days: int) -> float:
    """The birth reference day of a feature row: the store's, or from a typed year of birth
    (the real year, shifted here by the patient's shift like the store's); NaN when absent."""
    if _present(raw.get(BIRTH_REFERENCE_DAY)):
        return float(raw[BIRTH_REFERENCE_DAY])
    if _present(raw.get(YEAR_OF_BIRTH)):
        year = pd.Series([int(float(raw[YEAR_OF_BIRTH]))])
        return float(birth_reference_days(year, shift_days).iloc[0])
    return float("nan")


def ehr_vector(
    raw: dict[str, Any],
    names: Sequence[str],
    scan_date: dt.date,
    source: str,
    shift_days: int = 0,
) -> EhrInput:
    """Model-ordered features from a feature row; the missing-value rule of training.

    All features missing: ``available`` False (ehr_mask False, zeros). Some missing: zeros
    for those, with a warning naming them (as ``assemble_examples`` fills NaN with 0).
    ``scan_date`` is the shifted date; ``shift_days`` the patient's shift, used only to place
    a typed ``year_of_birth`` on the same shifted calendar.
    """
    values: dict[str, float] = {}
    for name in names:
        if name == AGE_AT_SCAN and AGE_AT_SCAN not in raw:
            birth = _birth_day(raw, shift_days)
            value = age_at_scan_years(birth, scan_date) if _present(birth) else float("nan")
        else:
            value = float(raw[name]) if _present(raw.get(name)) else float("nan")
        values[name] = value
    missing = [n for n, v in values.items() if np.isnan(v)]
    warnings: list[str] = []
    if len(missing) == len(names):
        return EhrInput({n: 0.0 for n in names}, False, source, warnings)
    if missing:
        warnings.append(f"EHR features missing, set to 0 as in training: {missing}")
    return EhrInput(
        {n: (0.0 if np.isnan(v) else v) for n, v in values.items()}, True, source, warnings
    )


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def open_feature_store(data_dir: Path, repo_dir: Path) -> Any:
    """The Feast store of ``data_dir`` (torch imports refused); PredictionError if none."""
    with refuse_torch():
        from feature_repo.store import feast_dir, has_registry, open_store
    if not has_registry(data_dir):
        raise PredictionError(
            f"no feature store under {feast_dir(data_dir)} (run `lungjepa features`, or pass "
            "--features-json)"
        )
    return open_store(repo_dir, data_dir)


def online_rows(store: Any, patient_pseudonyms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each patient's latest online features (one Feast read for all of them)."""
    with refuse_torch():
        from feature_repo.store import online_feature_rows
    return online_feature_rows(store, list(patient_pseudonyms))


def row_features(row: dict[str, Any]) -> dict[str, Any] | None:
    """An online row's feature values (its patient_id dropped); None when none is present."""
    feature_values = {k: v for k, v in row.items() if k != "patient_id"}
    if not any(_present(v) for v in feature_values.values()):
        return None
    return feature_values


def online_ehr(
    store: Any, patient_pseudonym: str, names: Sequence[str], scan_date: dt.date
) -> EhrInput | None:
    """The patient's latest features from the Feast online store; None when it has no row."""
    feature_values = row_features(online_rows(store, [patient_pseudonym])[patient_pseudonym])
    if feature_values is None:
        return None
    unknown = [n for n in names if n != AGE_AT_SCAN and n not in feature_values]
    if unknown:
        raise PredictionError(f"the feature store does not serve the model's features {unknown}")
    return ehr_vector(feature_values, names, scan_date, "feast_online")


def json_ehr(path: Path, names: Sequence[str], scan_date: dt.date, shift_days: int = 0) -> EhrInput:
    """Features from a JSON object {name: value}; age may come as year_of_birth instead."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PredictionError(f"--features-json {path}: {exc}") from exc
    return mapping_ehr(raw, names, scan_date, shift_days, f"--features-json {path}")


def mapping_ehr(
    raw: object, names: Sequence[str], scan_date: dt.date, shift_days: int, where: str
) -> EhrInput:
    """Features given by the caller as {name: value} (``where`` names them in errors)."""
    if not isinstance(raw, dict):
        raise PredictionError(f"{where}: expected an object of name: value")
    needed = [n for n in names if n not in raw and not (n == AGE_AT_SCAN and YEAR_OF_BIRTH in raw)]
    if needed:
        raise PredictionError(f"{where} lacks the model's features {needed}")
    return ehr_vector(raw, names, scan_date, "features_json", shift_days)

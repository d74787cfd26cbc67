"""Clinical covariates of the Brock and Mayo models, as of each snapshot day.

Codes follow docs/ARCHITECTURE.md ("Codes that the clinical covariates read"). Rules:
- smoking_current / smoking_former: from the latest smoking code on or before the day
  (F17.210 current, Z87.891 former; both on the same day -> current); 0/0 when never coded.
- pack_years: latest observation 401201003 value on or before the day; 0 when never recorded
  (never-smokers are rarely coded), so read it together with the smoking flags.
- emphysema, copd, family_history_lung_cancer, prior_cancer: ever coded on or before the day
  (chronic or historical facts do not expire with the look-back window).
- n_visits_lookback: distinct event days in [day - lookback_days, day].
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohorts.ehr.snapshots import window_counts

CURRENT_SMOKER = "F17.210"
FORMER_SMOKER = "Z87.891"
PACK_YEARS = "401201003"
CLINICAL_HISTORY_FEATURES: list[str] = [
    "smoking_current",
    "smoking_former",
    "pack_years",
    "emphysema",
    "copd",
    "family_history_lung_cancer",
    "prior_cancer",
    "n_visits_lookback",
]
DEMOGRAPHIC_FEATURES: list[str] = ["sex_female", "birth_reference_day"]  # see ehr/features.py

# ever-flags: feature -> (domains, code prefix)
_EVER_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "emphysema": (("condition",), "J43"),
    "copd": (("condition",), "J44"),
    "family_history_lung_cancer": (("condition", "observation"), "Z80.1"),
    "prior_cancer": (("condition",), "Z85"),
}


def _latest_on_or_before(snapshots: pd.DataFrame, facts: pd.DataFrame, column: str) -> pd.Series:
    """Value of ``column`` from the latest fact dated on or before each snapshot (NaN if none)."""
    if facts.empty:
        return pd.Series(np.nan, index=snapshots.index)
    left = snapshots[["person_id", "date"]].reset_index().sort_values("date", kind="stable")
    right = facts[["person_id", "date", column]].sort_values("date", kind="stable")
    merged = pd.merge_asof(left, right, on="date", by="person_id", direction="backward")
    return merged.set_index("index")[column].reindex(snapshots.index)


def clinical_history(
    snapshots: pd.DataFrame, events: pd.DataFrame, lookback_days: int
) -> pd.DataFrame:
    """Covariates per snapshot row (same index as ``snapshots``), float32 columns."""
    out = pd.DataFrame(index=snapshots.index)
    is_history = events["domain"].isin(["condition", "observation"])

    smoking = events[is_history & events["code"].isin([CURRENT_SMOKER, FORMER_SMOKER])]
    smoking = smoking.assign(current=(smoking["code"] == CURRENT_SMOKER).astype(float))
    # one status per day, current wins a same-day tie
    smoking = smoking.groupby(["person_id", "date"], as_index=False)["current"].max()
    status = _latest_on_or_before(snapshots, smoking, "current")
    out["smoking_current"] = (status == 1.0).astype(np.float32)
    out["smoking_former"] = (status == 0.0).astype(np.float32)

    packs = events[
        (events["domain"] == "observation")
        & (events["code"] == PACK_YEARS)
        & events["value"].notna()
    ]
    packs = packs.groupby(["person_id", "date"], as_index=False)["value"].last()
    out["pack_years"] = (
        _latest_on_or_before(snapshots, packs, "value").fillna(0.0).astype(np.float32)
    )

    for name, (domains, prefix) in _EVER_FLAGS.items():
        hit = events[events["domain"].isin(domains) & events["code"].str.startswith(prefix)]
        first = hit.groupby("person_id", as_index=False)["date"].min().assign(flag=1.0)
        out[name] = _latest_on_or_before(snapshots, first, "flag").fillna(0.0).astype(np.float32)

    visit_days = events[["person_id", "date"]].drop_duplicates()
    visits = window_counts(
        snapshots, visit_days, np.zeros(len(visit_days), dtype=np.int64), 1, lookback_days
    )
    out["n_visits_lookback"] = visits[:, 0]
    return out[CLINICAL_HISTORY_FEATURES]

"""Snapshot days: the only days on which a patient's EHR features can change.

Features at day s use the events dated on or before s (an event dated the scan day counts as
known at the scan: EHR dates carry no time of day, and the scan-day visit is information the
radiologist has). Windowed features count events in [s - lookback_days, s], so they change on
event days and on the day an event leaves the window (event day + lookback_days + 1).
Snapshots are taken on exactly those days (up to ``as_of``); between two snapshots nothing
changes, so "latest snapshot <= scan day" (Feast's point-in-time join) is "features as of
the scan day".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_KEY_STRIDE = 1_000_000  # days per patient block in the sort key (dates span < 1e6 days)
_KEY_OFFSET = 500_000  # keeps day numbers before 1970 positive inside a block


def _days(dates: pd.Series) -> np.ndarray:
    return dates.to_numpy(dtype="datetime64[D]").astype(np.int64)


def snapshot_index(events: pd.DataFrame, lookback_days: int, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per (person_id, snapshot day), sorted: event days plus window-exit days."""
    if events.empty:
        return pd.DataFrame(
            {"person_id": pd.Series(dtype=str), "date": pd.Series(dtype="datetime64[ns]")}
        )
    days = events[["person_id", "date"]].drop_duplicates()
    exits = days.assign(date=days["date"] + pd.Timedelta(days=lookback_days + 1))
    exits = exits[exits["date"] <= as_of]
    index = pd.concat([days, exits]).drop_duplicates()
    index = index.sort_values(["person_id", "date"], kind="stable").reset_index(drop=True)
    index["date"] = index["date"].astype("datetime64[ns]")
    return index


def window_counts(
    snapshots: pd.DataFrame,
    events: pd.DataFrame,
    columns: np.ndarray,
    n_columns: int,
    window_days: int | None,
) -> np.ndarray:
    """Count events per snapshot and column: event day e counts at snapshots s in [e, e + window].

    ``columns`` gives each event's column (0..n_columns-1); ``window_days`` None means "ever".
    Every event day must be a snapshot day of the same patient (``snapshot_index`` ensures it).
    Returns float32 [len(snapshots), n_columns]. Done with a difference array and one cumsum
    instead of a loop over patients.
    """
    patients = pd.Index(snapshots["person_id"].unique())
    snap_pid = patients.get_indexer(snapshots["person_id"]).astype(np.int64)
    snap_key = snap_pid * _KEY_STRIDE + _days(snapshots["date"]) + _KEY_OFFSET
    if np.any(np.diff(snap_key) < 0):
        raise ValueError("snapshots must be sorted by person_id and date")
    ev_pid = patients.get_indexer(events["person_id"]).astype(np.int64)
    if np.any(ev_pid < 0):
        raise ValueError("events of a patient without snapshots")
    ev_key = ev_pid * _KEY_STRIDE + _days(events["date"]) + _KEY_OFFSET
    start = np.searchsorted(snap_key, ev_key, side="left")
    if window_days is None:
        stop = np.searchsorted(snap_pid, ev_pid, side="right")
    else:
        stop = np.searchsorted(snap_key, ev_key + window_days, side="right")
    diff = np.zeros((len(snapshots) + 1, n_columns), dtype=np.float32)
    np.add.at(diff, (start, columns), 1.0)
    np.add.at(diff, (stop, columns), -1.0)
    return np.cumsum(diff, axis=0)[:-1]

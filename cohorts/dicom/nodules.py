"""Which annotations are the same nodule across a patient's scans.

Why a module: the examples follow one nodule (the index nodule) over time, so its id must be
stable across scans; LUNA16 annotations carry no such id, only a centre in each scan's own
world frame. Curation links them here after every series is decoded; the ids are
pseudonyms (``cohorts.privacy``), never raw identifiers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohorts.privacy import pseudonymise


def match_nodules(nodules: pd.DataFrame, tolerance_mm: float, key: bytes) -> pd.Series:
    """Nodule ids stable across a patient's scans: greedy nearest-centre matching in time."""
    ids = pd.Series("", index=nodules.index, dtype=object)
    for patient_id, group in nodules.groupby("patient_id", sort=True):
        tracks: list[np.ndarray] = []  # last known centre of each tracked nodule
        order = group.sort_values(
            ["study_date", "series_id", "annotation_index"], na_position="first"
        )
        for _, scan in order.groupby(["study_date", "series_id"], sort=False, dropna=False):
            centres = scan[["coord_x_mm", "coord_y_mm", "coord_z_mm"]].to_numpy(dtype=float)
            assigned: dict[int, int] = {}
            if tracks:
                dist = np.linalg.norm(centres[:, None, :] - np.stack(tracks)[None], axis=2)
                for flat in np.argsort(dist, axis=None):
                    i, t = np.unravel_index(flat, dist.shape)
                    if dist[i, t] > tolerance_mm:
                        break
                    if i not in assigned and t not in assigned.values():
                        assigned[int(i)] = int(t)
            for i, idx in enumerate(scan.index):
                t = assigned.get(i)
                if t is None:
                    tracks.append(centres[i])
                    t = len(tracks) - 1
                else:
                    tracks[t] = centres[i]
                ids[idx] = pseudonymise(f"{patient_id}:{t}", key, "nodule")
    return ids

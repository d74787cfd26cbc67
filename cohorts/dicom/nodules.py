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
    """Nodule ids stable across a patient's scans: greedy nearest-centre matching in time.

    Per patient, scans in (study date, series) order, missing dates first; each annotation
    takes the nearest unclaimed track whose last centre is within ``tolerance_mm``, else
    starts a new track. Rows without a patient id keep "". One sort of the whole table, then
    plain arrays: a pandas group per patient and scan cost ~4 ms each (2.6 s for the demo's
    650-patient archive).
    """
    ids = pd.Series("", index=nodules.index, dtype=object)
    frame = nodules[nodules["patient_id"].notna()]
    if frame.empty:
        return ids
    order = frame.sort_values(
        ["patient_id", "study_date", "series_id", "annotation_index"],
        na_position="first",
        kind="mergesort",
    )
    scan_keys = order[["patient_id", "study_date", "series_id"]].astype(object)
    scan_keys = scan_keys.where(scan_keys.notna(), None).to_numpy()
    patients = order["patient_id"].to_numpy()
    centres = order[["coord_x_mm", "coord_y_mm", "coord_z_mm"]].to_numpy(dtype=float)
    starts = [0] + [
        r for r in range(1, len(order)) if tuple(scan_keys[r]) != tuple(scan_keys[r - 1])
    ]
    tracks: list[np.ndarray] = []  # last known centre of each of this patient's nodules
    out = np.empty(len(order), dtype=object)
    for begin, end in zip(starts, [*starts[1:], len(order)], strict=True):
        if begin == 0 or patients[begin] != patients[begin - 1]:
            tracks = []
        scan = centres[begin:end]
        assigned: dict[int, int] = {}
        if tracks:
            dist = np.linalg.norm(scan[:, None, :] - np.stack(tracks)[None], axis=2)
            for flat in np.argsort(dist, axis=None):
                i, t = np.unravel_index(flat, dist.shape)
                if dist[i, t] > tolerance_mm:
                    break
                if i not in assigned and t not in assigned.values():
                    assigned[int(i)] = int(t)
        for i in range(end - begin):
            t = assigned.get(i)
            if t is None:
                tracks.append(scan[i])
                t = len(tracks) - 1
            else:
                tracks[t] = scan[i]
            out[begin + i] = pseudonymise(f"{patients[begin]}:{t}", key, "nodule")
    ids.loc[order.index] = out
    return ids

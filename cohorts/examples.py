"""Training examples: one row per patient joining curated nodule crops and point-in-time EHR.

The index nodule of a patient is the largest nodule on the latest scan (the dominant nodule a
radiologist would report); its crops at the patient's last ``max_timepoints`` scans are stacked
oldest first, latest last, left-padded. EHR features come as of each scan's study date (the
feature store's point-in-time join), so nothing recorded after a scan reaches it.
The arrays follow the "Training examples" contract in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cohorts.example_set import UNLABELED, ExampleSet, padded_inputs

DAYS_PER_MONTH = 30.4375


def scan_entities(nodules: pd.DataFrame) -> pd.DataFrame:
    """One row per curated scan: the entity frame for point-in-time feature retrieval (UTC)."""
    scans = nodules[["patient_id", "series_id", "study_date"]].drop_duplicates("series_id")
    scans = scans.assign(event_timestamp=pd.to_datetime(scans["study_date"], utc=True))
    return scans.reset_index(drop=True)


def index_nodule_track(nodules: pd.DataFrame) -> pd.DataFrame:
    """Rows of each patient's index nodule (largest on the latest scan), one per scan, by date."""
    frame = nodules.assign(study_date=pd.to_datetime(nodules["study_date"]))
    latest_date = frame.groupby("patient_id")["study_date"].transform("max")
    on_latest = frame[frame["study_date"] == latest_date]
    index_ids = on_latest.sort_values(["diameter_mm", "nodule_id"], ascending=[False, True])
    index_ids = index_ids.drop_duplicates("patient_id")[["patient_id", "nodule_id"]]
    track = frame.merge(index_ids, on=["patient_id", "nodule_id"])
    track = track.sort_values(["patient_id", "study_date"]).drop_duplicates(
        ["patient_id", "study_date"], keep="last"
    )
    return track.reset_index(drop=True)


def assemble_examples(
    nodules: pd.DataFrame,
    features: pd.DataFrame,
    feature_names: list[str],
    crop_root: Path,
    max_timepoints: int,
    labels: pd.DataFrame | None = None,
) -> ExampleSet:
    """Stack crops, times, EHR vectors and labels into the training-examples contract.

    ``features`` has one row per scan (``series_id``) with the columns in ``feature_names``;
    a scan whose features are all missing gets ``ehr_mask`` False and zeros. The crop spacing
    is the one curation recorded with the crops (``nodules.crop_spacing_mm``), which must be
    one value for the cohort.
    """
    track = index_nodule_track(nodules)
    if track.empty:
        raise ValueError("no curated nodules to build examples from")
    missing = [name for name in feature_names if name not in features.columns]
    if missing:
        raise ValueError(f"feature table lacks columns {missing}")
    if "crop_spacing_mm" not in track.columns:
        raise ValueError(
            "curated nodules lack crop_spacing_mm (curated by an older version: curate again)"
        )
    spacings = sorted(set(track["crop_spacing_mm"].astype(float)))
    if len(spacings) != 1:
        raise ValueError(f"curated crops were cut at several spacings {spacings} mm; curate again")
    by_series = features.drop_duplicates("series_id").set_index("series_id")[feature_names]
    label_of = (
        labels.drop_duplicates("patient_id").set_index("patient_id")["malignant"]
        if labels is not None
        else pd.Series(dtype="int64")
    )

    patients = sorted(track["patient_id"].unique())
    n, t = len(patients), max_timepoints
    first_crop = np.load(crop_root / track["crop_path"].iloc[0], allow_pickle=False)
    arrays = padded_inputs(n, t, first_crop.shape, len(feature_names))
    diameter = np.zeros((n, t), dtype=np.float32)
    label = np.full(n, UNLABELED, dtype=np.int8)

    for row, (patient, scans) in enumerate(track.groupby("patient_id", sort=True)):
        scans = scans.tail(t)
        latest = scans["study_date"].iloc[-1]
        offset = t - len(scans)
        for slot, scan in enumerate(scans.itertuples(index=False), start=offset):
            arrays["crops_hu"][row, slot] = np.load(crop_root / scan.crop_path, allow_pickle=False)
            arrays["scan_mask"][row, slot] = True
            arrays["months_before_latest"][row, slot] = (
                latest - scan.study_date
            ).days / DAYS_PER_MONTH
            diameter[row, slot] = scan.diameter_mm
            if scan.series_id in by_series.index:
                values = by_series.loc[scan.series_id].to_numpy(dtype=np.float64)
                if not np.all(np.isnan(values)):
                    arrays["ehr"][row, slot] = np.nan_to_num(values, nan=0.0)
                    arrays["ehr_mask"][row, slot] = True
        if patient in label_of.index:
            label[row] = int(label_of.loc[patient])

    return ExampleSet(
        patient_id=np.asarray(patients, dtype=str),
        ehr_feature_names=np.asarray(feature_names, dtype=str),
        diameter_mm=diameter,
        label=label,
        crop_spacing_mm=spacings[0],
        **arrays,
    )

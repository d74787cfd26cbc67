"""`lungjepa predict --annotations CSV --dicom-root DIR`: one prediction per LUNA16 row.

The batch reads like the single case (``serving.predict``: curation's checks, HU conversion
and crop; the model's verified session; the EHR rules of ``serving.features``) but shares the
work between rows: the folder's headers are scanned once, each series is decoded once and
all its rows' crops cut from it (``serving.series``, on the service's workers when it has
them), the online store is read once for all patients, and the model runs on the whole batch.
A row that cannot be predicted gets an ``error`` instead of failing the batch.

Ids in the rows are the hospital's (DICOM SeriesInstanceUID); the results carry the pseudonyms
curation writes (``cohorts.privacy``). ``predict_batch_loaded`` takes an open session and a
store opener, so ``serving.service`` can keep both open between requests.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohorts.dicom.scan import ScanResult
from cohorts.privacy import pseudonymise
from models.onnx_runtime import predict_onnx
from serving.errors import PredictionError
from serving.features import (
    EhrInput,
    StoreOpener,
    ehr_vector,
    online_rows,
    open_feature_store,
    row_features,
)
from serving.headers import FolderReader, SeriesMap, map_in_process, read_folder
from serving.model import ModelSpec, load_model
from serving.predict import CurationSettings, model_inputs
from serving.series import SeriesJob, series_crops


@dataclass(frozen=True)
class BatchRequest:
    """`lungjepa predict --annotations CSV --dicom-root DIR`: one prediction per CSV row."""

    annotations_csv: Path | None
    dicom_root: Path
    model_path: Path
    data_dir: Path
    feature_repo_dir: Path
    curation: CurationSettings
    allow_missing_ehr: bool = False
    annotations: tuple[dict[str, Any], ...] | None = None  # inline rows, instead of the CSV


ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")


def _read_annotation_rows(request: BatchRequest) -> pd.DataFrame:
    """The batch's rows, from the CSV or given inline; PredictionError names what is wrong."""
    if request.annotations is not None:
        where = "annotations"
        if not all(isinstance(row, dict) for row in request.annotations):
            raise PredictionError("annotations: expected a list of objects")
        frame = pd.DataFrame(list(request.annotations))
    else:
        where = f"--annotations {request.annotations_csv}"
        try:
            frame = pd.read_csv(request.annotations_csv, dtype={"seriesuid": str})  # type: ignore[arg-type]
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise PredictionError(f"{where}: {exc}") from exc
    missing = [c for c in ANNOTATION_COLUMNS if c not in frame.columns]
    if missing:
        raise PredictionError(f"{where} lacks columns {missing} (LUNA16 format)")
    coords = frame[["coordX", "coordY", "coordZ"]].apply(pd.to_numeric, errors="coerce")
    bad = [int(i) for i in coords.index[~np.isfinite(coords.to_numpy(float)).all(axis=1)]]
    if bad:
        raise PredictionError(f"{where}: rows {bad[:5]} have coordinates that are not numbers")
    return frame.assign(seriesuid=frame["seriesuid"].astype(str))


def predict_batch(request: BatchRequest) -> list[dict[str, Any]]:
    """One result per annotation row (LUNA16 CSV), in row order; a bad row gets ``error``.

    Headers are scanned once, each series is decoded once, the online store is read once for
    all patients, and the model runs on the whole batch.
    """
    session, spec = load_model(request.model_path)
    return predict_batch_loaded(
        request,
        session,
        spec,
        lambda: open_feature_store(request.data_dir, request.feature_repo_dir),
    )


def predict_batch_loaded(
    request: BatchRequest,
    session: Any,
    spec: ModelSpec,
    store: StoreOpener,
    read: FolderReader = read_folder,
    run: SeriesMap = map_in_process,
) -> list[dict[str, Any]]:
    """``predict_batch`` with the verified session already open, the store behind ``store``,
    the root's headers read by ``read`` and each named series decoded and cropped once by
    ``run`` (``serving.headers``: in this process, or on the service's workers)."""
    frame = _read_annotation_rows(request)
    if not Path(request.dicom_root).is_dir():
        raise PredictionError(f"DICOM folder not found: {request.dicom_root}")
    tree = read(Path(request.dicom_root))
    settings = request.curation.for_model(spec).for_tree(tree)
    key = settings.pseudonym_key
    assert key is not None  # for_tree resolves it
    points = annotation_points(frame)
    jobs = series_jobs(points, tree, settings, spec)
    outcomes = dict(zip(jobs, run(series_crops, list(jobs.values())), strict=True))
    taken: dict[str, int] = dict.fromkeys(jobs, 0)  # crops of each series handed out so far
    results: list[dict[str, Any]] = []
    ready: list[tuple[int, np.ndarray, str, dt.date]] = []
    for row, (uid, xyz) in enumerate(points):
        series_id = pseudonymise(uid, key, "series")
        results.append({"row": row, "series_id": series_id, "nodule_world_mm": list(xyz)})
        outcome = outcomes[uid]
        crop = outcome.crops[taken[uid]] if outcome.error is None else outcome.error
        taken[uid] += 1
        if isinstance(crop, str):
            results[-1]["error"] = crop
            continue
        assert outcome.scan_date is not None  # set whenever there is no error
        results[-1].update(
            {"patient_id": outcome.patient_id, "scan_date": outcome.scan_date.isoformat()}
        )
        ready.append((row, crop, outcome.patient_id, outcome.scan_date))
    if not ready:
        return results
    mismatch = spec.key_mismatch(key)
    patients = sorted({patient for _, _, patient, _ in ready})
    online = {p: {} for p in patients} if mismatch else online_rows(store(), patients)
    batch: list[tuple[np.ndarray, ...]] = []
    rows: list[int] = []
    for row, crop, patient, scan_date in ready:
        raw = row_features(online[patient])
        ehr: EhrInput | None = None
        if raw is not None:
            ehr = ehr_vector(raw, spec.ehr_feature_names, scan_date, "feast_online")
        if ehr is None:
            if not request.allow_missing_ehr:
                why = mismatch or "no EHR features"
                results[row]["error"] = f"unknown patient {patient} (pseudonym): {why}"
                continue
            ehr = EhrInput({n: 0.0 for n in spec.ehr_feature_names}, False, "none")
            ehr.warnings.append("no EHR features: predicted with ehr_mask False (imaging only)")
        results[row].update({"ehr_mask": ehr.available, "warnings": ehr.warnings})
        batch.append(model_inputs(crop, ehr, spec))
        rows.append(row)
    if batch:
        probabilities = batch_probabilities(session, batch)
        for row, p in zip(rows, probabilities, strict=True):
            results[row]["probability"] = float(p)
            results[row]["model"] = {"name": spec.name, "version": spec.version}
    return results


def annotation_points(frame: pd.DataFrame) -> list[tuple[str, tuple[float, float, float]]]:
    """Each LUNA16 row's (SeriesInstanceUID, world point in mm), in row order."""
    coords = frame[["coordX", "coordY", "coordZ"]].itertuples(index=False)
    return [
        (str(uid), (float(x), float(y), float(z)))
        for uid, (x, y, z) in zip(frame["seriesuid"], coords, strict=True)
    ]


def series_jobs(
    points: list[tuple[str, tuple[float, float, float]]],
    tree: ScanResult,
    settings: CurationSettings,
    spec: ModelSpec,
) -> dict[str, SeriesJob]:
    """One ``SeriesJob`` per series the rows name (by SeriesInstanceUID, in first-named order),
    its rows' points in row order: each series is decoded once however many rows name it.

    ``points``: ``annotation_points`` of the rows; ``settings`` with the key resolved.
    """
    assert settings.pseudonym_key is not None  # CurationSettings.for_tree resolves it
    asked: dict[str, list[tuple[float, float, float]]] = {}
    for uid, xyz in points:
        asked.setdefault(uid, []).append(xyz)
    return {
        uid: SeriesJob(
            headers=tuple(tree.series.get(uid, ())),
            nodules_xyz_mm=tuple(xyzs),
            min_slices=settings.min_slices,
            pseudonym_key=settings.pseudonym_key,
            date_shift_max_days=settings.date_shift_max_days,
            crop_size_vox=spec.crop_shape_zyx[0],
            crop_spacing_mm=spec.crop_spacing_mm,
        )
        for uid, xyzs in asked.items()
    }


def batch_probabilities(session: Any, rows: list[tuple[np.ndarray, ...]]) -> np.ndarray:
    """One model run over the rows' inputs (each ``serving.predict.model_inputs``, batch 1),
    stacked along the batch axis: (n_rows,) probabilities."""
    stacked = tuple(np.concatenate(parts) for parts in zip(*rows, strict=True))
    return predict_onnx(session, stacked)

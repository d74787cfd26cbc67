"""The curated cohort's files: table schemas, atomic writers, and what a previous run left.

Why a module: curation (``cohorts.dicom.curate``) and its pool workers (``cohorts.dicom.decode``)
write these files, and a rerun reads them back to reuse every unchanged series; the schemas fix
the column types so an empty or all-quarantined cohort reads back with the same types.
The columns are documented in docs/ARCHITECTURE.md, "Curated cohort".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cohorts.files import atomic_output

_STR, _F64, _I64 = pa.string(), pa.float64(), pa.int64()
INDEX_SCHEMA = pa.schema(
    [
        ("patient_id", _STR), ("series_id", _STR), ("study_id", _STR), ("study_date", _STR),
        ("modality", _STR), ("n_slices", _I64),
        ("spacing_mm_z", _F64), ("spacing_mm_y", _F64), ("spacing_mm_x", _F64),
        ("shape_z", _I64), ("shape_y", _I64), ("shape_x", _I64),
        ("status", _STR), ("reason", _STR), ("volume_path", _STR),
        ("slice_thickness_mm", _F64),
        ("origin_mm_x", _F64), ("origin_mm_y", _F64), ("origin_mm_z", _F64),
        ("direction", pa.list_(_F64)),  # 3x3 row-major, columns = voxel x, y, z axes (LPS)
        ("fingerprint", _STR),
        ("orientation_max_offdiag", _F64),  # max |off-diagonal| of direction; null: quarantined
        ("lung_hu_median", _F64), ("lung_fraction", _F64),  # see lung_statistics; null: no volume
    ]
)  # fmt: skip
QUARANTINE_SCHEMA = pa.schema([("file", _STR), ("reason", _STR), ("series_id", _STR)])
NODULE_SCHEMA = pa.schema(
    [
        ("patient_id", _STR), ("series_id", _STR), ("study_date", _STR), ("nodule_id", _STR),
        ("coord_x_mm", _F64), ("coord_y_mm", _F64), ("coord_z_mm", _F64), ("diameter_mm", _F64),
        ("crop_path", _STR), ("annotation_index", _I64),
        ("crop_spacing_mm", _F64),  # the crop's isotropic voxel size: travels with the crop
    ]
)  # fmt: skip
LABEL_SCHEMA = pa.schema(
    [("patient_id", _STR), ("series_id", _STR), ("malignant", pa.int8()), ("diagnosis_date", _STR)]
)
INDEX_COLUMNS = INDEX_SCHEMA.names
QUARANTINE_COLUMNS = QUARANTINE_SCHEMA.names
NODULE_COLUMNS = NODULE_SCHEMA.names
LABEL_COLUMNS = LABEL_SCHEMA.names


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    except OSError as exc:  # numpy's short-write message names neither file nor cause
        raise OSError(exc.errno, f"could not write {path} (disk full?): {exc}") from exc


def save_parquet_atomic(path: Path, frame: pd.DataFrame, schema: pa.Schema) -> None:
    """Parquet with a fixed schema, so an empty or all-quarantined cohort has the same types."""
    frame = frame.reindex(columns=schema.names).astype(object)
    frame = frame.where(frame.notna(), None)
    table = pa.Table.from_pandas(
        frame, schema=schema, preserve_index=False
    ).replace_schema_metadata()
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def read_previous(out_dir: Path) -> tuple[dict[str, dict[str, Any]], pd.DataFrame, pd.DataFrame]:
    """Previous index rows by series_id, previous nodules and quarantine (empty if none)."""
    index_path, nodules_path, quarantine_path = (
        out_dir / "index.parquet",
        out_dir / "nodules.parquet",
        out_dir / "quarantine.parquet",
    )
    index = pd.read_parquet(index_path) if index_path.exists() else pd.DataFrame()
    nodules = pd.read_parquet(nodules_path) if nodules_path.exists() else pd.DataFrame()
    quarantine = pd.read_parquet(quarantine_path) if quarantine_path.exists() else pd.DataFrame()
    if "fingerprint" not in index.columns:
        return {}, pd.DataFrame(columns=NODULE_COLUMNS), pd.DataFrame(columns=QUARANTINE_COLUMNS)
    return {r["series_id"]: r for r in index.to_dict("records")}, nodules, quarantine


def reuse_outcome(
    prev: dict[str, Any],
    series_id: str,
    out_dir: Path,
    prev_nodules: pd.DataFrame,
    prev_quarantine: pd.DataFrame,
) -> tuple[bool, list[dict[str, Any]], list[dict[str, Any]]] | None:
    """Previous outcome of an unchanged series, or None when its files are gone."""
    old_quarantine = (
        prev_quarantine[prev_quarantine["series_id"] == series_id].to_dict("records")
        if len(prev_quarantine)
        else []
    )
    if prev["status"] == "ok":
        old = (
            prev_nodules[prev_nodules["series_id"] == series_id]
            if len(prev_nodules)
            else prev_nodules
        )
        paths = [out_dir / str(prev["volume_path"])] + [
            out_dir / p for p in old.get("crop_path", [])
        ]
        if not all(p.exists() for p in paths):
            return None
        keep = ["series_id", "coord_x_mm", "coord_y_mm", "coord_z_mm", "diameter_mm", "crop_path",
                "annotation_index", "crop_spacing_mm"]  # fmt: skip
        records = old[keep].to_dict("records") if len(old) else []
        for record in records:
            record["annotation_index"] = int(record["annotation_index"])
        return True, records, old_quarantine
    reason = str(prev["reason"])
    if not reason or reason.startswith("not_selected"):
        return None  # never decoded: decode now
    return False, [], old_quarantine


def remove_stale(out_dir: Path, index: pd.DataFrame, nodules: pd.DataFrame) -> None:
    """Delete volumes and crops that no current row points to (a series dropped or changed)."""
    keep = set(index["volume_path"].dropna()) | set(nodules["crop_path"].dropna())
    for sub in ("volumes", "crops"):
        folder = out_dir / sub
        if folder.is_dir():
            for path in folder.glob("*.npy"):
                if f"{sub}/{path.name}" not in keep:
                    path.unlink(missing_ok=True)

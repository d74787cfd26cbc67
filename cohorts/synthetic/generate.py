"""Generate the raw archive: per-patient DICOM + EHR in a process pool, one atomic dir per cohort.

Steps per cohort: draw every patient's latents (causal.py) with a cohort-seeded generator,
generate each patient in a worker (phantom scans -> DICOM files, EHR events, truth rows) with
a patient-seeded generator, then write the CSVs in patient order and rename the temp dir
into place. Nothing reads the clock, so the same config gives byte-identical files.

Size: about 420 lines because ``generate_patient`` draws one patient's whole record (scans,
nodules, EHR, truth) in one seeded order; splitting it would spread one random stream over
modules and make byte-identical output harder to keep.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cohorts.privacy import write_synthetic_marker
from cohorts.synthetic.causal import diameter_at, sample_cohort_latents
from cohorts.synthetic.config import COHORTS, SynthConfig
from cohorts.synthetic.dicom_writer import (
    CTSeriesWriter,
    StudyInfo,
    localizer_dataset,
    secondary_capture_dataset,
    stable_uid,
    write_dicom_file,
)
from cohorts.synthetic.ehr import EHR_TABLES, patient_events
from cohorts.synthetic.phantom import (
    Anatomy,
    Nodule,
    ScanGeometry,
    nodule_position_candidates,
    render_scan,
    to_stored_values,
)

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
LABEL_COLUMNS = ("person_id", "seriesuid", "malignant", "diagnosis_date")
TRUTH_NODULE_COLUMNS = (
    "person_id",
    "study_uid",
    "seriesuid",
    "study_date",
    "scan_index",
    "nodule_id",
    "is_index",
    "nodule_type",
    "diameter_mm",
    "coordX",
    "coordY",
    "coordZ",
    "spiculation",
    "lobulation",
    "vdt_days",
    "upper_lobe",
    "malignant",
)
TRUTH_SERIES_COLUMNS = (
    "person_id",
    "study_uid",
    "seriesuid",
    "study_date",
    "scan_index",
    "kind",
    "modality",
    "n_files",
    "missing_slice_index",
)
FIRST_NAMES = (
    "JANE",
    "JOHN",
    "MARY",
    "ROBERT",
    "LINDA",
    "JAMES",
    "SUSAN",
    "DAVID",
    "KAREN",
    "PAUL",
)
LAST_NAMES = ("SMITH", "JOHNSON", "BROWN", "GARCIA", "MILLER", "DAVIS", "WILSON", "MOORE", "CLARK")


def _dicom_date(day: np.datetime64) -> str:
    return str(np.datetime64(day, "D")).replace("-", "")


def _place_nodules(
    rng: np.random.Generator,
    anatomy: Anatomy,
    row: dict[str, Any],
    z_half_mm: float,
    config: SynthConfig,
) -> list[tuple[float, float, float, float]]:
    """Index + incidental nodule centres (x, y, z mm) and max diameters, all inside a lung."""
    placed: list[tuple[float, float, float, float]] = []
    d_index = float(row["diameter_last_mm"])
    clearance = d_index / 2.0 * (1.0 + row["lobulation"]) + 3.0
    z_range = (-0.6 * z_half_mm, 0.6 * z_half_mm)
    cand = nodule_position_candidates(anatomy, clearance, z_range)
    while len(cand) == 0 and clearance > 1.0:
        clearance *= 0.7
        cand = nodule_position_candidates(anatomy, clearance, z_range)
    if len(cand) == 0:
        raise RuntimeError("phantom lungs too small for any nodule; raise image_size_px")
    x, y, z = cand[int(rng.integers(len(cand)))]
    placed.append((float(x), float(y), float(z), d_index))
    small = nodule_position_candidates(anatomy, 4.0, z_range)
    for _ in range(int(rng.integers(0, config.max_incidental + 1))):
        far = small[np.linalg.norm(small - np.array([x, y, z]), axis=1) > d_index / 2.0 + 10.0]
        if len(far) == 0:
            break
        px, py, pz = far[int(rng.integers(len(far)))]
        placed.append((float(px), float(py), float(pz), round(float(rng.uniform(3.0, 4.5)), 2)))
    return placed


def generate_patient(task: dict[str, Any]) -> dict[str, Any]:
    """Everything of one patient: writes its DICOM files, returns its CSV rows and counts."""
    config: SynthConfig = task["config"]
    cohort, pidx, row = task["cohort"], task["patient_index"], task["row"]
    cohort_idx = COHORTS.index(cohort)
    rng = np.random.default_rng([config.seed, cohort_idx, 1, pidx])
    site = config.site(cohort)
    dicom_root = Path(task["cohort_dir"]) / "dicom"
    person_id = task["person_id"]
    uid = (config.seed, cohort, pidx)

    first = np.datetime64(row["first_scan_date"], "D")
    offsets = [int(row[f"scan_offset_days_{t}"]) for t in range(config.max_scans)]
    offsets = [o for o in offsets if o >= 0]
    scan_dates = [first + np.timedelta64(o, "D") for o in offsets]
    diagnosis_date = first + np.timedelta64(int(row["diagnosis_offset_days"]), "D")
    birth = first - np.timedelta64(int(row["age_years"] * 365.25) + int(rng.integers(0, 60)), "D")
    sex = str(row["sex"])
    patient_name = f"{LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]}^{FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]}"

    ref = config.site("internal")
    ext = config.site("external")
    z_half_mm = min(ref.n_slices * ref.slice_spacing_mm, ext.n_slices * ext.slice_spacing_mm) / 2.0
    anatomy = Anatomy(
        width_mm=config.image_size_px * config.pixel_spacing_mm,
        height_mm=2.0 * z_half_mm,
        scale=float(rng.uniform(0.9, 1.03)),
        texture_seed=int(rng.integers(2**31)),
        emphysema_fraction=float(row["emphysema_fraction"]),
    )
    placed = _place_nodules(rng, anatomy, row, z_half_mm, config)
    shape_seeds = [int(rng.integers(2**31)) for _ in placed]

    files: list[Callable[[Path], None]] = []
    annotations, nodules_truth, series_truth, labels = [], [], [], []
    for t, (offset, day) in enumerate(zip(offsets, scan_dates, strict=True)):
        days_before_last = offsets[-1] - offset
        shift = (
            float(rng.normal(0.0, 2.0)),
            float(rng.normal(0.0, 2.0)),
            float(rng.uniform(-site.slice_spacing_mm, site.slice_spacing_mm)),
        )
        geometry = ScanGeometry(
            config.image_size_px, site.n_slices, site.pixel_spacing_mm, site.slice_spacing_mm, shift
        )
        nodules = []
        for n_idx, (x, y, z, d_last) in enumerate(placed):
            is_index = n_idx == 0
            diameter = (
                diameter_at(d_last, float(row["vdt_days"]), days_before_last)
                if is_index
                else d_last
            )
            nodules.append(
                Nodule(
                    center_mm=(x, y, z),
                    diameter_mm=round(diameter, 2),
                    nodule_type=str(row["nodule_type"]) if is_index else "solid",
                    spiculation=float(row["spiculation"]) if is_index else 0.0,
                    lobulation=float(row["lobulation"]) if is_index else 0.03,
                    shape_seed=shape_seeds[n_idx],
                )
            )
        volume_hu = render_scan(
            anatomy, nodules, geometry, site, noise_seed=int(rng.integers(2**31))
        )
        info = StudyInfo(
            patient_id=person_id,
            patient_name=patient_name,
            birth_date=_dicom_date(birth),
            sex=sex,
            age_years=int((day - birth) / np.timedelta64(1, "D") // 365.25),
            study_uid=stable_uid(*uid, t, "study"),
            frame_of_reference_uid=stable_uid(*uid, t, "for"),
            study_date=_dicom_date(day),
            study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(60)):02d}{int(rng.integers(60)):02d}",
            accession_number=f"A{int(rng.integers(10**7, 10**8))}",
            study_id=str(t + 1),
        )
        series_uid = stable_uid(*uid, t, "series")
        writer = CTSeriesWriter(
            to_stored_values(volume_hu), geometry, site, info, series_uid, 2, (*uid, t)
        )
        slices = list(range(site.n_slices))
        missing = -1
        if rng.random() < config.missing_slice_rate:
            missing = int(rng.integers(2, len(slices) - 2))
            slices.pop(missing)
        series_truth.append(
            (
                person_id,
                info.study_uid,
                series_uid,
                str(day),
                t,
                "diagnostic",
                "CT",
                len(slices),
                missing,
            )
        )
        files += [partial(writer.write_slice, k) for k in slices]
        if rng.random() < config.localizer_rate:
            loc_uid = stable_uid(*uid, t, "localizer")
            files.append(
                partial(
                    write_dicom_file,
                    localizer_dataset(volume_hu, geometry, site, info, loc_uid, (*uid, t)),
                )
            )
            series_truth.append(
                (person_id, info.study_uid, loc_uid, str(day), t, "localizer", "CT", 1, -1)
            )
        if rng.random() < config.non_ct_rate:
            sc_uid = stable_uid(*uid, t, "sc")
            files.append(
                partial(write_dicom_file, secondary_capture_dataset(site, info, sc_uid, (*uid, t)))
            )
            series_truth.append(
                (person_id, info.study_uid, sc_uid, str(day), t, "secondary_capture", "OT", 1, -1)
            )

        for n_idx, nodule in enumerate(nodules):
            world = tuple(round(c + s, 3) for c, s in zip(nodule.center_mm, shift, strict=True))
            annotations.append((series_uid, *world, nodule.diameter_mm))
            nodules_truth.append(
                (
                    person_id,
                    info.study_uid,
                    series_uid,
                    str(day),
                    t,
                    f"{person_id}-N{n_idx}",
                    int(n_idx == 0),
                    nodule.nodule_type,
                    nodule.diameter_mm,
                    *world,
                    nodule.spiculation,
                    nodule.lobulation,
                    float(row["vdt_days"]) if n_idx == 0 else 0.0,
                    int(nodule.center_mm[2] > -0.05 * anatomy.height_mm),
                    int(row["malignant"]) if n_idx == 0 else 0,
                )
            )
        if t == len(offsets) - 1:
            labels.append((person_id, series_uid, int(row["malignant"]), str(diagnosis_date)))

    # shuffled write order, meaningless names, arbitrary sub-folders, some without extension
    folders = [f"{int(rng.integers(16**4)):04x}" for _ in range(3)]
    for i in rng.permutation(len(files)):
        depth = [folders[int(rng.integers(len(folders)))]]
        if rng.random() < 0.5:
            depth.append(f"S{int(rng.integers(10**6)):06d}")
        name = f"{int(rng.integers(16**12)):012x}" + (".dcm" if rng.random() < 0.5 else "")
        files[i](dicom_root.joinpath(*depth, name))

    ehr = patient_events(
        pd.Series(row), person_id, birth, scan_dates, diagnosis_date, site.site_id, rng
    )
    truth_patient = {
        "person_id": person_id,
        "cohort": cohort,
        "site_id": site.site_id,
        "regime": config.regime,
        **{k: row[k] for k in row if not k.startswith("scan_offset") and k != "first_scan_date"},
        "birth_date": str(birth),
        "first_scan_date": str(scan_dates[0]),
        "last_scan_date": str(scan_dates[-1]),
        "diagnosis_date": str(diagnosis_date),
        "upper_lobe": int(placed[0][2] > -0.05 * anatomy.height_mm),
        "n_incidental": len(placed) - 1,
    }
    return {
        "annotations": annotations,
        "labels": labels,
        "nodules": nodules_truth,
        "series": series_truth,
        "patient": truth_patient,
        "ehr": ehr,
        "n_files": len(files),
        "n_scans": len(offsets),
    }


def _cohort_tasks(
    config: SynthConfig, cohort: str, cohort_dir: Path, person_ids: list[str]
) -> list[dict[str, Any]]:
    rng = np.random.default_rng([config.seed, COHORTS.index(cohort), 0])
    latents = sample_cohort_latents(rng, config.n_patients(cohort), config, cohort)
    latents["first_scan_date"] = latents["first_scan_date"].astype(str)
    return [
        {
            "config": config,
            "cohort": cohort,
            "patient_index": i,
            "row": rec,
            "cohort_dir": str(cohort_dir),
            "person_id": person_ids[i],
        }
        for i, rec in enumerate(latents.to_dict(orient="records"))
    ]


def _write_csv(rows: list[tuple] | list[dict], columns: tuple[str, ...] | None, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows) if columns is None else pd.DataFrame(rows, columns=list(columns))
    frame.to_csv(path, index=False, lineterminator="\n")


def _write_cohort_tables(cohort_dir: Path, cohort: str, results: list[dict[str, Any]]) -> None:
    _write_csv(
        [a for r in results for a in r["annotations"]],
        ANNOTATION_COLUMNS,
        cohort_dir / "annotations.csv",
    )
    if cohort != "archive":
        _write_csv(
            [x for r in results for x in r["labels"]], LABEL_COLUMNS, cohort_dir / "labels.csv"
        )
    for table, columns in EHR_TABLES.items():
        _write_csv(
            [x for r in results for x in r["ehr"][table]],
            columns,
            cohort_dir / "ehr" / f"{table}.csv",
        )
    _write_csv([r["patient"] for r in results], None, cohort_dir / "truth" / "patients.csv")
    _write_csv(
        [x for r in results for x in r["nodules"]],
        TRUTH_NODULE_COLUMNS,
        cohort_dir / "truth" / "nodules.csv",
    )
    _write_csv(
        [x for r in results for x in r["series"]],
        TRUTH_SERIES_COLUMNS,
        cohort_dir / "truth" / "series.csv",
    )


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temp dir into place (rename is atomic within one file system)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def generate_archive(out_dir: Path, config: SynthConfig, progress: bool = True) -> dict:
    """Write out_dir/<cohort>/ for archive, internal, external; return a JSON-able summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_total = sum(config.n_patients(c) for c in COHORTS)
    mrn_numbers = np.random.default_rng([config.seed, 99]).choice(9_000_000, n_total, replace=False)
    mrns = [f"MRN{1_000_000 + int(n):07d}" for n in mrn_numbers]
    summary: dict[str, Any] = {"config": asdict(config), "cohorts": {}}
    bar = tqdm(total=n_total, desc="synthesising patients", disable=not progress)
    pool = multiprocessing.get_context("spawn").Pool(config.workers) if config.workers > 1 else None
    try:
        start = 0
        for cohort in COHORTS:
            n = config.n_patients(cohort)
            tmp = out_dir / f".{cohort}.tmp-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "dicom").mkdir(parents=True)
            tasks = _cohort_tasks(config, cohort, tmp, mrns[start : start + n])
            start += n
            results = []
            stream = pool.imap(generate_patient, tasks) if pool else map(generate_patient, tasks)
            for result in stream:
                results.append(result)
                bar.update(1)
            _write_cohort_tables(tmp, cohort, results)
            write_synthetic_marker(
                tmp, f"cohorts.synthetic preset={config.preset} seed={config.seed}"
            )
            _replace_dir(tmp, out_dir / cohort)
            malignant = [r["patient"]["malignant"] for r in results]
            summary["cohorts"][cohort] = {
                "patients": n,
                "scans": sum(r["n_scans"] for r in results),
                "files": sum(r["n_files"] for r in results),
                "prevalence": round(float(np.mean(malignant)), 4),
                "labeled": cohort != "archive",
            }
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return summary


__all__ = ["generate_archive", "generate_patient"]

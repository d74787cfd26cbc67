"""The synthetic environment: valid DICOM, consistent EHR, reproducibility, causal structure."""

from __future__ import annotations

import hashlib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from system_tools import require_tool

from cohorts.synthetic import SynthConfig, generate_archive, preset_config
from cohorts.synthetic.causal import lidc_size_logit, sample_cohort_latents
from cohorts.synthetic.config import COHORTS
from cohorts.synthetic.ehr import EHR_TABLES, VOCABULARY, patient_events

TINY_SEED = 3


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "raw"
    summary = generate_archive(out, preset_config("tiny", seed=TINY_SEED), progress=False)
    return out, summary


def _dicom_files(cohort_dir: Path) -> list[Path]:
    return sorted(p for p in (cohort_dir / "dicom").rglob("*") if p.is_file())


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_summary(tiny_archive: tuple[Path, dict]) -> None:
    out, summary = tiny_archive
    for cohort in COHORTS:
        d = out / cohort
        assert (d / "annotations.csv").is_file()
        for table in EHR_TABLES:
            assert (d / "ehr" / f"{table}.csv").is_file()
        assert (d / "truth" / "patients.csv").is_file() and (d / "truth" / "nodules.csv").is_file()
        assert (d / "labels.csv").is_file() == (cohort != "archive")
        info = summary["cohorts"][cohort]
        assert info["patients"] == preset_config("tiny").n_patients(cohort)
        assert info["files"] == len(_dicom_files(d))
    assert not list(out.glob(".*"))  # no temp dirs left behind
    sops = [
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        for c in COHORTS
        for p in _dicom_files(out / c)
    ]
    assert len(sops) == len(set(sops))
    ann = pd.read_csv(out / "internal" / "annotations.csv")
    assert list(ann.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    labels = pd.read_csv(out / "internal" / "labels.csv")
    assert list(labels.columns) == ["person_id", "seriesuid", "malignant", "diagnosis_date"]
    assert set(labels["malignant"]) <= {0, 1}
    for table, columns in EHR_TABLES.items():
        assert list(pd.read_csv(out / "external" / "ehr" / f"{table}.csv").columns) == list(columns)


def _dciodvfy_errors(exe: str, path: Path) -> list[str]:
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    return [f"{path}: {ln}" for ln in (result.stdout + result.stderr).splitlines() if "Error" in ln]


def test_every_dicom_file_passes_dciodvfy(tiny_archive: tuple[Path, dict]) -> None:
    out, _ = tiny_archive
    exe = require_tool("dciodvfy")
    paths = [p for cohort in COHORTS for p in _dicom_files(out / cohort)]
    assert len(paths) > 100
    with ThreadPoolExecutor(max_workers=4) as pool:
        errors = [e for errs in pool.map(lambda p: _dciodvfy_errors(exe, p), paths) for e in errs]
    assert not errors, errors[:10]


def _read_series(cohort_dir: Path) -> dict[str, list[pydicom.Dataset]]:
    series: dict[str, list[pydicom.Dataset]] = {}
    for path in _dicom_files(cohort_dir):
        ds = pydicom.dcmread(path)
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    return series


def test_annotations_inside_series_geometry(tiny_archive: tuple[Path, dict]) -> None:
    out, _ = tiny_archive
    for cohort in COHORTS:
        series = _read_series(out / cohort)
        ann = pd.read_csv(out / cohort / "annotations.csv")
        assert len(ann) > 0
        for row in ann.itertuples():
            slices = series[row.seriesuid]
            assert all(s.Modality == "CT" and "LOCALIZER" not in s.ImageType for s in slices)
            ds = slices[0]
            x0, y0, _ = (float(v) for v in ds.ImagePositionPatient)
            dy, dx = (float(v) for v in ds.PixelSpacing)
            zs = [float(s.ImagePositionPatient[2]) for s in slices]
            col, r = (row.coordX - x0) / dx, (row.coordY - y0) / dy
            assert 0 <= col < ds.Columns and 0 <= r < ds.Rows
            assert min(zs) <= row.coordZ <= max(zs)
            hu = slices[0].pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(
                ds.RescaleIntercept
            )
            assert hu.min() >= -1100 and hu.max() <= 3071


def test_nodules_visible_in_lung(tiny_archive: tuple[Path, dict]) -> None:
    """The index nodule voxel is denser than lung; its surroundings are lung, not body wall."""
    out, _ = tiny_archive
    truth = pd.read_csv(out / "internal" / "truth" / "nodules.csv")
    series = _read_series(out / "internal")
    big = truth[
        (truth["is_index"] == 1)
        & (truth["diameter_mm"] >= 8)
        & (truth["nodule_type"] != "ground-glass")
    ]
    for row in big.itertuples():
        slices = sorted(series[row.seriesuid], key=lambda s: -float(s.ImagePositionPatient[2]))
        zs = np.array([float(s.ImagePositionPatient[2]) for s in slices])
        ds = slices[int(np.argmin(np.abs(zs - row.coordZ)))]
        hu = ds.pixel_array.astype(np.float32) + float(ds.RescaleIntercept)
        x0, y0, _ = (float(v) for v in ds.ImagePositionPatient)
        sp = float(ds.PixelSpacing[0])
        c, r = round((row.coordX - x0) / sp), round((row.coordY - y0) / sp)
        assert hu[r, c] > -600, (row.nodule_id, hu[r, c])


def test_ehr_matches_dicom(tiny_archive: tuple[Path, dict]) -> None:
    out, _ = tiny_archive
    for cohort in COHORTS:
        person = pd.read_csv(out / cohort / "ehr" / "person.csv", dtype=str)
        visits = pd.read_csv(out / cohort / "ehr" / "visit_occurrence.csv", dtype=str)
        conditions = pd.read_csv(out / cohort / "ehr" / "condition_occurrence.csv", dtype=str)
        timeline = set(zip(visits["person_id"], visits["visit_start_date"], strict=True))
        ids = set(person["person_id"])
        for path in _dicom_files(out / cohort)[::7]:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.PatientID in ids
            iso = f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}"
            assert (ds.PatientID, iso) in timeline
            assert ds.SeriesDate == ds.StudyDate
            birth = person.loc[person["person_id"] == ds.PatientID, "birth_datetime"].iloc[0]
            assert ds.PatientBirthDate == birth[:10].replace("-", "")
        # events exist before and after the first scan (leakage is possible downstream)
        first = visits.groupby("person_id")["visit_start_date"].min()
        assert (conditions["condition_start_date"] > first.max()).any()


def _ehr_sample(cohort: str, n: int = 400) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """EHR tables for many patients straight from the causal draw (no DICOM)."""
    config = preset_config("demo", regime=0.5)
    latents = sample_cohort_latents(np.random.default_rng(11), n, config, cohort)
    site_id = config.site(cohort).site_id
    rows: dict[str, list[tuple]] = {t: [] for t in EHR_TABLES}
    for i, rec in latents.iterrows():
        first = np.datetime64(rec["first_scan_date"], "D")
        scans = [first + np.timedelta64(int(rec["scan_offset_days_0"]), "D")]
        diagnosis = first + np.timedelta64(int(rec["diagnosis_offset_days"]), "D")
        birth = first - np.timedelta64(int(rec["age_years"] * 365.25), "D")
        events = patient_events(
            rec, f"P{i}", birth, scans, diagnosis, site_id, np.random.default_rng(i)
        )
        for table, table_rows in events.items():
            rows[table] += table_rows
    return latents, {t: pd.DataFrame(r, columns=list(EHR_TABLES[t])) for t, r in rows.items()}


def _code_count(tables: dict[str, pd.DataFrame], codes: tuple[str, ...], n: int) -> np.ndarray:
    cond = tables["condition_occurrence"]
    hits = cond[cond["condition_source_value"].str.startswith(codes)]
    counts = hits["person_id"].value_counts()
    return np.array([counts.get(f"P{i}", 0) for i in range(n)], dtype=float)


def test_ehr_codes_follow_latents() -> None:
    assert 100 <= len({c.code for c in VOCABULARY}) <= 300
    latents, tables = _ehr_sample("internal")
    observed = set(tables["condition_occurrence"]["condition_source_value"]) | set(
        tables["observation"]["observation_source_value"]
    )
    for code in ("F17.210", "Z87.891", "401201003", "Z80.1", "R91.1"):
        assert code in observed
    assert any(c.startswith("J43") for c in observed) and any(c.startswith("J44") for c in observed)
    assert any(c.startswith("Z85") for c in observed)
    n = len(latents)
    lung = _code_count(tables, ("J44", "J43", "R05", "R06"), n)
    onco = _code_count(tables, ("Z85", "R63.4", "Z92"), n)
    assert np.corrcoef(lung, latents["shared_damage"])[0, 1] > 0.3
    assert np.corrcoef(onco, latents["ehr_history"])[0, 1] > 0.3
    assert abs(np.corrcoef(onco, latents["imaging_aggr"])[0, 1]) < 0.15
    pack = tables["observation"].query("observation_source_value == '401201003'")
    assert (pack["value_as_number"] > 0).all()


def test_undocumented_smokers_have_no_smoking_codes() -> None:
    latents, tables = _ehr_sample("internal")
    documented = latents["smoking_documented"].to_numpy().astype(bool)
    assert 0.6 < documented.mean() < 0.8  # smoking_documented_rate 0.7
    smoking = ("F17.210", "Z87.891", "72166-2", "401201003")
    rows = pd.concat(
        [
            tables["condition_occurrence"].rename(columns={"condition_source_value": "code"})[
                ["person_id", "code"]
            ],
            tables["observation"].rename(columns={"observation_source_value": "code"})[
                ["person_id", "code"]
            ],
        ]
    )
    coded = set(rows.loc[rows["code"].isin(smoking), "person_id"])
    undocumented = {f"P{i}" for i in np.flatnonzero(~documented)}
    assert undocumented and not coded & undocumented
    smokers = {f"P{i}" for i in np.flatnonzero(documented & (latents["ever_smoker"] == 1))}
    assert len(coded & smokers) > 0.8 * len(smokers)  # documented smokers are coded


def test_undocumented_lung_damage_leaves_no_lung_codes_and_no_spirometry() -> None:
    latents, tables = _ehr_sample("internal")
    documented = latents["lung_damage_documented"].to_numpy().astype(bool)
    assert 0.3 < documented.mean() < 0.5  # lung_damage_documented_rate 0.4
    lung = tables["condition_occurrence"]["condition_source_value"].str.match(r"J4[34]")
    spirometry = tables["measurement"]["measurement_source_value"].isin(["20150-9", "19926-5"])
    undocumented = {f"P{i}" for i in np.flatnonzero(~documented)}
    assert undocumented
    assert not set(tables["condition_occurrence"].loc[lung, "person_id"]) & undocumented
    assert not set(tables["measurement"].loc[spirometry, "person_id"]) & undocumented
    # their respiratory codes per visit no longer follow the damage (sicker patients still
    # visit more often, docs/SYNTHETIC.md); the documented patients' still do
    n = len(latents)
    visits = tables["visit_occurrence"]["person_id"].value_counts()
    per_visit = _code_count(tables, ("R05", "R06", "J20", "J18"), n) / np.array(
        [visits[f"P{i}"] for i in range(n)]
    )
    s = latents["shared_damage"].to_numpy()
    assert abs(np.corrcoef(per_visit[~documented], s[~documented])[0, 1]) < 0.25
    assert np.corrcoef(per_visit[documented], s[documented])[0, 1] > 0.5


def test_external_coding_practice() -> None:
    _, tables = _ehr_sample("external", n=200)
    conditions = set(tables["condition_occurrence"]["condition_source_value"])
    assert not any(c.startswith("J43") for c in conditions)
    assert "2039-6" not in set(tables["measurement"]["measurement_source_value"])
    assert set(tables["person"]["care_site_id"]) == {2}


def test_mess_is_present_at_high_rates(tmp_path: Path) -> None:
    config = preset_config(
        "tiny",
        seed=1,
        n_archive=2,
        n_internal=3,
        n_external=1,
        workers=1,
        localizer_rate=1.0,
        missing_slice_rate=1.0,
        non_ct_rate=1.0,
    )
    generate_archive(tmp_path, config, progress=False)
    series = pd.read_csv(tmp_path / "internal" / "truth" / "series.csv")
    assert {"diagnostic", "localizer", "secondary_capture"} <= set(series["kind"])
    diag = series[series["kind"] == "diagnostic"]
    assert (diag["missing_slice_index"] >= 0).all()
    assert (diag["n_files"] == config.n_slices - 1).all()
    modalities = {
        pydicom.dcmread(p, stop_before_pixels=True).Modality
        for p in _dicom_files(tmp_path / "internal")
    }
    assert modalities == {"CT", "OT"}


def test_reproducible(tiny_archive: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = tiny_archive
    a = tmp_path / "a"
    generate_archive(a, preset_config("tiny", seed=TINY_SEED, workers=1), progress=False)
    ha = _hashes(a)
    assert ha == _hashes(out)  # byte-identical, whatever the number of workers (fixture: 2)
    small = dict(n_archive=2, n_internal=2, n_external=2, workers=1)
    c = tmp_path / "c"
    generate_archive(c, preset_config("tiny", seed=TINY_SEED + 1, **small), progress=False)
    hc = _hashes(c)
    assert set(ha.values()).isdisjoint(hc.values())  # another seed changes every file
    # regenerating into the same directory replaces each cohort atomically, same bytes
    generate_archive(c, preset_config("tiny", seed=TINY_SEED + 1, **small), progress=False)
    assert _hashes(c) == hc


def _latents(regime: float, cohort: str = "internal", n: int = 40_000) -> pd.DataFrame:
    config = preset_config("demo", regime=regime)
    return sample_cohort_latents(np.random.default_rng(7), n, config, cohort)


def _corr(a: pd.Series, b: pd.Series) -> float:
    return float(np.corrcoef(a.to_numpy(float), b.to_numpy(float))[0, 1])


def test_causal_shared_regime() -> None:
    d = _latents(0.0)
    y = d["malignant"]
    assert _corr(d["shared_damage"], y) > 0.25
    assert abs(_corr(d["imaging_aggr"], y)) < 0.03 and abs(_corr(d["ehr_history"], y)) < 0.03
    assert _corr(d["emphysema_fraction"], y) > 0.2  # visible on CT
    assert _corr(d["pack_years"], y) > 0.15  # visible in the EHR
    assert _corr(d["diameter_last_mm"], y) > 0.3  # size matters in every regime


def test_causal_independent_regime() -> None:
    d = _latents(1.0)
    y = d["malignant"]
    assert abs(_corr(d["shared_damage"], y)) < 0.03
    assert abs(_corr(d["emphysema_fraction"], y)) < 0.03
    assert _corr(d["imaging_aggr"], y) > 0.2 and _corr(d["ehr_history"], y) > 0.2
    assert _corr(d["spiculation"], y) > 0.15  # imaging-only cause, visible on CT
    assert _corr(d["prior_cancer"], y) > 0.1  # EHR-only cause, visible in the EHR
    assert _corr(d["diameter_last_mm"], y) > 0.3
    malignant = d[y == 1]["vdt_days"]
    assert ((malignant >= 80) & (malignant <= 1200)).all()  # malignant nodules grow


def test_lidc_size_calibration() -> None:
    d = _latents(0.5)
    bins = pd.cut(d["diameter_last_mm"], [4, 6, 8, 15, 30])
    share = d.groupby(bins, observed=True)["malignant"].mean().to_numpy()
    assert np.all(np.diff(share) > 0)
    assert abs(share[0] - 0.02) < 0.02 and abs(share[2] - 0.26) < 0.06
    assert np.allclose(
        np.exp(lidc_size_logit(np.array([7.0]))) / (1 + np.exp(lidc_size_logit(np.array([7.0])))),
        0.07,
    )
    ggo = (d["nodule_type"] == "ground-glass").mean()
    assert 0.07 < ggo < 0.11


def test_external_site_shift() -> None:
    internal, external = _latents(0.0, "internal"), _latents(0.0, "external")
    assert external["malignant"].mean() > internal["malignant"].mean() + 0.03
    coupling_int = _corr(internal["shared_damage"], internal["emphysema_drive"])
    coupling_ext = _corr(external["shared_damage"], external["emphysema_drive"])
    # emphysema has non-smoking causes at both sites (site_coupling 0.85 vs 0.4)
    assert 0.8 < coupling_int < 0.9 and coupling_ext < 0.6
    cfg = preset_config("tiny")
    assert cfg.site("external").pixel_spacing_mm > cfg.site("internal").pixel_spacing_mm
    assert cfg.site("external").noise_sd_hu > cfg.site("internal").noise_sd_hu


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        preset_config("huge")
    with pytest.raises(ValueError):
        preset_config("tiny", regime=1.5)
    with pytest.raises(ValueError):
        preset_config("tiny", not_a_field=1)
    assert isinstance(preset_config("study", seed=2), SynthConfig)

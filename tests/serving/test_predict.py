"""`lungjepa predict`: DICOM folder + nodule + patient id -> probability, with no torch.

The model and the feature store come from one real tiny pipeline run per module (real
Dagster, Feast, DICOM, onnxruntime); the DICOM folders are a patient's files copied from the
raw archive, or series written with tests/dicom_factory.py for the bad cases.
"""

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_factory import write_ct_series

from cohorts.dicom.scan import scan_dicom_tree
from cohorts.ehr.features import (
    AGE_AT_SCAN,
    add_age_at_scan,
    birth_reference_days,
    scan_timestamp,
)
from cohorts.privacy import date_shift_days, pseudonymise, resolve_key
from feature_repo.store import online_features, open_store
from models.onnx_runtime import load_verified_session, predict_onnx
from orchestration import cli
from orchestration.params import privacy_config
from serving.errors import PredictionError
from serving.features import EhrInput, age_at_scan_years, ehr_vector
from serving.model import ModelSpec
from serving.predict import crop_nodule, model_inputs, parse_nodule

REPO = Path(__file__).resolve().parents[2]
KEY = resolve_key(synthetic=True)  # the tiny pipeline's data is the generator's, marked
UNKNOWN_MRN = "MRN-NOT-IN-THE-STORE-77"


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline: tuple) -> Path:
    root, _, result = tiny_pipeline
    assert result.success, "the tiny pipeline failed; predict tests need its model and store"
    return root


@pytest.fixture(scope="module")
def case(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One internal patient's whole DICOM export, and the index nodule of its latest scan."""
    raw = pipeline / "data" / "raw" / "internal"
    tree = scan_dicom_tree(raw / "dicom")
    annotations = pd.read_csv(raw / "annotations.csv", dtype={"seriesuid": str})
    by_patient: dict[str, dict[str, list]] = {}
    for uid, headers in tree.series.items():
        by_patient.setdefault(headers[0].patient_id, {})[uid] = headers
    known = set(annotations["seriesuid"])
    # a patient with two or more annotated scans, so --at has a choice to make
    mrn = next(m for m in sorted(by_patient) if len(set(by_patient[m]) & known) >= 2)
    series = by_patient[mrn]
    annotated = [uid for uid in series if uid in known]
    latest = max(annotated, key=lambda uid: series[uid][0].study_date)
    row = annotations[annotations["seriesuid"] == latest].sort_values("diameter_mm").iloc[-1]
    folder = tmp_path_factory.mktemp("patient_export")
    for n, (_uid, headers) in enumerate(sorted(series.items())):
        for k, header in enumerate(headers):
            target = folder / f"series{n}" / f"{k:04d}"  # no extension, as exports often have
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(header.path, target)
    date = series[latest][0].study_date
    shift = date_shift_days(mrn, KEY, privacy_config("tiny").date_shift_max_days)
    assert shift < 0  # the default: real and synthetic dates alike leave shifted

    def shifted(dicom_date: str) -> str:
        return (dt.date.fromisoformat(iso(dicom_date)) + dt.timedelta(days=shift)).isoformat()

    def iso(d: str) -> str:
        return f"{d[:4]}-{d[4:6]}-{d[6:8]}"

    return {
        "mrn": mrn,
        "folder": folder,
        "series_uid": latest,
        "nodule": (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])),
        "diameter_mm": float(row["diameter_mm"]),
        "study_date": iso(date),  # real dates, as the user knows them
        "first_date": min(iso(series[u][0].study_date) for u in annotated),
        "shifted_study_date": shifted(date),  # what outputs carry
        "shifted_first_date": min(shifted(series[u][0].study_date) for u in annotated),
    }


def _args(root: Path, folder: Path, nodule: tuple[float, float, float], mrn: str) -> list[str]:
    return [
        "predict",
        "--dicom", str(folder),
        "--nodule=" + ",".join(str(v) for v in nodule),  # '=': a leading minus is no option
        "--patient-id", mrn,
        "--data-dir", str(root / "data"),
        "--artifacts-dir", str(root / "artifacts"),
    ]  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _production_onnx(root: Path) -> Path:
    pointer = json.loads((root / "artifacts" / "models" / "production.json").read_text())
    return root / "artifacts" / pointer["models"]["jepa"]


# ---------------------------------------------------------------- end to end


def test_predict_end_to_end_without_torch(pipeline: Path, case: dict) -> None:
    """Subprocess: the CLI answers, never imports torch, and equals a hand-built ONNX run."""
    argv = ["--profile", "tiny", *_args(pipeline, case["folder"], case["nodule"], case["mrn"])]
    argv += ["--diameter", str(case["diameter_mm"])]
    runner = (
        "import sys; from orchestration.cli import main; code = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'the predict path imported torch'; sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", runner, *argv], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert case["mrn"] not in proc.stdout + proc.stderr  # only pseudonyms leave the process

    patient = pseudonymise(case["mrn"], KEY, "patient")
    series_id = pseudonymise(case["series_uid"], KEY, "series")
    inputs = result["inputs"]
    assert inputs["patient_id"] == patient
    assert inputs["series_id"] == series_id
    assert inputs["scan_date"] == case["shifted_study_date"]
    assert case["study_date"] not in proc.stdout  # the real scan date never leaves
    assert inputs["ehr_source"] == "feast_online" and inputs["ehr_mask"] is True
    session, card = load_verified_session(_production_onnx(pipeline))
    meta = card["metadata"]
    assert result["model"]["version"] == meta["model_version"]
    assert result["model"]["encoder_version"] == meta["encoder_version"]
    assert inputs["crop_shape_zyx"] == json.loads(meta["crop_shape_zyx"])

    # the reference input, built here from the curated crop and the online store
    curated = pipeline / "data" / "curated" / "internal"
    nodules = pd.read_parquet(curated / "nodules.parquet")
    mine = nodules[
        (nodules["series_id"] == series_id)
        & np.isclose(nodules["coord_x_mm"], case["nodule"][0])
        & np.isclose(nodules["coord_y_mm"], case["nodule"][1])
        & np.isclose(nodules["coord_z_mm"], case["nodule"][2])
    ]
    assert len(mine) == 1
    crop = np.load(curated / mine["crop_path"].iloc[0], allow_pickle=False)
    names = json.loads(meta["ehr_feature_names"])
    store = open_store(REPO / "feature_repo", pipeline / "data")
    online = online_features(store, [patient])
    online["event_timestamp"] = scan_timestamp(case["shifted_study_date"])
    row = add_age_at_scan(online).iloc[0]
    assert inputs["ehr_features"] == pytest.approx({n: float(row[n]) for n in names}, abs=1e-6)

    t = int(meta["max_timepoints"])
    crops = np.full((1, t, *crop.shape), -1024, dtype=np.int16)
    crops[0, -1] = crop
    scan_mask = np.zeros((1, t), dtype=bool)
    scan_mask[0, -1] = True
    ehr = np.zeros((1, t, len(names)), dtype=np.float32)
    ehr[0, -1] = [row[n] for n in names]
    by_name = {
        "crops_hu": crops,
        "months_before_latest": np.zeros((1, t), dtype=np.float32),
        "scan_mask": scan_mask,
        "ehr": ehr,
        "ehr_mask": scan_mask.copy(),
    }
    expected = predict_onnx(session, tuple(by_name[n] for n in json.loads(meta["inputs"])))
    assert 0.0 <= result["probability"] <= 1.0
    assert abs(result["probability"] - float(expected[0])) <= 1e-5


# ---------------------------------------------------------------- bad inputs (in-process CLI)


def test_not_a_ct_series_is_refused(pipeline: Path, case: dict, tmp_path: Path, capsys) -> None:
    mr = write_ct_series(tmp_path / "mr", modality="MR", patient_id=case["mrn"])
    code, out, err = _run(capsys, _args(pipeline, tmp_path / "mr", (0.0, 0.0, 0.0), case["mrn"]))
    assert code == 2 and out == ""
    assert "no usable CT series" in err and "modality: MR" in err
    assert mr.series_uid not in err and case["mrn"] not in err

    scout = ("ORIGINAL", "PRIMARY", "LOCALIZER")
    write_ct_series(tmp_path / "scout", image_type=scout, patient_id=case["mrn"])
    code, _, err = _run(capsys, _args(pipeline, tmp_path / "scout", (0.0, 0.0, 0.0), case["mrn"]))
    assert code == 2 and "localizer" in err


def test_nodule_outside_the_volume(pipeline: Path, case: dict, capsys) -> None:
    argv = _args(pipeline, case["folder"], (900.0, 900.0, 900.0), case["mrn"])
    code, out, err = _run(capsys, argv)
    assert code == 2 and out == ""
    assert "nodule outside the volume" in err


def test_unknown_patient(pipeline: Path, tmp_path: Path, capsys) -> None:
    write_ct_series(tmp_path / "dicom", patient_id=UNKNOWN_MRN, study_date="20200115")
    argv = _args(pipeline, tmp_path / "dicom", (0.0, 0.0, 0.0), UNKNOWN_MRN)
    code, out, err = _run(capsys, argv)
    assert code == 2 and out == ""
    # a series without the generator's mark is real data: the private installation key
    private = resolve_key(synthetic=False)
    assert f"unknown patient {pseudonymise(UNKNOWN_MRN, private, 'patient')}" in err
    assert pseudonymise(UNKNOWN_MRN, KEY, "patient") not in err  # never the demo key
    assert "pseudonymised with key" in err  # the model's cohorts got the demo key: say why
    assert UNKNOWN_MRN not in err

    code, out, _ = _run(capsys, [*argv, "--allow-missing-ehr"])
    assert code == 0
    result = json.loads(out)
    assert result["inputs"]["ehr_mask"] is False and result["inputs"]["ehr_source"] == "none"
    assert any("no EHR features" in w for w in result["warnings"])

    names = json.loads(
        load_verified_session(_production_onnx(pipeline))[1]["metadata"]["ehr_feature_names"]
    )
    features = {n: 0.5 for n in names if n != AGE_AT_SCAN} | {"year_of_birth": 1950}
    features_path = tmp_path / "features.json"
    features_path.write_text(json.dumps(features))
    code, out, _ = _run(capsys, [*argv, "--features-json", str(features_path)])
    assert code == 0
    used = json.loads(out)["inputs"]
    assert used["ehr_source"] == "features_json" and used["ehr_mask"] is True
    # the typed (real) year of birth is shifted like the scan: the age of the real dates
    real_birth = float(birth_reference_days(pd.Series([1950])).iloc[0])
    assert used["ehr_features"][AGE_AT_SCAN] == pytest.approx(
        age_at_scan_years(real_birth, dt.date(2020, 1, 15)), abs=1e-6
    )
    assert 69.5 < used["ehr_features"][AGE_AT_SCAN] < 70.0
    assert used["scan_date"] != "2020-01-15"  # shifted, with this installation's key


def test_patient_id_must_match_the_series(pipeline: Path, case: dict, capsys) -> None:
    argv = _args(pipeline, case["folder"], case["nodule"], "SOMEONE-ELSE-123")
    code, _, err = _run(capsys, argv)
    assert code == 2 and "does not match the series' PatientID" in err
    assert case["mrn"] not in err and "SOMEONE-ELSE-123" not in err


def test_at_picks_the_study_of_that_date(pipeline: Path, case: dict, capsys) -> None:
    argv = _args(pipeline, case["folder"], case["nodule"], case["mrn"])
    code, out, _ = _run(capsys, argv)
    latest = json.loads(out)["inputs"]
    assert code == 0 and latest["scan_date"] == case["shifted_study_date"]
    code, out, _ = _run(capsys, [*argv, "--at", case["first_date"]])  # the real date
    first = json.loads(out)["inputs"]
    assert code == 0 and first["scan_date"] == case["shifted_first_date"]
    assert case["first_date"] < case["study_date"]
    assert first["series_id"] != latest["series_id"]
    assert any("online store's latest" in w for w in json.loads(out)["warnings"])
    code, out, err = _run(capsys, [*argv, "--at", "1901-01-01"])
    assert code == 2 and out == "" and "no CT study on 1901-01-01" in err


def test_tampered_model_is_refused(pipeline: Path, case: dict, tmp_path: Path, capsys) -> None:
    source = _production_onnx(pipeline).parent
    shutil.copytree(source, tmp_path / "model")
    onnx_path = tmp_path / "model" / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    argv = [
        *_args(pipeline, case["folder"], case["nodule"], case["mrn"]),
        "--model",
        str(onnx_path),
    ]
    code, out, err = _run(capsys, argv)
    assert code == 2 and out == ""
    assert "sha256" in err and "does not match card" in err


def test_batch_over_annotations_matches_single_predictions(
    pipeline: Path, case: dict, capsys
) -> None:
    raw = pipeline / "data" / "raw" / "internal"
    argv = [
        "predict",
        "--annotations", str(raw / "annotations.csv"),
        "--dicom-root", str(raw / "dicom"),
        "--data-dir", str(pipeline / "data"),
        "--artifacts-dir", str(pipeline / "artifacts"),
    ]  # fmt: skip
    code, out, err = _run(capsys, argv)
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(pd.read_csv(raw / "annotations.csv"))
    failed = [r for r in rows if "error" in r]
    assert code == (1 if failed else 0), err
    assert all(0.0 <= r["probability"] <= 1.0 for r in rows if "error" not in r)
    # every nodule curation cropped is predicted; a row fails only where curation failed too:
    # its series quarantined (not merely not selected), or the nodule outside the volume
    curated = pipeline / "data" / "curated" / "internal"
    cropped = set(pd.read_parquet(curated / "nodules.parquet")["annotation_index"].astype(int))
    assert cropped and cropped <= {r["row"] for r in rows if "error" not in r}
    index = pd.read_parquet(curated / "index.parquet").set_index("series_id")
    for row in failed:
        reason = (
            str(index.loc[row["series_id"], "reason"]) if row["series_id"] in index.index else ""
        )
        quarantined = reason != "" and not reason.startswith("not_selected")
        assert quarantined or "outside the volume" in row["error"], row

    code, out, _ = _run(capsys, _args(pipeline, case["folder"], case["nodule"], case["mrn"]))
    assert code == 0
    single = json.loads(out)
    series_id = pseudonymise(case["series_uid"], KEY, "series")
    same = [
        r
        for r in rows
        if r["series_id"] == series_id and np.allclose(r["nodule_world_mm"], case["nodule"])
    ]
    assert len(same) == 1 and same[0]["patient_id"] == single["inputs"]["patient_id"]
    assert abs(same[0]["probability"] - single["probability"]) <= 1e-5


def test_predict_needs_one_mode(capsys) -> None:
    code, _, err = _run(capsys, ["predict", "--dicom", "x", "--annotations", "a.csv"])
    assert code == 2 and "--annotations and --dicom-root" in err


# ---------------------------------------------------------------- units (no pipeline)


def test_parse_nodule() -> None:
    assert parse_nodule("1.5,-2,3e1") == (1.5, -2.0, 30.0)
    for bad in ("1,2", "a,b,c", "1,2,nan"):
        with pytest.raises(PredictionError):
            parse_nodule(bad)


def test_ehr_vector_follows_the_training_missing_rule() -> None:
    names = ["sex_female", AGE_AT_SCAN, "pack_years"]
    day = pd.Timestamp("2021-07-02").date()
    full = ehr_vector(
        {"sex_female": 1.0, "year_of_birth": 1960, "pack_years": 30.0}, names, day, "x"
    )
    assert full.available and not full.warnings
    birth = birth_reference_days(pd.Series([1960]))
    frame = pd.DataFrame({"event_timestamp": [scan_timestamp(day)], "birth_reference_day": birth})
    assert full.values[AGE_AT_SCAN] == pytest.approx(float(add_age_at_scan(frame)[AGE_AT_SCAN][0]))
    # a typed year of birth is placed on the patient's shifted calendar: same age
    moved = ehr_vector(
        {"sex_female": 1.0, "year_of_birth": 1960, "pack_years": 30.0},
        names,
        day - dt.timedelta(days=100),
        "x",
        shift_days=-100,
    )
    assert moved.values[AGE_AT_SCAN] == full.values[AGE_AT_SCAN]
    partial = ehr_vector(
        {"sex_female": 0.0, "year_of_birth": 1960, "pack_years": None}, names, day, "x"
    )
    assert partial.available and partial.values["pack_years"] == 0.0
    assert "pack_years" in partial.warnings[0]
    empty = ehr_vector({"sex_female": None, "year_of_birth": None}, names, day, "x")
    assert not empty.available and set(empty.values.values()) == {0.0}


def test_model_inputs_put_the_scan_in_the_latest_slot(tmp_path: Path) -> None:
    spec = ModelSpec(
        onnx_path=tmp_path / "m.onnx", sha256="", name="jepa", version="v", encoder_version="e",
        inputs=("crops_hu", "months_before_latest", "scan_mask", "ehr", "ehr_mask"),
        crop_shape_zyx=(4, 4, 4), crop_spacing_mm=1.0, max_timepoints=3,
        ehr_feature_names=("a", "b"),
    )  # fmt: skip
    crop = np.arange(64, dtype=np.int16).reshape(4, 4, 4)
    crops, months, scan_mask, ehr, ehr_mask = model_inputs(
        crop, EhrInput({"b": 2.0, "a": 1.0}, True, "x"), spec
    )
    assert crops.shape == (1, 3, 4, 4, 4) and (crops[0, -1] == crop).all()
    assert (crops[0, :2] == -1024).all() and not months.any()
    assert scan_mask.tolist() == [[False, False, True]] == ehr_mask.tolist()
    assert ehr[0, -1].tolist() == [1.0, 2.0] and not ehr[0, :2].any()
    _, _, _, _, no_ehr = model_inputs(crop, EhrInput({"a": 0.0, "b": 0.0}, False, "none"), spec)
    assert not no_ehr.any()


def test_crop_outside_is_a_prediction_error(tmp_path: Path) -> None:
    from cohorts.dicom import read_series

    written = write_ct_series(tmp_path / "ct")
    volume = read_series(written.paths)
    spec = ModelSpec(
        onnx_path=tmp_path / "m.onnx", sha256="", name="jepa", version="v", encoder_version="e",
        inputs=(), crop_shape_zyx=(8, 8, 8), crop_spacing_mm=1.0, max_timepoints=1,
        ehr_feature_names=(),
    )  # fmt: skip
    assert crop_nodule(volume, (0.0, 0.0, 0.0), spec).shape == (8, 8, 8)
    with pytest.raises(PredictionError, match="outside the volume"):
        crop_nodule(volume, (0.0, 0.0, 500.0), spec)


def test_the_training_cohorts_key_and_date_shift_travel_with_the_model(tmp_path: Path) -> None:
    """Serving shifts dates as the model's cohorts were shifted (whatever params.yaml says now)
    and refuses a store lookup for ids made with a key the cohorts were not pseudonymised with."""
    from cohorts.privacy import key_fingerprint
    from serving.predict import CurationSettings

    spec = ModelSpec(
        onnx_path=tmp_path / "m.onnx", sha256="", name="jepa", version="v1", encoder_version="e",
        inputs=(), crop_shape_zyx=(8, 8, 8), crop_spacing_mm=1.0, max_timepoints=1,
        ehr_feature_names=(), key_fingerprints=(key_fingerprint(b"site-key"),),
        date_shift_max_days=30,
    )  # fmt: skip
    settings = CurationSettings(min_slices=8, date_shift_max_days=365)
    assert settings.for_model(spec).date_shift_max_days == 30
    older = ModelSpec(**{**spec.__dict__, "date_shift_max_days": None, "key_fingerprints": ()})
    assert settings.for_model(older).date_shift_max_days == 365  # exported before it travelled
    assert spec.key_mismatch(b"site-key") is None and older.key_mismatch(b"any-key") is None
    assert "pseudonymised with key" in spec.key_mismatch(b"another-key")


def test_exported_model_carries_its_cohorts_key_and_date_shift(pipeline: Path) -> None:
    import onnx

    from cohorts.privacy import read_key_record

    production = json.loads((pipeline / "artifacts/models/production.json").read_text())
    onnx_path = pipeline / "artifacts" / production["models"]["jepa"]
    meta = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    records = read_key_record(pipeline / "data" / "examples")
    assert (
        records
        and int(meta["date_shift_max_days"])
        == {r["date_shift_max_days"] for r in records.values()}.pop()
    )
    assert json.loads(meta["key_fingerprints"]) == {
        c: r["key_fingerprint"] for c, r in records.items()
    }

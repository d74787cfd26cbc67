"""`lungjepa serve`: a real uvicorn server on loopback answering from the tiny pipeline's model.

The server runs as its own process (the `lungjepa serve` command, profile tiny) on a copy of
the pipeline's artifacts, so a test can repoint production.json and watch it reload. Every
bad input `predict` refuses must come back 4xx with the same message, never 5xx.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cohorts.dicom.scan import scan_dicom_tree
from orchestration.params import privacy_config, section
from serving.predict import CurationSettings, PredictRequest, predict
from tests.processes import descendants, running

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(base: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, parsed JSON) of a GET (no body) or a POST to the server."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        base + path, data=data, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def root(tiny_pipeline: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the pipeline's artifacts (the server's to repoint) beside its data."""
    source, _, result = tiny_pipeline
    assert result.success, "the tiny pipeline failed; serve tests need its model and store"
    copy = tmp_path_factory.mktemp("serve")
    shutil.copytree(source / "artifacts", copy / "artifacts")
    (copy / "data").symlink_to(source / "data")
    return copy


def _start_server(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`lungjepa --profile tiny serve` on a free port, once /health answers."""
    port = _free_port()
    argv = [
        sys.executable, "-m", "orchestration.cli", "--profile", "tiny", "serve",
        "--port", str(port), "--data-dir", str(root / "data"),
        "--artifacts-dir", str(root / "artifacts"),
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if call(base, "/health")[0] == 200:
                return proc, base
        except (urllib.error.URLError, ConnectionError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not start: {log.read_text()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[str]:
    proc, base = _start_server(root, root / "serve.log")
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def case(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One internal patient's DICOM folder and its largest annotated nodule."""
    raw = root / "data" / "raw" / "internal"
    tree = scan_dicom_tree(raw / "dicom")
    annotations = pd.read_csv(raw / "annotations.csv", dtype={"seriesuid": str})
    uid = next(u for u in sorted(tree.series) if u in set(annotations["seriesuid"]))
    folder = tmp_path_factory.mktemp("case")
    for k, header in enumerate(tree.series[uid]):
        shutil.copy(header.path, folder / f"{k:04d}")
    row = annotations[annotations["seriesuid"] == uid].sort_values("diameter_mm").iloc[-1]
    return {
        "dicom_dir": str(folder),
        "nodule_xyz_mm": [float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])],
        "patient_id": tree.series[uid][0].patient_id,
        "series_uid": uid,
        "dicom_root": str(raw / "dicom"),
    }


def _case_body(case: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {k: case[k] for k in ("dicom_dir", "nodule_xyz_mm", "patient_id")}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def test_health_and_models(server: str, root: Path) -> None:
    status, health = call(server, "/health")
    pointer = json.loads((root / "artifacts" / "models" / "production.json").read_text())
    assert status == 200 and health["status"] == "ok"
    assert health["production_version"] == pointer["version"]
    status, models = call(server, "/models")
    assert status == 200 and models["production"] == pointer


def test_predict_equals_the_cli_path_and_loads_no_torch(
    server: str, root: Path, case: dict[str, Any]
) -> None:
    """The service's answer is `predict`'s for the same case (same model, features, crop)."""
    status, served = call(server, "/predict", _case_body(case))
    assert status == 200, served
    pointer = json.loads((root / "artifacts" / "models" / "production.json").read_text())
    direct = predict(
        PredictRequest(
            dicom_dir=Path(case["dicom_dir"]),
            nodule_xyz_mm=tuple(case["nodule_xyz_mm"]),  # type: ignore[arg-type]
            patient_id=case["patient_id"],
            model_path=root / "artifacts" / pointer["models"]["jepa"],
            data_dir=root / "data",
            feature_repo_dir=REPO / "feature_repo",
            curation=CurationSettings(
                min_slices=int(section("curate", "tiny")["min_slices"]),
                date_shift_max_days=privacy_config("tiny").date_shift_max_days,
            ),
        )
    )
    assert served["probability"] == pytest.approx(direct["probability"], abs=1e-6)
    assert served["inputs"] == json.loads(json.dumps(direct["inputs"]))
    assert case["patient_id"] not in json.dumps(served)  # pseudonyms out, never the MRN
    status, health = call(server, "/health")
    assert health["models_open"] == ["jepa"] and health["torch_loaded"] is False


def test_batch_answers_each_row(server: str, case: dict[str, Any]) -> None:
    rows = [
        {"seriesuid": case["series_uid"], "coordX": x, "coordY": y, "coordZ": z}
        for x, y, z in [case["nodule_xyz_mm"]]
    ] + [{"seriesuid": "1.2.3.4.999", "coordX": 0, "coordY": 0, "coordZ": 0}]
    status, body = call(
        server, "/predict/batch", {"dicom_root": case["dicom_root"], "annotations": rows}
    )
    assert status == 200, body
    first, missing = body["results"]
    assert 0.0 <= first["probability"] <= 1.0 and "error" not in first
    assert missing["error"] == "series not found under --dicom-root" and body["failed"] == 1
    status, single = call(server, "/predict", _case_body(case))
    assert first["probability"] == pytest.approx(single["probability"], abs=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/predict", b"{not json", 400, "body is not JSON"),
        ("/predict", [1, 2], 400, "body must be a JSON object"),
        ("/predict", {"dicom_dir": None}, 422, "dicom_dir: required"),
        ("/predict", {"surprise": 1}, 422, "unknown field(s) ['surprise']"),
        ("/predict", {"nodule_xyz_mm": [1, 2]}, 422, "nodule_xyz_mm: required"),
        ("/predict", {"nodule_xyz_mm": [1, "a", 2]}, 422, "nodule_xyz_mm: three numbers"),
        ("/predict", {"nodule_xyz_mm": "1,nan,2"}, 422, "three finite numbers"),
        ("/predict", {"dicom_dir": "/no/such/folder"}, 422, "DICOM folder not found"),
        ("/predict", {"patient_id": "SOMEONE-ELSE"}, 422, "does not match the series' PatientID"),
        ("/predict", {"at": "yesterday"}, 422, "not a date"),
        ("/predict", {"at": "1990-01-01"}, 422, "no CT study on 1990-01-01"),
        ("/predict", {"model": "../../etc/model.onnx"}, 422, "not a path"),
        ("/predict", {"model": "nonesuch"}, 422, "has no model 'nonesuch'"),
        ("/predict", {"model": "README.md"}, 422, "has no model 'README.md'"),  # never a path
        ("/predict", {"features": [1]}, 422, "features: expected an object"),
        ("/predict", {"features": {"copd": 1}}, 422, "features lacks the model's features"),
        ("/predict", {"nodule_xyz_mm": [9e3, 9e3, 9e3]}, 422, "nodule outside the volume"),
        ("/predict", {"allow_missing_ehr": "yes"}, 422, "allow_missing_ehr: expected true"),
        ("/predict/batch", {"dicom_root": "/tmp"}, 422, "give annotations"),
        ("/predict/batch", {"annotations": [{"seriesuid": "1"}]}, 422, "lacks columns"),
        (
            "/predict/batch",
            {"annotations": [{"seriesuid": "1", "coordX": "a", "coordY": 0, "coordZ": 0}]},
            422,
            "not numbers",
        ),
        ("/predict/batch", {"annotations_csv": "/no/such.csv"}, 422, "--annotations /no/such.csv"),
        ("/nope", {}, 404, "Not Found"),
        ("/predict", b"x" * (1 << 21), 413, "request body over"),
    ],
)
def test_bad_inputs_are_4xx_with_the_reason(
    server: str, case: dict[str, Any], path: str, body: object, status: int, message: str
) -> None:
    if isinstance(body, bytes):
        got, answer = call(server, path, raw=body)
    elif path == "/predict" and isinstance(body, dict):
        got, answer = call(server, path, {**_case_body(case), **body})
    elif path == "/predict/batch" and isinstance(body, dict):
        got, answer = call(server, path, {"dicom_root": case["dicom_root"], **body})
    else:
        got, answer = call(server, path, body)
    assert got == status, answer
    assert message in answer["error"]


def test_get_on_a_post_route_is_405(server: str) -> None:
    assert call(server, "/predict")[0] == 405


def test_reloads_when_production_changes(server: str, root: Path, case: dict[str, Any]) -> None:
    """Repointing production.json (as promote and rollback do) takes effect on the next call."""
    pointer_path = root / "artifacts" / "models" / "production.json"
    pointer = json.loads(pointer_path.read_text())
    call(server, "/predict", _case_body(case))
    before = call(server, "/health")[1]["reloads"]
    moved = {
        "version": "moved-" + pointer["version"],
        "models": {"jepa": pointer["models"]["imaging_only"]},
    }
    tmp = pointer_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(moved))
    os.replace(tmp, pointer_path)
    try:
        status, served = call(server, "/predict", _case_body(case))
        assert status == 200, served
        assert served["model"]["path"].endswith("imaging_only/model.onnx")
        health = call(server, "/health")[1]
        assert health["production_version"] == moved["version"] and health["reloads"] == before + 1
    finally:
        tmp.write_text(json.dumps(pointer))
        os.replace(tmp, pointer_path)


def test_folders_outside_allow_dir_are_refused(root: Path, case: dict[str, Any]) -> None:
    """With allowed_dirs set, a request for any other folder (.. included) is PathNotAllowed
    (403 over HTTP), and one inside is answered."""
    from serving.service import PathNotAllowed, PredictionService, ServiceConfig

    allowed = Path(case["dicom_dir"])  # this one folder only
    service = PredictionService(
        ServiceConfig(
            artifacts_dir=root / "artifacts",
            data_dir=root / "data",
            feature_repo_dir=REPO / "feature_repo",
            curation=CurationSettings(
                min_slices=int(section("curate", "tiny")["min_slices"]),
                date_shift_max_days=privacy_config("tiny").date_shift_max_days,
            ),
            header_workers=1,
            allowed_dirs=(allowed,),
        )
    )
    assert 0.0 <= service.predict(_case_body(case))["probability"] <= 1.0
    for folder in ("/etc", f"{allowed}/../../etc", case["dicom_root"]):
        with pytest.raises(PathNotAllowed, match="dicom_dir: not under a folder"):
            service.predict(_case_body(case, dicom_dir=folder))
    with pytest.raises(PathNotAllowed, match="dicom_root"):
        service.predict_batch({"dicom_root": case["dicom_root"], "annotations": []})


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_stopped_server_leaves_no_dicom_worker_behind(
    root: Path, case: dict[str, Any], tmp_path: Path, stop: str
) -> None:
    """The service's kept-open DICOM workers (forkserver and pool) end with it: on SIGTERM its
    graceful shutdown closes them (uvicorn re-raises the signal before the CLI's `finally`),
    and on SIGKILL each worker sees its parent gone and exits (``cohorts.parallel``)."""
    proc, base = _start_server(root, tmp_path / "serve.log")
    try:
        status, body = call(base, "/predict", _case_body(case))
        assert status == 200, body
        workers = descendants(proc.pid)
        assert len(workers) >= 3, workers  # the forkserver and header_workers (2) processes
    finally:
        os.kill(proc.pid, getattr(signal, stop))
        proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if running(pid)], (tmp_path / "serve.log").read_text()

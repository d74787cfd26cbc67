"""`lungjepa serve` over loopback HTTP: single-case latency and batch-32 throughput.

A real server process (`python -m orchestration.cli --profile <profile> serve`) answers a
client in this process. The cases are internal patients' DICOM exports (each patient's files
copied into a folder of its own) and their largest annotated nodule, asked in turn, so the
figures include reading and decoding a different series on every request. Requests are
bounded: one at a time, each with a timeout; every answer that is not 200 counts as an error.

Rounds interleave a block of single-case requests with one batch request of 32 LUNA16 rows
(the series those rows name copied under one root), so a slow spell hits both. Throughput:
cases per second of the requests' own wall time.

The model and store are the pipeline benchmark's (when it ran first) or a tiny pipeline
built here, as for `predict`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import BenchResult, BenchSize, percentiles_ms
from benchmarks.predict import PROFILE, REPO, model_and_store, serving_curation
from cohorts.dicom.scan import iter_files, scan_dicom_tree
from cohorts.files import atomic_write_bytes
from orchestration.params import section
from serving.batch import annotation_points, batch_probabilities, series_jobs
from serving.features import EhrInput
from serving.headers import FolderReader, folder_reader, series_map
from serving.model import ModelSpec, load_model, resolve_model_path
from serving.predict import CurationSettings, model_inputs
from serving.series import series_crops

COMMAND = "python -m benchmarks.run --only serve"
BATCH = 32


def post(base: str, path: str, body: dict[str, Any], timeout_s: float = 60.0) -> tuple[int, Any]:
    """(HTTP status, parsed JSON answer) of one bounded POST."""
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def cases_and_batch(root: Path, out_dir: Path, n_cases: int) -> tuple[list[dict], dict]:
    """Up to ``n_cases`` single-case bodies (one patient's files per folder) and a batch
    body of ``BATCH`` annotation rows whose series are copied under one root."""
    raw = root / "data" / "raw" / "internal"
    tree = scan_dicom_tree(raw / "dicom")
    annotations = pd.read_csv(raw / "annotations.csv", dtype={"seriesuid": str})
    annotated = annotations[annotations["seriesuid"].isin(tree.series)]
    by_patient: dict[str, list[str]] = {}
    for uid in sorted(tree.series):
        by_patient.setdefault(tree.series[uid][0].patient_id, []).append(uid)
    cases = []
    for mrn in sorted(by_patient):
        uids = [u for u in by_patient[mrn] if u in set(annotated["seriesuid"])]
        if not uids:
            continue
        latest = max(uids, key=lambda u: tree.series[u][0].study_date)
        row = annotated[annotated["seriesuid"] == latest].sort_values("diameter_mm").iloc[-1]
        folder = out_dir / f"case{len(cases):03d}"
        for n, uid in enumerate(by_patient[mrn]):
            for k, header in enumerate(tree.series[uid]):
                atomic_write_bytes(folder / f"s{n}" / f"{k:04d}", Path(header.path).read_bytes())
        cases.append(
            {
                "dicom_dir": str(folder),
                "nodule_xyz_mm": [float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])],
                "patient_id": mrn,
            }
        )
        if len(cases) == n_cases:
            break
    rows = annotated.head(BATCH)
    batch_root = out_dir / "batch"
    for n, uid in enumerate(sorted(set(rows["seriesuid"]))):
        for k, header in enumerate(tree.series[uid]):
            atomic_write_bytes(batch_root / f"s{n}" / f"{k:04d}", Path(header.path).read_bytes())
    batch = {
        "dicom_root": str(batch_root),
        "annotations": rows[["seriesuid", "coordX", "coordY", "coordZ"]].to_dict("records"),
        "allow_missing_ehr": True,
    }
    return cases, batch


def batch_unshared_seconds(
    batch: dict[str, Any],
    read: FolderReader,
    session: Any,
    spec: ModelSpec,
    settings: CurationSettings,
) -> tuple[float, float]:
    """(DICOM seconds, model seconds) of the work a batch request cannot share away between
    its rows, by the calls ``serving.batch`` makes on the service's kind of workers: the
    folder's header scan (``read``), each named series decoded once and its crops cut
    (``series_jobs`` over ``series_map(read)``), and the model over all rows at once
    (``batch_probabilities``: its cost grows with the rows). No store, no HTTP."""
    started = time.perf_counter()
    tree = read(Path(batch["dicom_root"]))
    points = annotation_points(pd.DataFrame(batch["annotations"]))
    jobs = series_jobs(points, tree, settings.for_model(spec).for_tree(tree), spec)
    outcomes = series_map(read)(series_crops, list(jobs.values()))
    dicom_done = time.perf_counter()
    no_ehr = EhrInput(dict.fromkeys(spec.ehr_feature_names, 0.0), False, "none")
    inputs = [
        model_inputs(crop, no_ehr, spec)
        for outcome in outcomes
        for crop in outcome.crops
        if not isinstance(crop, str)
    ]
    batch_probabilities(session, inputs)
    return dicom_done - started, time.perf_counter() - dicom_done


def start_server(root: Path, profile: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    """The `serve` command on a free loopback port, once /health answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [
        sys.executable, "-m", "orchestration.cli", "--profile", profile, "serve",
        "--port", str(port), "--data-dir", str(root / "data"),
        "--artifacts-dir", str(root / "artifacts"),
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as response:
                if response.status == 200:
                    return proc, base
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"serve did not answer /health in 120 s: {log_path.read_text()[-2000:]}")


def run(
    size: BenchSize, work_dir: Path, pipeline_root: Path | None = None, profile: str = PROFILE
) -> BenchResult:
    result = BenchResult("serve", "Prediction service over loopback HTTP", COMMAND)
    root, profile = model_and_store(result, work_dir, pipeline_root, profile)
    out = work_dir / "serve" / "cases"
    cases, batch = cases_and_batch(root, out, n_cases=16)
    singles = 500 if size.name == "full" else 40
    rounds = 10 if size.name == "full" else 2
    proc, base = start_server(root, profile, work_dir / "serve" / "serve.log")
    header_workers = int(section("serve", profile)["header_workers"])
    read = folder_reader(header_workers)  # the server's own reader, for its DICOM work alone
    session, spec = load_model(resolve_model_path(None, root / "artifacts"))  # as it serves
    settings = serving_curation(profile)
    try:
        for body in cases[:2]:  # warm-up: open the model and the store
            post(base, "/predict", body)
        post(base, "/predict/batch", batch)
        single_s: list[float] = []
        single_case: list[int] = []  # which case each single request asked
        batch_s: list[float] = []
        dicom_s: list[float] = []  # the batch's own DICOM work, in this process
        model_s: list[float] = []  # and its model run over all rows
        errors: dict[str, int] = {}
        asked = 0
        for _round in range(rounds):
            for _ in range(singles // rounds):
                started = time.perf_counter()
                status, answer = post(base, "/predict", cases[asked % len(cases)])
                single_s.append(time.perf_counter() - started)
                single_case.append(asked % len(cases))
                asked += 1
                if status != 200:
                    errors[f"single {status}"] = errors.get(f"single {status}", 0) + 1
            started = time.perf_counter()
            status, answer = post(base, "/predict/batch", batch)
            batch_s.append(time.perf_counter() - started)
            if status != 200 or answer.get("failed"):
                errors[f"batch {status}"] = errors.get(f"batch {status}", 0) + 1
            dicom, model = batch_unshared_seconds(batch, read, session, spec, settings)
            dicom_s.append(dicom)
            model_s.append(model)
    finally:
        getattr(read, "close", lambda: None)()
        proc.terminate()
        proc.wait(timeout=30)
    pct = percentiles_ms(single_s)
    result.add("single case, end to end", "ms", [s * 1e3 for s in single_s], **pct)
    # the header pass reads every file of every series in the folder: latency by folder size
    series = [sum(1 for p in Path(c["dicom_dir"]).iterdir() if p.is_dir()) for c in cases]
    files = [sum(1 for _ in iter_files(Path(c["dicom_dir"]))) for c in cases]
    for n_series in sorted(set(series)):
        picked = [s for s, c in zip(single_s, single_case, strict=True) if series[c] == n_series]
        sizes = sorted({files[c] for c in range(len(cases)) if series[c] == n_series})
        if not picked:
            continue
        result.add(
            f"single case, {n_series} series in the folder (the patient's every scan)",
            "ms",
            [s * 1e3 for s in picked],
            files=f"{sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else sizes[0],
            **percentiles_ms(picked),
        )
    result.add(f"batch of {BATCH} rows, end to end", "ms", [s * 1e3 for s in batch_s])
    single_rate = len(single_s) / sum(single_s)
    batch_rate = BATCH * len(batch_s) / sum(batch_s)
    result.add("single-case throughput", "cases/s", [single_rate])
    result.add(f"batch-{BATCH} throughput", "cases/s", [batch_rate])
    result.ratio(
        f"batch-{BATCH} / single-case throughput",
        batch_rate / single_rate,
        "cases per second a batch request gets over one case per request (target >= 10)",
    )
    dicom_row = result.add(
        f"batch DICOM work per row (scan, decode, crop; {BATCH} rows)",
        "ms",
        [s * 1e3 / BATCH for s in dicom_s],
    )
    model_row = result.add(
        f"batch model work per row (one ONNX run over {BATCH} rows)",
        "ms",
        [s * 1e3 / BATCH for s in model_s],
    )
    ceiling = (sum(single_s) / len(single_s) * 1e3) / (dicom_row["median"] + model_row["median"])
    result.ratio(
        f"ceiling of batch-{BATCH} / single-case throughput",
        ceiling,
        "mean single-case time over the batch's per-row work no batching shares (its DICOM "
        "work and model run): the most a batch could gain if everything else were free",
    )
    result.ratio(
        f"batch-{BATCH} / single-case throughput, share of its ceiling",
        (batch_rate / single_rate) / ceiling,
        "how much of the gain the per-row work allows a batch request gets (1.0 = all)",
    )
    result.ratio(
        "single-case p99 / p50",
        pct["p99_ms"] / pct["p50_ms"],
        "tail over median latency (target: p50 <= 60 ms, p99 <= 200 ms)",
    )
    result.config = {
        "profile": profile,
        "cases": len(cases),
        "single_requests": len(single_s),
        "batch_requests": len(batch_s),
        "batch_series": len({r["seriesuid"] for r in batch["annotations"]}),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "client": "urllib, one request at a time, 60 s timeout",
        "header_workers": header_workers,
    }
    shutil.rmtree(work_dir / "serve" / "cases", ignore_errors=True)
    return result

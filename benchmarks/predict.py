"""`lungjepa predict` latency: end to end in-process against the model call alone, and the CLI.

What a single prediction costs besides the network: the in-process ``predict`` (open the
verified ONNX session, walk and decode the DICOM folder, crop, Feast online lookup,
onnxruntime) and ``predict_onnx`` alone on the same prepared inputs, the two interleaved
round by round; their ratio is how much of a prediction is I/O and features. The CLI as a
subprocess adds interpreter and import start-up, so it is reported on its own, beside
``predict --help`` (interpreter and argparse only) and a fresh process that only imports what
the predict path imports (the gap to the CLI is the work itself plus first-call warm-up).

The model and the feature store come from a real pipeline run: the `pipeline` benchmark's
output when it ran first in the same `make bench` (demo profile at full size), else a tiny
pipeline built here (Dagster, in a spawned process, throw-away folder). The DICOM folder is one internal patient's series copied
from the raw archive, the nodule that patient's largest annotated one on the latest scan.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import BenchResult, BenchSize, in_child, interleaved
from benchmarks.pipeline import PIPELINE_MARKER, dagster_run
from cohorts.dicom.scan import scan_dicom_tree
from cohorts.files import atomic_write_bytes
from cohorts.privacy import pseudonymise
from models.onnx_runtime import predict_onnx
from orchestration.params import privacy_config, section
from serving.features import online_ehr, open_feature_store
from serving.model import load_model, resolve_model_path
from serving.predict import (
    CurationSettings,
    PredictRequest,
    crop_nodule,
    model_inputs,
    predict,
    read_scan,
)
from serving.service import PredictionService, ServiceConfig

COMMAND = "python -m benchmarks.run --only predict"
REPO = Path(__file__).resolve().parents[1]
PROFILE = "tiny"  # of a pipeline built here


IMPORTS_ONLY = (
    "from orchestration import cli\n"
    "from serving import batch, predict\n"
    "from serving.features import refuse_torch\n"
    "from cohorts.privacy import resolve_key\n"
    "with refuse_torch():\n"
    "    import feature_repo.store\n"
)
"""What a `predict` process imports before it does any work (Feast with torch refused)."""


def build_pipeline(root: Path) -> None:
    """The whole tiny pipeline into ``root`` (data/, artifacts/), in a fresh process."""
    root.mkdir(parents=True, exist_ok=True)
    data = in_child(dagster_run, str(root), None, env={"LUNGJEPA_PROFILE": PROFILE})["value"]
    if not data["success"]:
        raise RuntimeError(f"tiny pipeline failed; step statuses: {data['statuses']}")


def patient_case(root: Path, out_dir: Path) -> dict[str, Any]:
    """One internal patient's DICOM export copied to ``out_dir``, and its index nodule.

    The patient is the first (sorted MRN) with an annotated series; the nodule is the
    largest annotated one on that patient's latest annotated scan (what predict reads).
    """
    raw = root / "data" / "raw" / "internal"
    tree = scan_dicom_tree(raw / "dicom")
    annotations = pd.read_csv(raw / "annotations.csv", dtype={"seriesuid": str})
    known = set(annotations["seriesuid"])
    by_patient: dict[str, dict[str, list]] = {}
    for uid, headers in tree.series.items():
        by_patient.setdefault(headers[0].patient_id, {})[uid] = headers
    mrn = next(m for m in sorted(by_patient) if set(by_patient[m]) & known)
    series = by_patient[mrn]
    latest = max((u for u in series if u in known), key=lambda u: series[u][0].study_date)
    row = annotations[annotations["seriesuid"] == latest].sort_values("diameter_mm").iloc[-1]
    files = 0
    for n, (_uid, headers) in enumerate(sorted(series.items())):
        for k, header in enumerate(headers):
            atomic_write_bytes(out_dir / f"series{n}" / f"{k:04d}", Path(header.path).read_bytes())
            files += 1
    return {
        "mrn": mrn,
        "folder": out_dir,
        "nodule": (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])),
        "series": len(series),
        "files": files,
    }


def _cli_argv(root: Path, case: dict[str, Any], profile: str) -> list[str]:
    nodule = ",".join(str(v) for v in case["nodule"])
    return [
        sys.executable, "-m", "orchestration.cli", "--profile", profile, "predict",
        "--dicom", str(case["folder"]),
        "--nodule=" + nodule,  # '=': a leading minus is no option
        "--patient-id", case["mrn"],
        "--data-dir", str(root / "data"),
        "--artifacts-dir", str(root / "artifacts"),
    ]  # fmt: skip


def _subprocess(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:6])} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def _finished_pipeline(work_dir: Path) -> tuple[Path, str] | None:
    """(root, profile) of the pipeline benchmark's successful output in this run, if any."""
    marker = work_dir / "pipeline" / PIPELINE_MARKER
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    if not info["success"] or info["selection"] is not None:
        return None
    return marker.parent, str(info["profile"])


def model_and_store(
    result: BenchResult, work_dir: Path, pipeline_root: Path | None, profile: str
) -> tuple[Path, str]:
    """(root, profile) of a finished pipeline: ``pipeline_root`` (of ``profile``), else the
    pipeline benchmark's output in ``work_dir``, else a tiny pipeline built under
    ``work_dir/<result.name>/pipeline``. A note on ``result`` says which."""
    if pipeline_root is not None:
        return pipeline_root, profile
    if (finished := _finished_pipeline(work_dir)) is not None:
        result.notes.append(f"Model and store: the pipeline benchmark's {finished[1]} run.")
        return finished
    root = work_dir / result.name / "pipeline"
    started = time.perf_counter()
    build_pipeline(root)
    result.notes.append(
        f"Built the tiny pipeline for this run in {time.perf_counter() - started:.0f} s "
        "(not part of any figure)."
    )
    return root, PROFILE


def serving_curation(profile: str) -> CurationSettings:
    """The curation settings `lungjepa --profile <profile> serve` and `predict` run with."""
    return CurationSettings(
        min_slices=int(section("curate", profile)["min_slices"]),
        date_shift_max_days=privacy_config(profile).date_shift_max_days,
    )


def run(
    size: BenchSize, work_dir: Path, pipeline_root: Path | None = None, profile: str = PROFILE
) -> BenchResult:
    """Time predict on ``pipeline_root`` (a finished run of ``profile``), else on the
    pipeline benchmark's output in ``work_dir``, else on a tiny pipeline built here."""
    result = BenchResult("predict", "Predict latency: end to end, model only, CLI", COMMAND)
    root, profile = model_and_store(result, work_dir, pipeline_root, profile)
    case = patient_case(root, work_dir / "predict" / "patient_dicom")
    settings = serving_curation(profile)
    request = PredictRequest(
        dicom_dir=case["folder"],
        nodule_xyz_mm=case["nodule"],
        patient_id=case["mrn"],
        model_path=resolve_model_path(None, root / "artifacts"),
        data_dir=root / "data",
        feature_repo_dir=REPO / "feature_repo",
        curation=settings,
    )

    # the inputs predict builds, prepared once with its own steps, for the model-only case
    session, spec = load_model(request.model_path)
    scan = read_scan(request.dicom_dir, request.patient_id, settings)
    crop = crop_nodule(scan.volume, request.nodule_xyz_mm, spec)
    patient = pseudonymise(request.patient_id, scan.pseudonym_key, "patient")
    store = open_feature_store(root / "data", REPO / "feature_repo")
    ehr = online_ehr(store, patient, spec.ehr_feature_names, scan.scan_date)
    if ehr is None:
        raise RuntimeError(f"patient {patient} has no online features in the {profile} store")
    inputs = model_inputs(crop, ehr, spec)

    service = PredictionService(
        ServiceConfig(
            artifacts_dir=root / "artifacts",
            data_dir=root / "data",
            feature_repo_dir=REPO / "feature_repo",
            curation=settings,
            header_workers=int(section("serve", profile)["header_workers"]),
        )
    )
    body = {
        "dicom_dir": str(case["folder"]),
        "nodule_xyz_mm": list(case["nodule"]),
        "patient_id": case["mrn"],
    }
    reps = size.reps * 4
    try:
        timed = interleaved(
            {
                "end to end": lambda: predict(request)["probability"],
                "service": lambda: service.predict(body)["probability"],
                "model only": lambda: float(predict_onnx(session, inputs)[0]),
            },
            reps=reps,
            warmup=max(1, size.warmup),
        )
    finally:
        service.close()
    medians = {}
    for name, label in (
        ("end to end", "predict() in-process, end to end"),
        ("service", "PredictionService.predict(), session, store and header workers kept open"),
        ("model only", "predict_onnx() alone, same inputs"),
    ):
        medians[name] = result.add(label, "ms", [s * 1e3 for s, _ in timed[name]])["median"]
    result.ratio(
        "end to end / model only (in-process)",
        medians["end to end"] / medians["model only"],
        "how many times the model call a whole prediction costs (the rest: session open, "
        "DICOM read, crop, Feast lookup)",
    )
    result.ratio(
        "predict() / service (in-process)",
        medians["end to end"] / medians["service"],
        "what reopening and re-verifying the model and the store on every call costs",
    )
    probabilities = [p for name in timed for _, p in timed[name]]

    argv = _cli_argv(root, case, profile)
    help_argv = [sys.executable, "-m", "orchestration.cli", "predict", "--help"]
    imports_argv = [sys.executable, "-c", IMPORTS_ONLY]
    cli_reps = max(1, size.reps)
    cli = interleaved(
        {
            "cli": lambda: _subprocess(argv),
            "help": lambda: _subprocess(help_argv),
            "imports": lambda: _subprocess(imports_argv),
        },
        reps=cli_reps,
        warmup=min(1, size.warmup),
    )
    cli_median = result.add(
        "CLI subprocess (python -m orchestration.cli predict)",
        "ms",
        [s * 1e3 for s, _ in cli["cli"]],
    )["median"]
    help_median = result.add(
        "CLI start-up floor (predict --help)", "ms", [s * 1e3 for s, _ in cli["help"]]
    )["median"]
    imports_median = result.add(
        "predict-path imports only (fresh process)", "ms", [s * 1e3 for s, _ in cli["imports"]]
    )["median"]
    result.ratio(
        "predict-path imports / CLI subprocess",
        imports_median / cli_median,
        "share of the CLI's time spent importing (pandas, pydicom, onnxruntime, Feast)",
    )
    result.ratio(
        "CLI subprocess / in-process end to end",
        cli_median / medians["end to end"],
        "above 1.0: process start-up and imports cost more than the prediction itself",
    )
    result.ratio(
        "CLI start-up floor / CLI subprocess",
        help_median / cli_median,
        "share of the CLI's time that is bare interpreter + argparse start-up",
    )
    cli_probability = float(json.loads(cli["cli"][0][1])["probability"])
    spread = float(np.ptp([*probabilities, cli_probability]))
    result.config = {
        "profile": profile,
        "dicom_series_in_folder": case["series"],
        "dicom_files": case["files"],
        "volume_shape_zyx": list(scan.volume.hu.shape),
        "crop_shape_zyx": list(spec.crop_shape_zyx),
        "max_timepoints": spec.max_timepoints,
        "ehr_features": len(spec.ehr_feature_names),
        "ehr_source": ehr.source,
        "in_process_reps": reps,
        "cli_reps": cli_reps,
        "probability_spread_all_calls": spread,
    }
    result.notes.append(
        "End to end and model only alternate call by call in one process (warm caches, "
        "modules imported); end to end opens and sha256-verifies the ONNX session and the "
        "Feast store on every call, as `lungjepa predict` does. The CLI figures are fresh "
        "processes (`--profile <profile> predict ...`, `predict --help`, the imports alone), "
        "interleaved."
    )
    return result

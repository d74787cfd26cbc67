"""`lungjepa` prediction commands, torch-free: `predict` (one nodule, or a batch) and
`serve` (the HTTP prediction service), with the folders and curation settings they share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from orchestration.params import REPO_ROOT, privacy_config, resolve_path, section


def _serving_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(data folder with feast/, artifacts folder): the flags, else params.yaml paths."""
    paths = section("paths")
    data_dir = resolve_path(args.data_dir or paths["data"])
    return data_dir, resolve_path(args.artifacts_dir or paths["artifacts"])


def _serving_curation() -> Any:
    """The curation settings a prediction must share with training (params.yaml)."""
    from serving.predict import CurationSettings

    return CurationSettings(
        min_slices=int(section("curate")["min_slices"]),
        date_shift_max_days=privacy_config().date_shift_max_days,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """The prediction service (serving/http.py): models and feature store kept open."""
    from serving.http import serve
    from serving.service import PredictionService, ServiceConfig

    data_dir, artifacts_dir = _serving_dirs(args)
    service = PredictionService(
        ServiceConfig(
            artifacts_dir=artifacts_dir,
            data_dir=data_dir,
            feature_repo_dir=REPO_ROOT / "feature_repo",
            curation=_serving_curation(),
            header_workers=int(section("serve")["header_workers"]),
            allowed_dirs=tuple(Path(d) for d in args.allow_dir or ()),
        )
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"lungjepa serve: listening on {args.host}, beyond this machine: put it behind the "
            "hospital's TLS proxy and access control",
            file=sys.stderr,
        )
    health = service.health()
    print(
        f"lungjepa serve: http://{args.host}:{args.port} ({health['status']}, production "
        f"{health['production_version']}); POST /predict, /predict/batch; GET /health, /models",
        file=sys.stderr,
    )
    try:
        serve(service, args.host, args.port)
    finally:
        service.close()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Torch-free: reads DICOM with the curation code, Feast online features, verified ONNX.

    Exit status: 0 done; 2 a bad input (message on stderr); batch mode: 1 when some rows
    could not be predicted (each such row carries its ``error``).
    """
    from models.onnx_runtime import ModelIntegrityError
    from serving.batch import BatchRequest, predict_batch
    from serving.errors import PredictionError
    from serving.model import resolve_model_path
    from serving.predict import PredictRequest, parse_date, parse_nodule, predict

    single = (args.dicom, args.nodule, args.patient_id)
    batch = (args.annotations, args.dicom_root)
    if not (all(single) and not any(batch)) and not (all(batch) and not any(single)):
        print(
            "lungjepa predict: give --dicom, --nodule and --patient-id (one nodule), "
            "or --annotations and --dicom-root (batch)",
            file=sys.stderr,
        )
        return 2
    data_dir, artifacts_dir = _serving_dirs(args)
    settings = _serving_curation()
    try:
        model_path = resolve_model_path(args.model, artifacts_dir)
        if args.annotations:
            rows = predict_batch(
                BatchRequest(
                    annotations_csv=Path(args.annotations),
                    dicom_root=Path(args.dicom_root),
                    model_path=model_path,
                    data_dir=data_dir,
                    feature_repo_dir=REPO_ROOT / "feature_repo",
                    curation=settings,
                    allow_missing_ehr=args.allow_missing_ehr,
                )
            )
            for row in rows:
                print(json.dumps(row))
            failed = sum("error" in row for row in rows)
            print(
                f"lungjepa predict: {len(rows) - failed} predicted, {failed} failed",
                file=sys.stderr,
            )
            return 1 if failed else 0
        request = PredictRequest(
            dicom_dir=Path(args.dicom),
            nodule_xyz_mm=parse_nodule(args.nodule),
            patient_id=args.patient_id,
            model_path=model_path,
            data_dir=data_dir,
            feature_repo_dir=REPO_ROOT / "feature_repo",
            curation=settings,
            at=parse_date(args.at) if args.at else None,
            diameter_mm=args.diameter,
            features_json=Path(args.features_json) if args.features_json else None,
            allow_missing_ehr=args.allow_missing_ehr,
        )
        result = predict(request)
    except (PredictionError, ModelIntegrityError) as error:
        print(f"lungjepa predict: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this subject's subcommands on the `lungjepa` parser."""
    pred = sub.add_parser(
        "predict", help="malignancy probability for one nodule (ONNX, Feast online; no torch)"
    )
    pred.add_argument("--dicom", help="folder with the patient's DICOM files")
    pred.add_argument(
        "--nodule",
        help="X,Y,Z world mm (LPS, as annotations.csv); write --nodule=-1,2,3 when X < 0",
    )
    pred.add_argument("--diameter", type=float, help="nodule diameter, mm (reported)")
    pred.add_argument("--patient-id", help="hospital patient id (DICOM PatientID)")
    pred.add_argument(
        "--at",
        help="the real scan date YYYY-MM-DD: picks the study (default: latest); outputs carry "
        "the shifted date",
    )
    pred.add_argument("--model", help="model.onnx path, or a name in production.json (jepa)")
    pred.add_argument("--features-json", help="EHR features {name: value} instead of Feast")
    pred.add_argument(
        "--allow-missing-ehr", action="store_true", help="unknown patient: imaging only"
    )
    pred.add_argument("--annotations", help="batch: LUNA16 CSV (seriesuid,coordX,coordY,coordZ)")
    pred.add_argument("--dicom-root", help="batch: folder holding the CSV's series")
    pred.add_argument("--data-dir", help="data folder with feast/ (default: params paths.data)")
    pred.add_argument("--artifacts-dir", help="artifacts folder (default: params paths.artifacts)")
    pred.set_defaults(func=cmd_predict)

    srv = sub.add_parser(
        "serve", help="HTTP prediction service: models and Feast kept open (no torch)"
    )
    srv.add_argument("--host", default="127.0.0.1", help="default loopback only")
    srv.add_argument("--port", type=int, default=8765)
    srv.add_argument(
        "--allow-dir",
        action="append",
        help="a folder requests may name (DICOM, annotations); repeatable; default: any",
    )
    srv.add_argument("--data-dir", help="data folder with feast/ (default: params paths.data)")
    srv.add_argument("--artifacts-dir", help="artifacts folder (default: params paths.artifacts)")
    srv.set_defaults(func=cmd_serve)

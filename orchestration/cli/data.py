"""`lungjepa` data commands that work on any folder, without Dagster: `synth` (a synthetic
raw archive) and `curate` (one cohort's DICOM export).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestration.params import privacy_config, section


def cmd_synth(args: argparse.Namespace) -> int:
    from cohorts.synthetic import generate_archive, preset_config

    synth = section("synth")
    config = preset_config(
        args.preset or synth["preset"],
        seed=synth["seed"] if args.seed is None else args.seed,
        regime=synth["regime"] if args.regime is None else args.regime,
        workers=args.workers or synth["workers"],
    )
    summary = generate_archive(Path(args.out), config, progress=True)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    """Any folder of DICOM files (the pipeline's raw layout, or a hospital export as it is)."""
    from cohorts.dicom import CurationConfig, RawCohort, curate_cohort

    params = section("curate")
    if args.workers:
        params["workers"] = args.workers
    raw = Path(args.input)
    if not raw.is_dir():
        print(f"lungjepa curate: input folder not found: {raw}", file=sys.stderr)
        return 2
    config = CurationConfig.from_params(params, privacy_config())
    cohort = RawCohort.from_folder(
        raw,
        annotations=Path(args.annotations) if args.annotations else None,
        labels=Path(args.labels) if args.labels else None,
    )
    try:
        summary = curate_cohort(cohort, Path(args.output), config, progress=True)
    except (OSError, ValueError) as error:
        print(f"lungjepa curate: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this subject's subcommands on the `lungjepa` parser."""
    synth = sub.add_parser("synth", help="write a synthetic raw archive")
    synth.add_argument("--out", required=True)
    synth.add_argument("--preset", choices=["tiny", "demo", "study"])
    synth.add_argument("--seed", type=int)
    synth.add_argument("--regime", type=float)
    synth.add_argument("--workers", type=int)
    synth.set_defaults(func=cmd_synth)

    curate = sub.add_parser("curate", help="curate one cohort's DICOM export")
    curate.add_argument(
        "--input",
        required=True,
        help="a folder of DICOM files in any layout, or the pipeline's raw cohort folder "
        "(dicom/ with annotations.csv and labels.csv beside it)",
    )
    curate.add_argument(
        "--output", required=True, help="curated output folder (not inside --input)"
    )
    curate.add_argument(
        "--annotations", help="nodule annotations CSV (seriesuid, coordX/Y/Z mm, diameter_mm)"
    )
    curate.add_argument(
        "--labels", help="labels CSV (person_id, seriesuid, malignant, diagnosis_date)"
    )
    curate.add_argument("--workers", type=int)
    curate.set_defaults(func=cmd_curate)

"""`lungjepa`: the command line. Pipeline steps run as Dagster materialisations (so they show
in the UI's run history); `synth` and `curate` also work on any folder without Dagster.

The profile (LUNGJEPA_PROFILE, or --profile) is applied before the Dagster modules are
imported, because their Config defaults are read from params.yaml at import time: every
handler imports what it needs (Dagster, torch, Feast) inside itself, so importing this
package stays light (pool workers re-import the `lungjepa` script; tests/cohorts/
test_parallel.py).

Here: the parser and `main`. The subcommands, each beside its parser, by subject:
pipeline.py (demo, materialize, the steps, study; the Dagster instance), models.py
(ablation, promote, rollback), data.py (synth, curate), prediction.py (predict, serve).
"""

from __future__ import annotations

import argparse
import os

from orchestration.cli import data, models, pipeline, prediction
from orchestration.cli.pipeline import demo_summary, materialize, replicate_run_config
from orchestration.params import PROFILE_ENV

__all__ = ["build_parser", "demo_summary", "main", "materialize", "replicate_run_config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungjepa", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="params.yaml profile, e.g. tiny (default: none)")
    sub = parser.add_subparsers(dest="command", required=True)
    for subject in (pipeline, models, data, prediction):  # the order `lungjepa --help` lists
        subject.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.profile:
        os.environ[PROFILE_ENV] = args.profile
    return args.func(args)

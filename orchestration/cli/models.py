"""`lungjepa` model commands: the out-of-fold ablations (`ablation`, `ablation --pretrain`),
and `promote` / `rollback`, which move the production pointer by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from orchestration.cli.pipeline import materialize
from orchestration.params import PROFILE_ENV, section

if TYPE_CHECKING:  # the CLI imports torch, Dagster and Feast only in the command that runs
    from models.encoders import MultimodalEncoder
    from orchestration.resources import PipelinePaths


def cmd_ablation(args: argparse.Namespace) -> int:
    """An ablation on the pipeline's examples, out of fold; then RESULTS.md is re-rendered.

    Default: readout x patch-stem variants of from-scratch models (metrics/ablation.json).
    --pretrain: JEPA pretraining variants (metrics/pretrain_ablation.json), each pretrained
    on the archive into artifacts/ablation/<variant> (resumed there after a kill).
    """
    from cohorts.example_set import load_examples
    from cohorts.files import atomic_write_json
    from models.ablation import run_ablation, run_pretrain_ablation
    from models.jepa.config import encoder_config_for
    from orchestration.assets.evaluation import DiagnosticConfig
    from orchestration.assets.training import PretrainRunConfig
    from orchestration.resources import PipelinePaths
    from orchestration.study import settings_fingerprint

    paths = PipelinePaths()
    try:
        cohorts = {c: load_examples(paths.examples(c)) for c in ("archive", "internal", "external")}
    except FileNotFoundError as error:
        print(f"lungjepa ablation: {error}; run `make demo` first", file=sys.stderr)
        return 2
    settings = section("ablation")
    evaluate = section("evaluate")
    pretrain_config = PretrainRunConfig().domain("cpu")
    common = {
        "n_replicates": evaluate["bootstrap_replicates"],
        "seed": evaluate["seed"],
        "progress": print,
    }
    start = time.perf_counter()
    if args.pretrain:
        spec = settings["pretrain"]
        rows = run_pretrain_ablation(
            cohorts["archive"],
            cohorts["internal"],
            cohorts["external"],
            pretrain_config,
            DiagnosticConfig().domain(),
            spec["variants"],
            paths.artifacts / "ablation",
            models=spec["models"],
            encoder_probe=_shared_cause_probe(paths),
            **common,
        )
        name, note = (
            "pretrain_ablation.json",
            (
                "Out-of-fold internal AUC of the JEPA models when one ingredient of pretraining "
                "changes (params.yaml ablation.pretrain); each variant pretrains on the archive "
                "with the pipeline's settings otherwise, then the same folds, seeds and LP-FT "
                "recipe. Diameter R^2: 5-fold cross-validated ridge probe of log diameter on the "
                "frozen encoder's image tokens, over the archive's nodules. S R^2 and added AUC "
                "(generator data only): the instrument's check of each variant's frozen encoder "
                "on site 1 (docs/ARCHITECTURE.md): how well its image tokens read the shared "
                "cause S (a random-init encoder of the same shape beside it) and the AUC they "
                "add to size + EHR."
            ),
        )
    else:
        rows = run_ablation(
            cohorts["internal"],
            cohorts["external"],
            encoder_config_for(cohorts["internal"], pretrain_config),
            DiagnosticConfig().domain(),
            [tuple(v) for v in settings["variants"]],
            models=settings["models"],
            **common,
        )
        name, note = (
            "ablation.json",
            (
                "Out-of-fold internal AUC of from-scratch models that differ only in the "
                "readout (what the head reads from the latest scan's tokens) and the patch stem "
                "(how a patch becomes a token); same folds, seeds and finetuning recipe as the "
                "pipeline's diagnostic models."
            ),
        )
    profile = os.environ.get(PROFILE_ENV)
    command = "lungjepa " + (f"--profile {profile} " if profile else "") + "ablation"
    command += " --pretrain" if args.pretrain else ""
    atomic_write_json(
        paths.metrics / name,
        {
            "note": note,
            "provenance": f"{command} ({time.perf_counter() - start:.0f} s)",
            # the measured params and generator settings (RESULTS.md flags other ones)
            "settings_fingerprint": settings_fingerprint(),
            "rows": rows,
        },
    )
    # RESULTS.md is rendered by the evaluation asset, which reads metrics/*ablation.json
    return 0 if materialize(["evaluation"]).success else 1


def _shared_cause_probe(
    paths: PipelinePaths,
) -> Callable[[MultimodalEncoder], Mapping[str, float]] | None:
    """On the generator's data: each ablation encoder's instrument reading (how its frozen
    image tokens read the shared cause S, and the AUC they add to size + EHR); None on real
    data, which have no known causes."""
    from models.instrument import InstrumentConfig, check_encoder, encoder_summary
    from orchestration.assets.instrument import site_truth

    inputs = site_truth(paths)
    if inputs is None:
        return None
    return lambda encoder: encoder_summary(check_encoder(*inputs, encoder, InstrumentConfig()))


def cmd_promote(args: argparse.Namespace) -> int:
    """Move the production pointer by hand (`promote VERSION`, `rollback`); logged like the gate."""
    from models.promotion import read_log, rollback_target
    from orchestration.assets.export import PROMOTION_LOG, move_production
    from orchestration.resources import PipelinePaths

    paths = PipelinePaths(**({"artifacts_dir": args.artifacts_dir} if args.artifacts_dir else {}))
    models = paths.artifacts / "models"
    try:
        if args.command == "promote":
            record = move_production(paths, args.version, "promote", args.reason)
        else:
            pointer = models / "production.json"
            current = json.loads(pointer.read_text())["version"] if pointer.exists() else None
            target = rollback_target(read_log(models / PROMOTION_LOG), current)
            if target is None:
                print("lungjepa rollback: no earlier production model in the log", file=sys.stderr)
                return 2
            record = move_production(paths, target, "rollback", args.reason)
    except ValueError as error:
        print(f"lungjepa {args.command}: {error}", file=sys.stderr)
        return 2
    print(f"production model: {record['challenger']} (was {record['champion']}); logged")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this subject's subcommands on the `lungjepa` parser."""
    promote = sub.add_parser("promote", help="point production at a model version by hand")
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted by hand")
    promote.add_argument("--artifacts-dir", help="default params.yaml paths.artifacts")
    promote.set_defaults(func=cmd_promote)
    rollback = sub.add_parser("rollback", help="point production back at the previous model")
    rollback.add_argument("--reason", default="rolled back by hand")
    rollback.add_argument("--artifacts-dir", help="default params.yaml paths.artifacts")
    rollback.set_defaults(func=cmd_promote)

    ablation = sub.add_parser(
        "ablation", help="readout / tokenizer ablation, out of fold (metrics/ablation.json)"
    )
    ablation.add_argument(
        "--pretrain",
        action="store_true",
        help="the JEPA pretraining ablation instead (metrics/pretrain_ablation.json)",
    )
    ablation.set_defaults(func=cmd_ablation)

"""The pretraining command line: one process, or one rank under torchrun (DDP).

    python -m models.jepa.cli --examples data/examples/archive.npz --out DIR [flags]
    torchrun --nproc_per_node 2 -m models.jepa.cli --examples X.npz --out DIR

Every PretrainConfig field is a flag (``--mask-tube false``, ``--ema-momentum 0.996 1.0``);
values come from the dataclass defaults < params.yaml ``pretrain`` (--params) < a JSON object
(--config) < the flags. Rank 0 prints the run's summary as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from cohorts.example_set import load_examples
from cohorts.files import atomic_write_text
from models.jepa.config import PretrainConfig
from models.jepa.pretrain import pretrain


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.jepa.cli", description="Multimodal JEPA pretraining"
    )
    parser.add_argument("--examples", type=Path, required=True, help="examples .npz")
    parser.add_argument("--out", type=Path, required=True, help="output / checkpoint directory")
    parser.add_argument("--params", type=Path, help="params.yaml: its `pretrain` section")
    parser.add_argument("--config", help="JSON object or path to a JSON file (PretrainConfig)")
    parser.add_argument("--probe-train", type=Path, help="labeled examples .npz for the probe")
    parser.add_argument("--probe-test", type=Path, help="labeled examples .npz for the probe")
    parser.add_argument(
        "--inputs", help="JSON object the card records as the examples' provenance (`inputs`)"
    )
    parser.add_argument("--init-encoder", type=Path, help="encoder.safetensors to warm-start from")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--rank-digest",
        action="store_true",
        help="each rank writes OUT/rank_digests/rank<r>.sha256 of its final weights",
    )
    for f in dataclasses.fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, type=_parse_bool, default=None)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, type=float, nargs=len(default), default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=None)
    return parser


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """Defaults < params.yaml `pretrain` < --config JSON < individual flags."""
    config = PretrainConfig()
    if args.params is not None:
        import yaml

        with open(args.params) as handle:
            config = PretrainConfig.from_dict(yaml.safe_load(handle)["pretrain"], config)
    if args.config:
        text = args.config
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        config = PretrainConfig.from_dict(json.loads(text), config)
    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(PretrainConfig)
        if getattr(args, f.name) is not None
    }
    return PretrainConfig.from_dict(flags, config)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (single process or one torchrun rank)."""
    args = parser().parse_args(argv)
    config = config_from_args(args)
    probe_sets = None
    if (args.probe_train is None) != (args.probe_test is None):
        raise SystemExit("--probe-train and --probe-test go together")
    if args.probe_train is not None:
        probe_sets = (load_examples(args.probe_train), load_examples(args.probe_test))
    result = pretrain(
        load_examples(args.examples),
        args.out,
        config,
        progress=not args.no_progress,
        probe_sets=probe_sets,
        inputs=json.loads(args.inputs) if args.inputs else None,
        init_encoder=args.init_encoder,
    )
    rank = int(os.environ.get("RANK", "0"))
    if args.rank_digest:
        atomic_write_text(args.out / "rank_digests" / f"rank{rank}.sha256", result.weights_digest)
    if rank == 0:
        print(json.dumps(result.summary(), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The readout / tokenizer ablation: which part of the imaging path reads the nodule.

Each variant (readout, patch stem) trains the same from-scratch models with the same
out-of-fold protocol (models/protocol.py), so the rows differ only in that variant; the
rows give out-of-fold internal AUC with its bootstrap CI and the finetuning time per fold.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from models.data import ExampleSet
from models.encoders import EncoderConfig, MultimodalEncoder
from models.evaluation import bootstrap_auc_ci, roc_auc
from models.protocol import ProtocolConfig, run_protocol


def run_ablation(
    internal: ExampleSet,
    external: ExampleSet,
    encoder_config: EncoderConfig,
    protocol: ProtocolConfig,
    variants: Sequence[tuple[str, str]],
    models: Sequence[str] = ("imaging_only",),
    n_replicates: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (readout, patch_stem) variant and model: OOF internal AUC, CI, n, time.

    No label-efficiency runs; from-scratch models only (a pretrained encoder fixes its stem).
    """
    rows = []
    for readout, stem in variants:
        template = MultimodalEncoder(replace(encoder_config, patch_stem=stem))
        config = replace(protocol, readout=readout, label_fractions=())
        start = time.perf_counter()
        result = run_protocol(
            internal, external, None, config, template=template, progress=False, models=models
        )
        seconds = (time.perf_counter() - start) / len(result.folds)
        for model in models:
            y = result.labels["internal"]
            p = result.predictions["internal"][model]
            lo, hi = bootstrap_auc_ci(y, p, n_replicates, seed)
            row = {
                "readout": readout,
                "patch_stem": stem,
                "model": model,
                "auc": roc_auc(y, p),
                "ci": [lo, hi],
                "n": int(len(y)),
                "external_auc": roc_auc(
                    result.labels["external"], result.predictions["external"][model]
                ),
                "seconds_per_fold": seconds / len(models),
            }
            rows.append(row)
            if progress is not None:
                progress(
                    f"{readout:<17} {stem:<7} {model:<13} AUC {row['auc']:.3f} [{lo:.3f}, {hi:.3f}]"
                )
    return rows

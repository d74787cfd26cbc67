"""Ablations, each row differing from the pipeline's run in one named thing only.

run_ablation: the imaging path (readout, patch stem) of from-scratch models: which part
reads the nodule. run_pretrain_ablation: the JEPA ingredients (masks, EMA schedule,
archive size, no pretraining at all): what each is worth to the pretrained models. Both use
the out-of-fold protocol of models/protocol.py with the same folds and seeds, and give
out-of-fold internal AUC with its bootstrap CI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohorts.example_set import ExampleSet
from models.encoders import EncoderConfig, MultimodalEncoder, load_encoder
from models.evaluation import bootstrap_auc_ci, roc_auc
from models.jepa.config import PretrainConfig, build_encoder
from models.jepa.pretrain import pretrain
from models.jepa.probe import diameter_probe_cv_r2
from models.protocol import ProtocolConfig, ProtocolResult, run_protocol


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
            row = {
                "readout": readout,
                "patch_stem": stem,
                "model": model,
                **_scores(result, model, n_replicates, seed),
                "seconds_per_fold": seconds / len(models),
            }
            rows.append(row)
            if progress is not None:
                lo, hi = row["ci"]
                progress(
                    f"{readout:<17} {stem:<7} {model:<13} AUC {row['auc']:.3f} [{lo:.3f}, {hi:.3f}]"
                )
    return rows


def run_pretrain_ablation(
    archive: ExampleSet,
    internal: ExampleSet,
    external: ExampleSet,
    pretrain_config: PretrainConfig,
    protocol: ProtocolConfig,
    variants: Mapping[str, Mapping[str, Any]],
    work_dir: Path,
    models: Sequence[str] = ("jepa", "jepa_probe"),
    n_replicates: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    encoder_probe: Callable[[MultimodalEncoder], Mapping[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """One row per pretraining variant and model: what each JEPA ingredient is worth.

    A variant is a set of PretrainConfig overrides (masks, EMA, epochs, ...) plus two keys
    of its own: ``archive_fraction`` (pretrain on a random share of the archive's patients,
    seeded by the pretraining seed) and ``pretrain: false`` (no pretraining: the same recipe from a random
    initialisation, which separates what pretraining gives from what the LP-FT recipe
    gives). Each pretrained variant trains into work_dir/<name> and resumes there after a
    kill. Rows: out-of-fold internal AUC with CI, external AUC, and the cross-validated
    diameter probe on the archive (centre-token and mean pooling), plus what ``encoder_probe``
    measures of each variant's frozen encoder (on generator data, the orchestration passes the
    instrument's reading of the shared cause: models/instrument.py encoder_summary).
    """
    rows = []
    for name, spec in variants.items():
        overrides = dict(spec)
        pretrained = bool(overrides.pop("pretrain", True))
        fraction = float(overrides.pop("archive_fraction", 1.0))
        config = replace(pretrain_config, **{k: _as_field(v) for k, v in overrides.items()})
        start = time.perf_counter()
        if pretrained:
            keep = np.random.default_rng(config.seed).permutation(len(archive))
            subset = archive.subset(np.sort(keep[: max(1, round(fraction * len(archive)))]))
            result = pretrain(subset, work_dir / name, config, progress=False)
            encoder = load_encoder(result.encoder_path)
            card = json.loads(result.card_path.read_text())
            n_archive, ema = len(subset), card.get("ema", {}).get("target_to_init")
            # the training time the card records (summed over resumes): a rerun that finds
            # the variant already pretrained must not report its few seconds of loading
            trained_s = card.get("train_seconds")
        else:
            torch.manual_seed(config.seed)
            encoder = build_encoder(archive, config)
            n_archive, ema, trained_s = 0, None, 0.0
        pretrain_s = time.perf_counter() - start if trained_s is None else float(trained_s)
        probes = {
            f"diameter_r2_{pooling}": diameter_probe_cv_r2(encoder, archive, pooling)
            for pooling in ("centre", "mean")
        }
        if encoder_probe is not None:
            probes.update(encoder_probe(encoder))
        result = run_protocol(
            internal,
            external,
            encoder,
            replace(protocol, label_fractions=()),
            progress=False,
            models=models,
        )
        for model in models:
            row = {
                "variant": name,
                "overrides": dict(spec),
                "model": model,
                **_scores(result, model, n_replicates, seed),
                "n_archive": n_archive,
                "pretrain_seconds": pretrain_s,
                "ema_target_to_init": ema,
                **probes,
            }
            rows.append(row)
            if progress is not None:
                lo, hi = row["ci"]
                progress(
                    f"{name:<16} {model:<11} AUC {row['auc']:.3f} [{lo:.3f}, {hi:.3f}] "
                    f"ext {row['external_auc']:.3f} diameter R2 centre "
                    f"{probes['diameter_r2_centre']:.3f} mean {probes['diameter_r2_mean']:.3f}"
                    + (
                        f" S R2 {probes['shared_cause_r2']:.3f}"
                        if "shared_cause_r2" in probes
                        else ""
                    )
                )
    return rows


def _scores(result: ProtocolResult, model: str, n_replicates: int, seed: int) -> dict[str, Any]:
    """Out-of-fold internal AUC with its bootstrap CI and n, and the external AUC, of a model."""
    y, p = result.labels["internal"], result.predictions["internal"][model]
    lo, hi = bootstrap_auc_ci(y, p, n_replicates, seed)
    external = roc_auc(result.labels["external"], result.predictions["external"][model])
    return {"auc": roc_auc(y, p), "ci": [lo, hi], "n": int(len(y)), "external_auc": external}


def _as_field(value: Any) -> Any:
    """YAML lists become the tuples PretrainConfig's fields hold."""
    return tuple(value) if isinstance(value, list) else value

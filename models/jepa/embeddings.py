"""What a pretraining run's encoder and predictor say about a cohort, for the drift signals.

Why here: the data-quality layer (orchestration/quality.py) asks two questions of a JEPA run
without training anything: where each patient's latest scan sits in the encoder's embedding
space (embedding drift), and how well the predictor fills in one modality from the other
(the cross-modal drift signal). Both load the run's files (encoder.safetensors; checkpoint.pt
with weights_only) and run torch, so they live with the model code, not with Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cohorts.example_set import FIELDS, ExampleSet
from models.data import example_tensors
from models.encoders import EHR, IMAGE, EncoderConfig, MultimodalEncoder, load_encoder
from models.jepa.checkpoint import load_checkpoint
from models.jepa.loss import normalise_targets
from models.jepa.model import MultimodalJEPA
from models.jepa.predictor import JEPAPredictor


def _batches(examples: ExampleSet, batch_size: int) -> Iterator[list[torch.Tensor]]:
    """The examples' model inputs (FIELDS order) in batches of ``batch_size`` patients."""
    tensors = example_tensors(examples)
    for start in range(0, len(examples.patient_id), batch_size):
        yield [tensors[k][start : start + batch_size] for k in FIELDS]


def latest_embeddings(
    encoder_path: Path, examples: ExampleSet, batch_size: int = 64
) -> pd.DataFrame:
    """JEPA encoder tokens of each patient's latest time point, mean-pooled over valid tokens:
    one row per patient, columns dim_000 .. dim_{D-1}."""
    encoder = load_encoder(encoder_path).eval()
    latest = encoder.token_time_index == encoder.config.max_timepoints - 1
    pooled = []
    with torch.no_grad():
        for batch in _batches(examples, batch_size):
            tokens = encoder(*batch)
            weight = (encoder.valid_tokens(batch[2], batch[4]) & latest).float()[..., None]
            pooled.append((tokens * weight).sum(1) / weight.sum(1).clamp(min=1.0))
    values = torch.cat(pooled).numpy()
    return pd.DataFrame(values, columns=[f"dim_{i:03d}" for i in range(values.shape[1])])


def cross_modal_errors(
    run_dir: Path, examples: ExampleSet, batch_size: int = 64
) -> pd.DataFrame | None:
    """Per patient, the JEPA predictor's error predicting EHR tokens from image tokens and back.

    Uses the pretraining run's final checkpoint (context encoder + predictor, loaded with
    weights_only) and its EMA target encoder, as pretraining does: smooth-L1 between predicted
    and layer-normalised target tokens, averaged over the target tokens. None when the run
    folder has no checkpoint.
    """
    state = load_checkpoint(run_dir / "checkpoint.pt")
    card_path = run_dir / "card.json"
    if state is None or not card_path.exists():
        return None
    card = json.loads(card_path.read_text())
    p = card["params"]
    encoder = MultimodalEncoder(EncoderConfig.from_dict(card["encoder_config"]))
    predictor = JEPAPredictor(p["embed_dim"], p["predictor_dim"], p["predictor_depth"], p["heads"])
    model = MultimodalJEPA(encoder, predictor)
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    target = load_encoder(run_dir / "encoder.safetensors").eval()
    image = encoder.token_modality == IMAGE
    ehr = encoder.token_modality == EHR
    rows: dict[str, list[np.ndarray]] = {"ehr_from_image": [], "image_from_ehr": []}
    with torch.no_grad():
        for batch in _batches(examples, batch_size):
            valid = encoder.valid_tokens(batch[2], batch[4])
            targets = normalise_targets(target(*batch))
            for name, source, goal in (
                ("ehr_from_image", image, ehr),
                ("image_from_ehr", ehr, image),
            ):
                context, wanted = valid & source, valid & goal
                predicted = model(*batch, context, wanted)
                error = F.smooth_l1_loss(predicted, targets, reduction="none").mean(-1)
                count = wanted.sum(1)
                per_patient = (error * wanted).sum(1) / count.clamp(min=1)
                usable = (count > 0) & (context.sum(1) > 0)
                rows[name].append(torch.where(usable, per_patient, torch.nan).numpy())
    return pd.DataFrame({name: np.concatenate(parts) for name, parts in rows.items()})

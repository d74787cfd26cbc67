"""The ablations run the protocol once per variant, on the same folds, changing only that variant."""

import json
from dataclasses import replace

import numpy as np

from cohorts.example_set import random_examples
from models.ablation import run_ablation, run_pretrain_ablation
from models.encoders import EncoderConfig, MultimodalEncoder, load_encoder
from models.evaluation import roc_auc
from models.finetune import FinetuneConfig
from models.jepa.config import PretrainConfig
from models.protocol import JepaRecipe, ProtocolConfig, run_protocol


def test_each_variant_is_the_protocol_with_that_readout_and_stem() -> None:
    internal = random_examples(45, crop_size_vox=16, n_ehr=4, seed=1)
    external = random_examples(20, crop_size_vox=16, n_ehr=4, seed=2)
    encoder = EncoderConfig(n_ehr_features=4, crop_size_vox=16, embed_dim=16, depth=1, heads=2)
    protocol = ProtocolConfig(finetune=FinetuneConfig(epochs=2, batch_size=16), folds=3)
    lines: list[str] = []
    rows = run_ablation(
        internal, external, encoder, protocol, [("mean", "linear"), ("centre", "conv")],
        n_replicates=50, progress=lines.append,
    )  # fmt: skip
    assert [(r["readout"], r["patch_stem"], r["model"]) for r in rows] == [
        ("mean", "linear", "imaging_only"),
        ("centre", "conv", "imaging_only"),
    ]
    assert len(lines) == 2 and all(r["n"] == 45 and r["seconds_per_fold"] > 0 for r in rows)
    # the row is the protocol's own out-of-fold AUC for that variant
    template = MultimodalEncoder(replace(encoder, patch_stem="conv"))
    config = replace(protocol, readout="centre", label_fractions=())
    again = run_protocol(
        internal, external, None, config, template=template, progress=False,
        models=("imaging_only",),
    )  # fmt: skip
    y = again.labels["internal"]
    assert np.isclose(rows[1]["auc"], roc_auc(y, again.predictions["internal"]["imaging_only"]))
    assert rows[0]["ci"][0] <= rows[0]["auc"] <= rows[0]["ci"][1]


def test_pretrain_variants_pretrain_what_they_name_and_score_it_like_the_protocol(tmp_path) -> None:
    archive = random_examples(40, crop_size_vox=16, n_ehr=4, seed=3)
    internal = random_examples(45, crop_size_vox=16, n_ehr=4, seed=1)
    external = random_examples(20, crop_size_vox=16, n_ehr=4, seed=2)
    pretrain_config = PretrainConfig(
        epochs=1, batch_size=8, embed_dim=16, depth=1, heads=2, predictor_dim=8,
        predictor_depth=1, warmup_epochs=0, checkpoint_every_steps=2, device="cpu",
    )  # fmt: skip
    protocol = ProtocolConfig(
        finetune=FinetuneConfig(epochs=2, batch_size=16), folds=3, jepa=JepaRecipe(probe_epochs=1)
    )
    variants = {"half": {"archive_fraction": 0.5, "mask_tube": False}, "none": {"pretrain": False}}
    probed: list[int] = []

    def encoder_probe(encoder) -> dict[str, float]:  # what the CLI's instrument reading returns
        probed.append(encoder.config.embed_dim)
        return {"shared_cause_r2": 0.25 * len(probed)}

    rows = run_pretrain_ablation(
        archive, internal, external, pretrain_config, protocol, variants, tmp_path,
        n_replicates=50, encoder_probe=encoder_probe,
    )  # fmt: skip
    assert probed == [16, 16]  # once per variant, on its encoder (pretrained or random init)
    assert [r["shared_cause_r2"] for r in rows] == [0.25, 0.25, 0.5, 0.5]
    assert [(r["variant"], r["model"]) for r in rows] == [
        ("half", "jepa"), ("half", "jepa_probe"), ("none", "jepa"), ("none", "jepa_probe"),
    ]  # fmt: skip
    assert [r["n_archive"] for r in rows] == [20, 20, 0, 0]
    card = json.loads((tmp_path / "half" / "card.json").read_text())
    assert card["params"]["mask_tube"] is False and card["n_examples"] == 20
    assert not (tmp_path / "none").exists()  # no pretraining, nothing written
    assert rows[0]["pretrain_seconds"] == card["train_seconds"] > 0
    assert rows[0]["ema_target_to_init"] is not None and rows[2]["ema_target_to_init"] is None
    for row in rows:
        assert row["ci"][0] <= row["auc"] <= row["ci"][1]
        assert -1.0 < row["diameter_r2_mean"] <= 1.0 and -1.0 < row["diameter_r2_centre"] <= 1.0
    # a pretrained row is the protocol's out-of-fold AUC on the encoder that variant wrote
    encoder = load_encoder(tmp_path / "half" / "encoder.safetensors")
    again = run_protocol(
        internal, external, encoder, replace(protocol, label_fractions=()), progress=False,
        models=("jepa",),
    )  # fmt: skip
    y = again.labels["internal"]
    assert np.isclose(rows[0]["auc"], roc_auc(y, again.predictions["internal"]["jepa"]))

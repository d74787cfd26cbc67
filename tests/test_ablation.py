"""The readout / tokenizer ablation runs the protocol once per variant, on the same folds."""

from dataclasses import replace

import numpy as np

from models.ablation import run_ablation
from models.data import random_examples
from models.encoders import EncoderConfig, MultimodalEncoder
from models.evaluation import roc_auc
from models.finetune import FinetuneConfig
from models.protocol import ProtocolConfig, run_protocol


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

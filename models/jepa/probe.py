"""Linear probes: what does pretraining make linearly readable from the frozen encoder?

Features (models/readout.py): the latest scan's centre patch token(s), where the nodule
sits, beside the mean of that scan's valid tokens. Malignancy: image and EHR tokens ->
standardised logistic regression -> test AUC. Nodule size: image tokens only -> ridge
regression -> test R^2 of log diameter (size is the label's strongest driver, and what the
Brock model reads). Each is compared with the same probe on a randomly initialised encoder.
"""

from __future__ import annotations

import numpy as np
import torch

from cohorts.example_set import FIELDS, ExampleSet
from models.data import example_tensors
from models.encoders import IMAGE, MultimodalEncoder
from models.readout import centre_token_mask, latest_scan_tokens, latest_timepoint, masked_mean


@torch.no_grad()
def encoder_features(
    encoder: MultimodalEncoder,
    examples: ExampleSet,
    batch_size: int = 64,
    image_only: bool = False,
) -> np.ndarray:
    """Frozen features [N, 2D]: the latest scan's centre patch token(s), then the mean over
    that time point's valid tokens (its image tokens only when ``image_only``)."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    tensors = example_tensors(examples)
    out: list[np.ndarray] = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = {k: tensors[k][start : start + batch_size].to(device) for k in FIELDS}
            tokens = encoder(*(batch[k] for k in FIELDS)).float()  # [B, N, D]
            select = latest_scan_tokens(encoder, batch["scan_mask"], batch["ehr_mask"])
            centre = masked_mean(tokens, select & centre_token_mask(encoder)[None, :])
            if image_only:
                select &= (encoder.token_modality == IMAGE)[None, :]
            feats = torch.cat([centre, masked_mean(tokens, select)], dim=-1)
            out.append(feats.cpu().numpy())
    finally:
        encoder.train(was_training)
    return np.concatenate(out, axis=0)


def check_probe_set(examples: ExampleSet, name: str) -> None:
    """Raise ValueError unless the set has labeled examples of both classes (AUC needs both)."""
    labels = examples.label[examples.label >= 0]
    if np.unique(labels).size < 2:
        raise ValueError(f"probe {name} set needs labeled examples of both classes")


def linear_probe_auc(
    encoder: MultimodalEncoder, train: ExampleSet, test: ExampleSet, seed: int = 0
) -> float:
    """Test AUC of a logistic regression fitted on frozen-encoder features of the labeled train set."""
    # sklearn is imported here, not at module level: it costs seconds of start-up in every
    # torchrun worker that imports the training loop but never probes
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    check_probe_set(train, "train")
    check_probe_set(test, "test")
    train = train.subset(np.flatnonzero(train.label >= 0))
    test = test.subset(np.flatnonzero(test.label >= 0))
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=5000, C=1.0, random_state=seed)
    )
    probe.fit(encoder_features(encoder, train), train.label.astype(int))
    scores = probe.predict_proba(encoder_features(encoder, test))[:, 1]
    return float(roc_auc_score(test.label.astype(int), scores))


def latest_diameter_mm(examples: ExampleSet) -> np.ndarray:
    """Annotated index-nodule diameter [N] at each patient's latest present scan."""
    latest = latest_timepoint(torch.from_numpy(examples.scan_mask)).numpy()
    return examples.diameter_mm[np.arange(len(examples)), latest].astype(np.float64)


def diameter_probe_r2(
    encoder: MultimodalEncoder, train: ExampleSet, test: ExampleSet, seed: int = 0
) -> float:
    """Test R^2 of a ridge regression of log diameter on frozen image-token features."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def usable(examples: ExampleSet) -> tuple[ExampleSet, np.ndarray]:
        diameter = latest_diameter_mm(examples)
        keep = np.flatnonzero(np.isfinite(diameter) & (diameter > 0))
        return examples.subset(keep), np.log(diameter[keep])

    (train, y_train), (test, y_test) = usable(train), usable(test)
    if len(train) < 3 or len(test) < 2:
        raise ValueError("diameter probe needs >= 3 train and >= 2 test nodules with a diameter")
    del seed  # ridge is deterministic; kept for a signature like linear_probe_auc's
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    probe.fit(encoder_features(encoder, train, image_only=True), y_train)
    predicted = probe.predict(encoder_features(encoder, test, image_only=True))
    return float(r2_score(y_test, predicted))


def diameter_probe_cv_r2(
    encoder: MultimodalEncoder, examples: ExampleSet, pooling: str = "centre", folds: int = 5
) -> float:
    """Cross-validated R^2 of a ridge regression of log diameter on frozen image tokens.

    Uses every scan with an annotated index nodule (the archive has them too: diameters are
    measurements, not malignancy labels), in `folds` shuffled folds, so the figure rests on
    hundreds of nodules rather than one small test split. pooling: "centre" (the latest
    scan's centre patch token(s), where the nodule sits) or "mean" (the mean of that scan's
    image tokens, the standard I-JEPA linear-probe pooling).
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if pooling not in ("centre", "mean"):
        raise ValueError(f"pooling must be 'centre' or 'mean', got {pooling!r}")
    diameter = latest_diameter_mm(examples)
    keep = np.flatnonzero(np.isfinite(diameter) & (diameter > 0))
    if len(keep) < 2 * folds:
        raise ValueError(f"diameter probe needs >= {2 * folds} nodules, got {len(keep)}")
    features = encoder_features(encoder, examples.subset(keep), image_only=True)
    width = features.shape[1] // 2
    features = features[:, :width] if pooling == "centre" else features[:, width:]
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    y = np.log(diameter[keep])
    predicted = cross_val_predict(probe, features, y, cv=KFold(folds, shuffle=True, random_state=0))
    return float(r2_score(y, predicted))

"""The synthetic instrument's own check: where each cause of the label is visible, and how much
AUC each view of the patient leaves for pretraining to add.

Why: the study asks whether JEPA pretraining helps when the modalities share the label's cause
(regime 0, docs/SYNTHETIC.md). Pretraining can only help there if the image carries
information about the shared cause S that a model reading the EHR does not already have, and
if a labeled cohort is too small to learn to read it. Whether that room exists is a property of
the generator, not of any model, and the generator knows the causes: truth/patients.csv holds
each patient's latents and the label's own logit. So this module measures, on one site's
patients (hundreds of them; their truth labels read here only, never by a model):

- visibility: cross-validated R^2 of each latent cause (S, M, H) from each view of the patient:
  the EHR feature vector, a fixed label-free image statistic (the crop's HU histogram), and the
  frozen JEPA encoder's image tokens beside a randomly initialised encoder's;
- headroom: cross-validated AUC of logistic models of the truth label on size alone, size and
  EHR, size and EHR and each image view, size and EHR and the true S (what a perfect reader of
  the shared cause could add), the true causes, the same with growth between scans, and the
  generator's own label logit.

Only the generator writes truth; real data have none, and the pipeline reports nothing here.
Features are of each patient's latest time point (examples are left-padded, latest last).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch stays out of the report renderer's imports (models/reporting.py)
    from cohorts.example_set import ExampleSet
    from models.encoders import MultimodalEncoder

CAUSES: dict[str, str] = {
    "shared_damage": "S, shared (CT emphysema, EHR smoking and lung codes)",
    "imaging_aggr": "M, CT only (margins, growth)",
    "ehr_history": "H, EHR only (oncologic history)",
}
"""The label's latent causes in truth/patients.csv, with what sees each (docs/SYNTHETIC.md)."""
SIZE = "log_diameter"
"""The label's strongest imaging driver, probed beside the causes: log diameter (mm) of the
latest scan's index nodule, from the annotations (a measurement, not truth)."""
TARGETS: dict[str, str] = {**CAUSES, SIZE: "size: log diameter at the latest scan"}

VIEWS: dict[str, str] = {
    "ehr": "EHR features",
    "crop_histogram": "crop HU histogram",
    "jepa_image": "JEPA image tokens (frozen)",
    "random_image": "random-init image tokens",
}
"""Views of the patient whose cause visibility is measured, with their report labels."""

HISTOGRAM_EDGES_HU: tuple[float, ...] = tuple(range(-1025, -475, 25)) + (4000.0,)
"""Bin edges of the crop histogram, HU: 25-HU bins over the lung window [-1025, -500) and one
bin for everything denser (vessels, nodule, wall); emphysema lives below about -950 HU."""


@dataclass(frozen=True)
class InstrumentConfig:
    """folds: cross-validation folds of every probe; seed: their shuffling."""

    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")


def crop_histogram(crops_hu: np.ndarray) -> np.ndarray:
    """Share of voxels per HU bin (HISTOGRAM_EDGES_HU) of each crop: [N, S, S, S] -> [N, B]."""
    flat = crops_hu.reshape(len(crops_hu), -1).astype(np.float32)
    edges = np.asarray(HISTOGRAM_EDGES_HU, dtype=np.float32)
    bins = np.clip(np.searchsorted(edges, flat, side="right") - 1, 0, len(edges) - 2)
    counts = np.stack([np.bincount(row, minlength=len(edges) - 1) for row in bins])
    return counts / flat.shape[1]


def view_features(
    examples: ExampleSet, encoder: MultimodalEncoder, random_encoder: MultimodalEncoder
) -> dict[str, np.ndarray]:
    """Each view's features [N, k] of every patient's latest time point (VIEWS' keys).

    EHR: the raw feature vector (zeros where that time point has no EHR); image views: the
    latest crop's histogram, and the centre and mean image tokens of each encoder
    (models/jepa/probe.py encoder_features).
    """
    from models.jepa.probe import encoder_features  # torch work only when features are asked for

    latest = examples.scan_mask.shape[1] - 1
    ehr = np.where(examples.ehr_mask[:, latest, None], examples.ehr[:, latest], 0.0)
    return {
        "ehr": ehr.astype(np.float64),
        "crop_histogram": crop_histogram(examples.crops_hu[:, latest]),
        "jepa_image": encoder_features(encoder, examples, image_only=True),
        "random_image": encoder_features(random_encoder, examples, image_only=True),
    }


def cv_r2(features: np.ndarray, target: np.ndarray, config: InstrumentConfig) -> float:
    """Out-of-fold R^2 of a standardised ridge regression (alpha by inner CV)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    folds = KFold(config.folds, shuffle=True, random_state=config.seed)
    predicted = cross_val_predict(probe, features, target, cv=folds)
    return float(r2_score(target, predicted))


def cv_auc(features: np.ndarray, label: np.ndarray, config: InstrumentConfig) -> float:
    """Out-of-fold AUC of a standardised L2 logistic regression, C chosen by inner 3-fold CV
    (wide views such as 128 image-token features need more shrinkage than size alone)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        {"logisticregression__C": [0.01, 0.1, 1.0]},
        scoring="roc_auc",
        cv=StratifiedKFold(3, shuffle=True, random_state=config.seed),
    )
    folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed)
    scores = cross_val_predict(model, features, label, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(label, scores))


def nodule_size_growth(examples: ExampleSet) -> np.ndarray:
    """[N, 3]: log latest diameter (mm), growth in doublings of diameter per year between the
    earliest and the latest scan with a diameter (0 for one scan), and whether a prior exists.

    The size and growth a reader measures from the annotations: the label's strongest
    imaging drivers, given to every headroom model so the rows compare what lies beyond them.
    """
    diameter = examples.diameter_mm.astype(np.float64)
    months = examples.months_before_latest.astype(np.float64)
    present = examples.scan_mask & np.isfinite(diameter) & (diameter > 0)
    latest = examples.scan_mask.shape[1] - 1
    first = np.argmax(present, axis=1)  # earliest time point with a diameter
    rows = np.arange(len(diameter))
    span_years = (months[rows, first] - months[rows, latest]) / 12.0
    has_prior = (first != latest) & (span_years > 0)
    doublings = np.log2(diameter[rows, latest] / np.where(has_prior, diameter[rows, first], 1.0))
    growth = np.where(has_prior, doublings / np.where(has_prior, span_years, 1.0), 0.0)
    return np.column_stack([np.log(diameter[rows, latest]), growth, has_prior.astype(float)])


class TooFewPatients(ValueError):
    """Too few patients (or of one class) with truth for cross-validated probes."""


def instrument_check(
    examples: ExampleSet,
    truth: pd.DataFrame,
    encoder: MultimodalEncoder,
    random_encoder: MultimodalEncoder,
    config: InstrumentConfig = InstrumentConfig(),
) -> dict[str, Any]:
    """Visibility of each cause in each view, and the label AUC each set of views reaches.

    truth: the generator's patients.csv indexed by pseudonymised patient id, with the CAUSES
    columns, ``malignant`` (0/1) and ``label_logit``. Patients truth does not know (arrival
    batches that joined a cohort, say) and those without a usable index-nodule diameter are
    left out and counted. Returns a JSON-ready dict: n, without_truth, malignant, regime (from
    truth), visibility rows {cause, view, r2} and headroom rows {features, auc}. Raises
    TooFewPatients when fewer than 4 x folds patients, or fewer than folds of a class, remain.
    """
    latest = examples.scan_mask.shape[1] - 1
    diameter = examples.diameter_mm[:, latest].astype(np.float64)
    known = np.isin(examples.patient_id, truth.index.to_numpy())
    keep = np.flatnonzero(known & np.isfinite(diameter) & (diameter > 0))
    examples = examples.subset(keep)
    rows = truth.loc[examples.patient_id]
    label = rows["malignant"].to_numpy().astype(int)
    if len(keep) < 4 * config.folds or np.bincount(label, minlength=2).min() < config.folds:
        raise TooFewPatients(
            f"instrument check needs >= {4 * config.folds} patients and >= {config.folds} of "
            f"each class, got {len(keep)} with {int(label.sum())} malignant"
        )
    views = view_features(examples, encoder, random_encoder)
    nodule = nodule_size_growth(examples)
    targets = {**{c: rows[c].to_numpy() for c in CAUSES}, SIZE: nodule[:, 0]}
    visibility = [
        {"cause": name, "view": view, "r2": cv_r2(features, target, config)}
        for name, target in targets.items()
        for view, features in views.items()
    ]
    size, causes, ehr = nodule[:, :1], rows[list(CAUSES)].to_numpy(), views["ehr"]
    true_s = causes[:, :1]
    feature_sets: dict[str, np.ndarray] = {
        "size": size,
        "size + EHR": np.hstack([size, ehr]),
        "size + EHR + crop HU histogram": np.hstack([size, ehr, views["crop_histogram"]]),
        "size + EHR + JEPA image tokens": np.hstack([size, ehr, views["jepa_image"]]),
        "size + EHR + random-init image tokens": np.hstack([size, ehr, views["random_image"]]),
        "size + EHR + true S": np.hstack([size, ehr, true_s]),
        "size + true S, M, H": np.hstack([size, causes]),
        "size, growth": nodule,
        "size, growth + EHR": np.hstack([nodule, ehr]),
        "size, growth + EHR + true S": np.hstack([nodule, ehr, true_s]),
    }
    headroom = [{"features": k, "auc": cv_auc(v, label, config)} for k, v in feature_sets.items()]
    from sklearn.metrics import roc_auc_score

    logit_auc = float(roc_auc_score(label, rows["label_logit"].to_numpy()))
    headroom.append({"features": "the generator's label logit", "auc": logit_auc})
    regimes = rows["regime"].unique() if "regime" in rows else np.array([])
    return {
        "n": int(len(keep)),
        "without_truth": int((~known).sum()),
        "malignant": int(label.sum()),
        "regime": float(regimes[0]) if len(regimes) == 1 else None,
        "folds": config.folds,
        "visibility": visibility,
        "headroom": headroom,
    }


def check_encoder(
    examples: ExampleSet,
    truth: pd.DataFrame,
    encoder: MultimodalEncoder,
    config: InstrumentConfig = InstrumentConfig(),
) -> dict[str, Any]:
    """``instrument_check`` of ``encoder`` beside its random-init twin: an encoder of the same
    shape initialised from ``config.seed``, so every encoder checked meets the same baseline."""
    import torch

    from models.encoders import MultimodalEncoder

    torch.manual_seed(config.seed)
    random_encoder = MultimodalEncoder(encoder.config)
    return instrument_check(examples, truth, encoder, random_encoder, config)


def encoder_summary(check: Mapping[str, Any]) -> dict[str, float]:
    """What a check says of its encoder, for a table row: how well its frozen image tokens read
    the shared cause S (R^2, and the random-init twin's), and the AUC they add to size + EHR."""
    r2 = {(r["cause"], r["view"]): r["r2"] for r in check["visibility"]}
    auc = {r["features"]: r["auc"] for r in check["headroom"]}
    return {
        "shared_cause_r2": float(r2[("shared_damage", "jepa_image")]),
        "shared_cause_r2_random": float(r2[("shared_damage", "random_image")]),
        "auc_added_to_size_ehr": float(auc["size + EHR + JEPA image tokens"] - auc["size + EHR"]),
    }


def _r2_table(visibility: Sequence[Mapping[str, Any]]) -> list[str]:
    r2 = {(row["cause"], row["view"]): row["r2"] for row in visibility}
    lines = [
        "| cause or driver | " + " | ".join(VIEWS.values()) + " |",
        "|---" * (len(VIEWS) + 1) + "|",
    ]
    for cause, label in TARGETS.items():
        cells = [r2.get((cause, view)) for view in VIEWS]
        lines.append(
            f"| {label} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in cells) + " |"
        )
    return lines


def instrument_markdown(check: Mapping[str, Any], encoder_version: str) -> str:
    """The RESULTS.md section for one instrument check (instrument_check's dict, with the
    ``cohorts`` it pooled)."""
    regime = check.get("regime")
    cohorts = " and ".join(check.get("cohorts", ["archive"]))
    lines = [
        "## Where the label's causes are visible (generator truth)",
        "",
        f"The synthetic instrument's own check on site 1's {cohorts} cohorts ({check['n']} "
        "patients, "
        f"{check['malignant']} malignant by the generator's truth"
        + (
            f", {check['without_truth']} without truth left out"
            if check.get("without_truth")
            else ""
        )
        + "; regime "
        f"{'n/a' if regime is None else f'{regime:g}'}), with the JEPA encoder "
        f"`{encoder_version}`. No model reads these labels; they measure how much room the "
        "data leave for pretraining. Visibility: "
        f"{check['folds']}-fold cross-validated R^2 of each latent cause from each view of "
        "the latest scan (ridge; below 0: no better than the mean).",
        "",
        *_r2_table(check["visibility"]),
        "",
        f"Headroom: {check['folds']}-fold cross-validated AUC of a logistic model of the truth "
        "label on each set of inputs (size: log diameter at the latest scan; growth: "
        "diameter doublings per year since the earliest scan; both from the annotations). "
        "What an image view adds to size + EHR is what an imaging encoder can add from the "
        "latest scan's texture; size + EHR + true S bounds what any reader of the shared "
        "cause can add. The generator's label logit holds no growth: growth follows from "
        "malignancy (docs/SYNTHETIC.md), so inputs with growth can rank better than it.",
        "",
        "| inputs | AUC |",
        "|---|---|",
        *(f"| {row['features']} | {row['auc']:.3f} |" for row in check["headroom"]),
    ]
    return "\n".join(lines + _reading(check))


def _reading(check: Mapping[str, Any]) -> list[str]:
    """The differences the section exists for, computed from its own rows."""
    auc = {row["features"]: row["auc"] for row in check["headroom"]}
    r2 = {(row["cause"], row["view"]): row["r2"] for row in check["visibility"]}
    base = auc.get("size + EHR")
    added = {
        "a perfect reader of S": auc.get("size + EHR + true S"),
        "the frozen JEPA image tokens": auc.get("size + EHR + JEPA image tokens"),
        "the crop HU histogram": auc.get("size + EHR + crop HU histogram"),
    }
    if base is None or any(v is None for v in added.values()):
        return []
    gains = "; ".join(f"{name} {value - base:+.3f}" for name, value in added.items())
    lines = ["", f"Added to size + EHR ({base:.3f}): {gains}."]
    pairs = [
        (c, short)
        for c, short in (("shared_damage", "S"), (SIZE, "size"))
        if (c, "jepa_image") in r2
    ]
    if pairs:
        read = "; ".join(
            f"{short} R^2 {r2[(c, 'jepa_image')]:.3f} vs {r2[(c, 'random_image')]:.3f}"
            for c, short in pairs
        )
        lines.append(f"Frozen JEPA vs random-init image tokens: {read}.")
    return lines

"""Clinical baselines: the published Brock/PanCan and Mayo models, and a logistic refit on EHR.

Why: a learned CT+EHR model is only worth deploying if it beats what clinicians already
use. Brock (McWilliams, NEJM 2013, full model) and Mayo (Swensen 1997) are applied with
their published coefficients, never refit; `fit_clinical_refit` is the fairer baseline that
learns from our own EHR features.

Examples are the arrays of `examples/<cohort>.npz` (see docs/ARCHITECTURE.md): the latest
scan is the last time point (index -1), left-padded.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

NODULE_TYPES: tuple[str, ...] = ("solid", "part_solid", "non_solid")

# Brock / PanCan full model, published coefficients (McWilliams et al., NEJM 2013).
_BROCK_TYPE_COEF = {"solid": 0.0, "part_solid": 0.377, "non_solid": -0.1276}

# Values plugged into the Brock linear predictor when an input is not recorded.
# age 62 and nodule_count 4 are the model's own centring values (zero contribution);
# sex unknown: 0.5 (no information between the two); family history and emphysema: 0,
# because the EHR features are code indicators and an absent code means "not recorded";
# upper_lobe 0.5: location is not in our examples and, lacking a lobe segmentation, we
# assume no information; spiculation 0: the examples carry no margin description and the
# model's reference category (smooth margin) is the conservative choice. Nodule count is 1
# because each example tracks one index nodule. These are assumptions, not estimates.
BROCK_DEFAULTS: dict[str, float] = {
    "age_years": 62.0,
    "female": 0.5,
    "family_history": 0.0,
    "emphysema": 0.0,
    "upper_lobe": 0.5,
    "nodule_count": 1.0,
    "spiculation": 0.0,
}

# EHR feature names (ehr_feature_names) read by `brock_from_examples`.
BROCK_EHR_FEATURES: dict[str, str] = {
    "age_years": "age_at_scan_years",
    "female": "sex_female",
    "family_history": "family_history_lung_cancer",
    "emphysema": "emphysema",
}

# Attenuation thresholds for `nodule_type_from_crop`, HU. Solid nodules are soft tissue
# (about -100..+100 HU); pure ground-glass opacities sit around -750..-300 HU; a part-solid
# nodule is ground-glass on average but contains a solid core.
SOLID_MEAN_HU = -300.0
SOLID_CORE_PEAK_HU = -150.0
PEAK_PERCENTILE = 95.0
DEFAULT_CORE_RADIUS_MM = 3.0


def _logistic(logit: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit))


def brock_probability(
    age_years: np.ndarray | float,
    female: np.ndarray | float,
    family_history: np.ndarray | float,
    emphysema: np.ndarray | float,
    size_mm: np.ndarray | float,
    nodule_type: np.ndarray | str,
    upper_lobe: np.ndarray | float,
    nodule_count: np.ndarray | float,
    spiculation: np.ndarray | float,
) -> np.ndarray:
    """Brock/PanCan full-model malignancy probability (vectorised, published coefficients).

    Binary inputs are 0/1 (a fraction in [0, 1] plugs an expected value into the linear
    predictor); size_mm is the nodule's longest diameter in mm; nodule_type is one of
    'solid', 'part_solid', 'non_solid' (ground-glass).
    """
    size = np.asarray(size_mm, dtype=np.float64)
    if (size <= 0).any() or not np.isfinite(size).all():
        raise ValueError("Brock needs a positive, finite nodule size in mm")
    types = np.asarray(nodule_type)
    unknown = set(np.unique(types).tolist()) - set(NODULE_TYPES)
    if unknown:
        raise ValueError(f"unknown nodule type(s) {sorted(unknown)}; expected {NODULE_TYPES}")
    type_coef = np.vectorize(_BROCK_TYPE_COEF.__getitem__, otypes=[np.float64])(types)
    logit = (
        -6.7892
        + 0.0287 * (np.asarray(age_years, dtype=np.float64) - 62.0)
        + 0.6011 * np.asarray(female, dtype=np.float64)
        + 0.2961 * np.asarray(family_history, dtype=np.float64)
        + 0.2953 * np.asarray(emphysema, dtype=np.float64)
        - 5.3854 * ((size / 10.0) ** -0.5 - 1.58113883)
        + type_coef
        + 0.6581 * np.asarray(upper_lobe, dtype=np.float64)
        - 0.0824 * (np.asarray(nodule_count, dtype=np.float64) - 4.0)
        + 0.7729 * np.asarray(spiculation, dtype=np.float64)
    )
    return np.atleast_1d(_logistic(logit))


def mayo_probability(
    age_years: np.ndarray | float,
    smoker: np.ndarray | float,
    prior_cancer: np.ndarray | float,
    diameter_mm: np.ndarray | float,
    upper_lobe: np.ndarray | float,
    spiculation: np.ndarray | float,
) -> np.ndarray:
    """Mayo Clinic model (Swensen 1997) probability; smoker = current or former, 0/1.

    prior_cancer is an extrathoracic cancer diagnosed more than 5 years before the nodule.
    """
    logit = (
        -6.8272
        + 0.0391 * np.asarray(age_years, dtype=np.float64)
        + 0.7917 * np.asarray(smoker, dtype=np.float64)
        + 1.3388 * np.asarray(prior_cancer, dtype=np.float64)
        + 0.1274 * np.asarray(diameter_mm, dtype=np.float64)
        + 0.7838 * np.asarray(upper_lobe, dtype=np.float64)
        + 1.0407 * np.asarray(spiculation, dtype=np.float64)
    )
    return np.atleast_1d(_logistic(logit))


def nodule_type_from_crop(
    crop_hu: np.ndarray,
    spacing_mm: float = 1.0,
    radius_mm: float = DEFAULT_CORE_RADIUS_MM,
) -> str:
    """Classify a nodule-centred crop (z-y-x, HU) as 'solid', 'part_solid' or 'non_solid'.

    For archives without a radiologist's morphology: inside a central sphere of `radius_mm`
    (use half the nodule diameter when known), mean HU >= SOLID_MEAN_HU is solid; otherwise
    a solid core (the PEAK_PERCENTILE-th percentile HU >= SOLID_CORE_PEAK_HU) makes it
    part-solid; otherwise it is ground-glass ('non_solid', Brock's name). A percentile
    rather than the maximum keeps a single noisy voxel from creating a core.
    """
    crop = np.asarray(crop_hu, dtype=np.float64)
    if crop.ndim != 3:
        raise ValueError(f"expected a 3-D crop (z, y, x), got shape {crop.shape}")
    centre = (np.asarray(crop.shape) - 1) / 2.0
    grid = np.indices(crop.shape, dtype=np.float64)
    dist_mm = spacing_mm * np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0))
    # At least the central voxel(s) even for a sphere smaller than a voxel.
    inside = dist_mm <= max(radius_mm, spacing_mm * float(np.sqrt(3)) / 2.0)
    values = crop[inside]
    if float(values.mean()) >= SOLID_MEAN_HU:
        return "solid"
    if float(np.percentile(values, PEAK_PERCENTILE)) >= SOLID_CORE_PEAK_HU:
        return "part_solid"
    return "non_solid"


def _field(examples: Any, name: str) -> np.ndarray:
    """An array of an ExampleSet-like: attribute (dataclass) or key (npz / dict)."""
    if isinstance(examples, Mapping) or hasattr(examples, "files"):
        return np.asarray(examples[name])
    return np.asarray(getattr(examples, name))


def latest_ehr(examples: Any) -> tuple[np.ndarray, list[str]]:
    """EHR features [N, F] at the latest scan (NaN where no EHR there) and their names."""
    ehr = _field(examples, "ehr").astype(np.float64)
    mask = _field(examples, "ehr_mask").astype(bool)
    names = [str(n) for n in _field(examples, "ehr_feature_names")]
    latest = ehr[:, -1, :].copy()
    latest[~mask[:, -1]] = np.nan
    return latest, names


@dataclass(frozen=True)
class ReaderError:
    """A radiologist's caliper measurement of the longest diameter (params.yaml `evaluate.reader`).

    measured = round_to(true * (1 + relative_sd * e1) + sd_mm * e2), e1, e2 ~ N(0, 1), at least
    round_to_mm. Inter-reader 95% limits of agreement for manual diameters of small nodules
    are about +-1.7 mm (Revel et al., Radiology 2004), i.e. ~0.9 mm SD per reader; we take
    1.0 mm plus 5% of the size and whole-mm reporting. The draw is seeded by the patient id
    (sha256), so a patient's measurement does not depend on which cohort or fold holds it.
    """

    sd_mm: float = 1.0
    relative_sd: float = 0.05
    round_to_mm: float = 1.0
    seed: int = 0

    def measure(self, diameter_mm: np.ndarray, patient_id: np.ndarray) -> np.ndarray:
        """Measured diameters [N] mm of true diameters [N] mm, one draw per patient id."""
        true = np.asarray(diameter_mm, dtype=np.float64)
        ids = np.asarray(patient_id).astype(str)
        if true.shape != ids.shape:
            raise ValueError("reader error: one diameter per patient id")
        noise = np.empty((true.shape[0], 2))
        for i, pid in enumerate(ids):
            digest = hashlib.sha256(f"{self.seed}:{pid}".encode()).digest()
            noise[i] = np.random.default_rng(int.from_bytes(digest[:8], "little")).normal(size=2)
        measured = true * (1.0 + self.relative_sd * noise[:, 0]) + self.sd_mm * noise[:, 1]
        step = self.round_to_mm
        if step > 0:
            measured = np.round(measured / step) * step
        return np.maximum(measured, step if step > 0 else 0.5)


def latest_diameter(examples: Any) -> np.ndarray:
    """The annotated (generator-exact) index-nodule diameter [N] mm at the latest scan."""
    return _field(examples, "diameter_mm")[:, -1].astype(np.float64)


def brock_from_examples(
    examples: Any,
    spacing_mm: float = 1.0,
    defaults: Mapping[str, float] = BROCK_DEFAULTS,
    size_mm: np.ndarray | None = None,
) -> np.ndarray:
    """Brock probability per patient from training examples (latest scan).

    Reads age_at_scan_years, sex_female, family_history_lung_cancer and emphysema from the
    EHR features (a missing feature or NaN value takes `defaults`, see BROCK_DEFAULTS), the
    size from diameter_mm, and the nodule type from the latest crop (nodule_type_from_crop
    with radius = half the diameter). Location, spiculation and count are not in the
    examples and always take the defaults. `size_mm` [N] replaces the annotated diameter
    (e.g. a reader's measurement, ReaderError.measure); the nodule type still reads the crop
    with the annotated size.
    """
    latest, names = latest_ehr(examples)
    scan_mask = _field(examples, "scan_mask").astype(bool)
    if not scan_mask[:, -1].all():
        raise ValueError("every example needs its latest scan at the last time point")
    n = latest.shape[0]
    inputs: dict[str, np.ndarray] = {}
    for key, feature in BROCK_EHR_FEATURES.items():
        column = latest[:, names.index(feature)] if feature in names else np.full(n, np.nan)
        inputs[key] = np.where(np.isnan(column), defaults[key], column)
    size = latest_diameter(examples)
    crops = _field(examples, "crops_hu")[:, -1]
    types = np.array(
        [
            nodule_type_from_crop(crops[i], spacing_mm=spacing_mm, radius_mm=size[i] / 2.0)
            for i in range(n)
        ]
    )
    return brock_probability(
        age_years=inputs["age_years"],
        female=inputs["female"],
        family_history=inputs["family_history"],
        emphysema=inputs["emphysema"],
        size_mm=size if size_mm is None else np.asarray(size_mm, dtype=np.float64),
        nodule_type=types,
        upper_lobe=np.full(n, defaults["upper_lobe"]),
        nodule_count=np.full(n, defaults["nodule_count"]),
        spiculation=np.full(n, defaults["spiculation"]),
    )


MAYO_EHR_FEATURES: dict[str, tuple[str, ...]] = {
    "age_years": ("age_at_scan_years",),
    "smoker": ("smoking_current", "smoking_former"),
    "prior_cancer": ("prior_cancer",),
}
"""EHR features read by `mayo_from_examples`; smoker is current or former (the max of both)."""


def mayo_from_examples(
    examples: Any,
    size_mm: np.ndarray | None = None,
    defaults: Mapping[str, float] = BROCK_DEFAULTS,
) -> np.ndarray:
    """Mayo probability per patient from training examples (latest scan).

    Age, smoking (current or former) and prior cancer come from the EHR features (missing:
    age 62, not a smoker, no prior cancer: an absent code means "not recorded"); the size is
    `size_mm` or the annotated diameter; upper lobe and spiculation take BROCK_DEFAULTS. Our
    prior_cancer flag is any Z85 code, not only extrathoracic cancers > 5 years earlier.
    """
    latest, names = latest_ehr(examples)
    n = latest.shape[0]
    inputs: dict[str, np.ndarray] = {}
    for key, features in MAYO_EHR_FEATURES.items():
        columns = [latest[:, names.index(f)] for f in features if f in names]
        with warnings.catch_warnings():  # all-NaN rows (no EHR at the scan) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            value = np.nanmax(np.stack(columns), axis=0) if columns else np.full(n, np.nan)
        fallback = defaults["age_years"] if key == "age_years" else 0.0
        inputs[key] = np.where(np.isnan(value), fallback, value)
    size = latest_diameter(examples) if size_mm is None else np.asarray(size_mm, np.float64)
    return mayo_probability(
        age_years=inputs["age_years"],
        smoker=inputs["smoker"],
        prior_cancer=inputs["prior_cancer"],
        diameter_mm=size,
        upper_lobe=np.full(n, defaults["upper_lobe"]),
        spiculation=np.full(n, defaults["spiculation"]),
    )


def fit_clinical_refit(examples: Any, seed: int = 0) -> Pipeline:
    """Logistic regression on the EHR features at the latest scan, fit on labeled rows.

    Median imputation (for patients without EHR at that scan) and standardisation sit
    inside the pipeline, so the test cohort is transformed with training statistics only.
    """
    features, _ = latest_ehr(examples)
    label = _field(examples, "label").astype(np.int64)
    labeled = label >= 0
    if len(np.unique(label[labeled])) != 2:
        raise ValueError("the clinical refit needs both classes among labeled training rows")
    model = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(max_iter=1000, random_state=seed),
    )
    model.fit(features[labeled], label[labeled])
    return model


def predict_clinical_refit(model: Pipeline, examples: Any) -> np.ndarray:
    """Malignancy probability per patient from a fitted clinical refit."""
    features, _ = latest_ehr(examples)
    return model.predict_proba(features)[:, 1]


def clinical_refit_model(train: Any, test: Any, seed: int = 0) -> np.ndarray:
    """Fit the clinical refit on `train` and return its probabilities on `test`."""
    train_names = [str(n) for n in _field(train, "ehr_feature_names")]
    test_names = [str(n) for n in _field(test, "ehr_feature_names")]
    if train_names != test_names:
        raise ValueError("train and test EHR features differ in names or order")
    return predict_clinical_refit(fit_clinical_refit(train, seed=seed), test)

"""Clinical baselines: published reference values, vectorisation, defaults, refit."""

import math

import numpy as np
import pytest

from models.baselines import (
    BROCK_DEFAULTS,
    NODULE_TYPES,
    ReaderError,
    brock_from_examples,
    brock_probability,
    clinical_refit_model,
    mayo_from_examples,
    mayo_probability,
    nodule_type_from_crop,
)
from models.evaluation import roc_auc

FEATURES = [
    "age_at_scan_years",
    "sex_female",
    "family_history_lung_cancer",
    "emphysema",
    "pack_years",
]


def test_brock_published_worked_example() -> None:
    # McWilliams 2013 worked example: 62-year-old woman, 10 mm solid, upper lobe, 1 nodule,
    # spiculated, no family history, no emphysema -> 0.201.
    p = brock_probability(62, 1, 0, 0, 10.0, "solid", 1, 1, 1)
    assert round(float(p[0]), 3) == 0.201


def test_brock_is_vectorised_and_monotone_in_size() -> None:
    sizes = np.array([4.0, 8.0, 15.0, 30.0])
    p = brock_probability(65, 0, 0, 1, sizes, np.array(["solid"] * 4), 0, 2, 0)
    assert p.shape == (4,) and np.all(np.diff(p) > 0)
    types = brock_probability(62, 1, 0, 0, 10.0, np.array(NODULE_TYPES), 1, 1, 1)
    assert types[1] > types[0] > types[2]
    with pytest.raises(ValueError, match="unknown nodule type"):
        brock_probability(62, 1, 0, 0, 10.0, "ground_glass", 1, 1, 1)
    with pytest.raises(ValueError, match="positive"):
        brock_probability(62, 1, 0, 0, 0.0, "solid", 1, 1, 1)


def test_mayo_hand_computed() -> None:
    # 65 years, smoker, no prior cancer, 12 mm, upper lobe, not spiculated:
    # logit = -6.8272 + 0.0391*65 + 0.7917 + 0.1274*12 + 0.7838 = -1.1814
    expected = 1.0 / (1.0 + math.exp(1.1814))
    assert float(mayo_probability(65, 1, 0, 12.0, 1, 0)[0]) == pytest.approx(expected, abs=1e-9)


def _sphere_crop(core_hu: float, halo_hu: float, size: int = 32) -> np.ndarray:
    """Lung background (-850 HU), a 5 mm-radius nodule at halo_hu with a 2 mm core at core_hu.

    Examples use diameters <= 10 mm so the sphere read by brock_from_examples stays inside.
    """
    crop = np.full((size,) * 3, -850.0)
    grid = np.indices(crop.shape) - (size - 1) / 2.0
    r = np.sqrt((grid**2).sum(axis=0))
    crop[r <= 5.0] = halo_hu
    crop[r <= 2.0] = core_hu
    return crop.astype(np.int16)


def test_nodule_type_from_crop() -> None:
    assert nodule_type_from_crop(_sphere_crop(40, 20), radius_mm=5.0) == "solid"
    assert nodule_type_from_crop(_sphere_crop(30, -600), radius_mm=5.0) == "part_solid"
    assert nodule_type_from_crop(_sphere_crop(-550, -600), radius_mm=5.0) == "non_solid"


def _examples(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t, s = 3, 16
    label = rng.integers(0, 2, size=n).astype(np.int8)
    ehr = np.zeros((n, t, len(FEATURES)), dtype=np.float32)
    ehr[..., 0] = rng.uniform(50, 80, size=(n, 1))
    ehr[..., 1] = rng.integers(0, 2, size=(n, 1))
    ehr[..., 2] = rng.random((n, 1)) < 0.1
    ehr[..., 3] = rng.random((n, 1)) < 0.2 + 0.3 * label[:, None]
    ehr[..., 4] = rng.gamma(2.0, 10.0, size=(n, 1)) + 15 * label[:, None]
    crops = np.tile(_sphere_crop(40, 20, size=s), (n, t, 1, 1, 1))
    return {
        "patient_id": np.array([f"p{i}" for i in range(n)]),
        "crops_hu": crops,
        "scan_mask": np.ones((n, t), dtype=bool),
        "months_before_latest": np.tile(np.array([24.0, 12.0, 0.0], dtype=np.float32), (n, 1)),
        "ehr": ehr,
        "ehr_mask": np.ones((n, t), dtype=bool),
        "ehr_feature_names": np.array(FEATURES),
        "diameter_mm": np.tile(rng.uniform(4, 10, size=(n, 1)), (1, t)).astype(np.float32),
        "label": label,
    }


def test_brock_from_examples_uses_features_and_defaults() -> None:
    ex = _examples(6, 0)
    p = brock_from_examples(ex)
    latest = ex["ehr"][:, -1]
    expected = brock_probability(
        latest[:, 0], latest[:, 1], latest[:, 2], latest[:, 3], ex["diameter_mm"][:, -1],
        np.array(["solid"] * 6), BROCK_DEFAULTS["upper_lobe"], 1, BROCK_DEFAULTS["spiculation"],
    )  # fmt: skip
    np.testing.assert_allclose(p, expected)
    # No EHR at the latest scan and a feature missing from the names: defaults everywhere.
    ex["ehr_mask"][:, -1] = False
    ex["ehr_feature_names"] = np.array(["x"] + FEATURES[1:])
    d = BROCK_DEFAULTS
    expected_default = brock_probability(
        d["age_years"], d["female"], d["family_history"], d["emphysema"], ex["diameter_mm"][:, -1],
        "solid", d["upper_lobe"], d["nodule_count"], d["spiculation"],
    )  # fmt: skip
    np.testing.assert_allclose(brock_from_examples(ex), expected_default)


def test_clinical_refit_learns_signal_and_checks_feature_order() -> None:
    train, test = _examples(300, 1), _examples(200, 2)
    train["label"][:5] = -1  # unlabeled rows are ignored
    test["ehr_mask"][:10, -1] = False  # imputed with training medians
    p = clinical_refit_model(train, test)
    assert p.shape == (200,) and np.all((p >= 0) & (p <= 1))
    assert roc_auc(test["label"], p) > 0.7
    test["ehr_feature_names"] = test["ehr_feature_names"][::-1]
    with pytest.raises(ValueError, match="differ"):
        clinical_refit_model(train, test)


def test_baselines_accept_an_example_set() -> None:
    from cohorts.example_set import random_examples

    train, test = random_examples(80, seed=0, n_ehr=4), random_examples(40, seed=1, n_ehr=4)
    brock = brock_from_examples(test)
    assert brock.shape == (40,) and np.all((brock > 0) & (brock < 1))
    # Malignant synthetic nodules are larger, so Brock (size-driven) ranks them higher.
    assert roc_auc(test.label, brock) > 0.7
    refit = clinical_refit_model(train, test)
    assert refit.shape == (40,) and roc_auc(test.label, refit) > 0.7


def test_reader_error_is_per_patient_whole_mm_and_about_a_millimetre() -> None:
    reader = ReaderError()
    true = np.full(4000, 10.0)
    ids = np.array([f"p{i}" for i in range(4000)])
    measured = reader.measure(true, ids)
    assert np.all(measured == np.round(measured)) and measured.min() >= 1.0
    error = measured - true
    assert abs(error.mean()) < 0.1
    assert 1.0 < error.std() < 1.4  # sqrt(1.0^2 + (0.05 * 10)^2) = 1.12, plus rounding
    np.testing.assert_array_equal(reader.measure(true[:10], ids[:10]), measured[:10])
    assert not np.array_equal(ReaderError(seed=1).measure(true, ids), measured)
    with pytest.raises(ValueError, match="one diameter per patient"):
        reader.measure(true, ids[:3])


def test_mayo_from_examples_reads_smoking_and_prior_cancer() -> None:
    ex = _examples(5, 3)
    names = ["age_at_scan_years", "smoking_current", "smoking_former", "prior_cancer"]
    ex["ehr_feature_names"] = np.array(names)
    ex["ehr"] = ex["ehr"][..., :4].copy()
    ex["ehr"][:, -1, :] = [
        [70, 0, 1, 1],
        [50, 1, 0, 0],
        [60, 0, 0, 0],
        [80, 1, 1, 0],
        [65, 0, 0, 1],
    ]
    size = np.array([5.0, 8.0, 12.0, 20.0, 9.0])
    expected = mayo_probability(
        np.array([70, 50, 60, 80, 65.0]), np.array([1, 1, 0, 1, 0.0]), np.array([1, 0, 0, 0, 1.0]),
        size, BROCK_DEFAULTS["upper_lobe"], BROCK_DEFAULTS["spiculation"],
    )  # fmt: skip
    np.testing.assert_allclose(mayo_from_examples(ex, size_mm=size), expected)
    ex["ehr_mask"][:, -1] = False  # no EHR: age 62, non-smoker, no prior cancer
    fallback = mayo_probability(62.0, 0.0, 0.0, size, 0.5, 0.0)
    np.testing.assert_allclose(mayo_from_examples(ex, size_mm=size), fallback)


def test_brock_on_a_measured_size_differs_from_the_oracle() -> None:
    ex = _examples(50, 4)
    exact = brock_from_examples(ex)
    measured = ReaderError().measure(
        ex["diameter_mm"][:, -1], np.array([str(i) for i in range(50)])
    )
    noisy = brock_from_examples(ex, size_mm=measured)
    assert not np.allclose(exact, noisy)
    np.testing.assert_allclose(brock_from_examples(ex, size_mm=ex["diameter_mm"][:, -1]), exact)

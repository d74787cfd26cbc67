"""models/instrument.py and cohorts/synthetic/truth.py: the instrument's truth check."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cohorts.example_set import ExampleSet, random_examples
from cohorts.privacy import key_fingerprint, pseudonymise, write_synthetic_marker
from cohorts.synthetic.truth import read_truth
from models.encoders import EncoderConfig, MultimodalEncoder
from models.instrument import (
    HISTOGRAM_EDGES_HU,
    SIZE,
    TARGETS,
    VIEWS,
    InstrumentConfig,
    TooFewPatients,
    check_encoder,
    crop_histogram,
    encoder_summary,
    instrument_check,
    instrument_markdown,
    nodule_size_growth,
)

KEY = b"k" * 32


def _encoder(examples: ExampleSet, seed: int) -> MultimodalEncoder:
    torch.manual_seed(seed)
    config = EncoderConfig(
        n_ehr_features=examples.n_ehr_features,
        crop_size_vox=16,
        max_timepoints=examples.timepoints,
        embed_dim=16,
        depth=1,
        heads=2,
    )
    return MultimodalEncoder(config)


def _truth(examples: ExampleSet, seed: int = 0) -> pd.DataFrame:
    """Causes planted in known places: S = the latest EHR feature 2, M and H pure noise."""
    rng = np.random.default_rng(seed)
    latest = examples.scan_mask.shape[1] - 1
    s = np.where(examples.ehr_mask[:, latest], examples.ehr[:, latest, 2], 0.0)
    logit = 2.0 * s
    return pd.DataFrame(
        {
            "shared_damage": s,
            "imaging_aggr": rng.normal(size=len(s)),
            "ehr_history": rng.normal(size=len(s)),
            "malignant": (rng.random(len(s)) < 1 / (1 + np.exp(-logit))).astype(int),
            "label_logit": logit,
            "regime": 0.0,
        },
        index=pd.Index(examples.patient_id, name="patient_id"),
    )


def test_crop_histogram_shares_and_bins() -> None:
    crops = np.full((2, 4, 4, 4), -990, dtype=np.int16)
    crops[1, :2] = 40  # half the second crop is soft tissue: the dense bin
    hist = crop_histogram(crops)
    assert hist.shape == (2, len(HISTOGRAM_EDGES_HU) - 1)
    np.testing.assert_allclose(hist.sum(axis=1), 1.0)
    assert hist[0, 1] == 1.0  # -990 HU lies in [-1000, -975)
    assert hist[1, -1] == 0.5 and hist[1, 1] == 0.5


def test_size_growth_is_doublings_per_year() -> None:
    examples = random_examples(3, timepoints=2, crop_size_vox=8, n_ehr=3)
    examples.scan_mask[:] = [[True, True], [False, True], [True, True]]
    examples.months_before_latest[:] = [[12.0, 0.0], [0.0, 0.0], [6.0, 0.0]]
    examples.diameter_mm[:] = [[5.0, 10.0], [0.0, 8.0], [8.0, 8.0]]
    features = nodule_size_growth(examples)
    np.testing.assert_allclose(features[:, 0], np.log([10.0, 8.0, 8.0]))
    np.testing.assert_allclose(features[:, 1], [1.0, 0.0, 0.0])  # one doubling in a year
    np.testing.assert_array_equal(features[:, 2], [1.0, 0.0, 1.0])


def test_check_finds_a_cause_where_it_was_planted() -> None:
    examples = random_examples(80, timepoints=2, crop_size_vox=16, n_ehr=4, seed=1)
    truth = _truth(examples).iloc[::-1]  # row order must not matter: joined by id
    check = instrument_check(
        examples, truth, _encoder(examples, 0), _encoder(examples, 1), InstrumentConfig()
    )
    r2 = {(row["cause"], row["view"]): row["r2"] for row in check["visibility"]}
    assert set(r2) == {(c, v) for c in TARGETS for v in VIEWS}
    assert r2[(SIZE, "crop_histogram")] > 0.5  # a soft sphere's voxel count is its size
    assert r2[("shared_damage", "ehr")] > 0.95  # S is EHR feature 2 itself
    assert r2[("imaging_aggr", "ehr")] < 0.2 and r2[("ehr_history", "crop_histogram")] < 0.2
    auc = {row["features"]: row["auc"] for row in check["headroom"]}
    assert auc["size + EHR + true S"] > auc["size"]  # the label was drawn from S alone
    assert check["n"] == 80 and check["regime"] == 0.0
    assert 0 < check["malignant"] < 80
    text = instrument_markdown({**check, "cohorts": ["archive"]}, "enc123")
    assert "`enc123`" in text and all(row["features"] in text for row in check["headroom"])
    assert all(label in text for label in TARGETS.values())


def test_an_encoder_is_checked_beside_the_same_random_twin_and_summarised() -> None:
    examples = random_examples(40, timepoints=2, crop_size_vox=16, n_ehr=4, seed=2)
    truth, config = _truth(examples), InstrumentConfig()
    first, second = _encoder(examples, 0), _encoder(examples, 5)
    a, b = check_encoder(examples, truth, first, config), check_encoder(examples, truth, second)
    summary_a, summary_b = encoder_summary(a), encoder_summary(b)
    # every encoder meets the same random-init baseline (seeded by the config), not its own
    assert summary_a["shared_cause_r2_random"] == summary_b["shared_cause_r2_random"]
    assert summary_a["shared_cause_r2"] != summary_b["shared_cause_r2"]
    r2 = {(r["cause"], r["view"]): r["r2"] for r in a["visibility"]}
    auc = {r["features"]: r["auc"] for r in a["headroom"]}
    assert summary_a == {
        "shared_cause_r2": r2[("shared_damage", "jepa_image")],
        "shared_cause_r2_random": r2[("shared_damage", "random_image")],
        "auc_added_to_size_ehr": auc["size + EHR + JEPA image tokens"] - auc["size + EHR"],
    }


def test_check_leaves_out_patients_without_truth_and_refuses_too_few() -> None:
    examples = random_examples(30, timepoints=2, crop_size_vox=16, n_ehr=4)
    truth = _truth(examples)
    enc = _encoder(examples, 0)
    partial = instrument_check(examples, truth.iloc[2:], enc, enc)
    assert partial["n"] == 28 and partial["without_truth"] == 2
    with pytest.raises(TooFewPatients, match=">= 20 patients"):
        small = examples.subset(np.arange(10))
        instrument_check(small, truth, enc, enc)


def test_read_truth_keys_rows_like_the_pipeline(tmp_path: Path) -> None:
    cohort = tmp_path / "archive"
    (cohort / "truth").mkdir(parents=True)
    pd.DataFrame({"person_id": ["MRN1", "MRN2"], "shared_damage": [0.5, -1.0]}).to_csv(
        cohort / "truth" / "patients.csv", index=False
    )
    with pytest.raises(ValueError, match="not generator data"):
        read_truth(cohort, KEY)
    write_synthetic_marker(cohort, "test")
    truth = read_truth(cohort, KEY, key_fingerprint(KEY))
    assert list(truth.index) == [pseudonymise("MRN1", KEY), pseudonymise("MRN2", KEY)]
    assert "person_id" not in truth.columns and "MRN1" not in truth.to_csv()
    with pytest.raises(ValueError, match="not the key in force"):
        read_truth(cohort, KEY, key_fingerprint(b"x" * 32))
    (cohort / "truth" / "patients.csv").unlink()
    with pytest.raises(FileNotFoundError, match="patients.csv"):
        read_truth(cohort, KEY)


def test_concat_keeps_rows_and_refuses_other_features() -> None:
    a = random_examples(3, timepoints=2, crop_size_vox=8, n_ehr=3, seed=0)
    b = random_examples(2, timepoints=2, crop_size_vox=8, n_ehr=3, seed=1)
    both = ExampleSet.concat([a, b])
    assert len(both) == 5
    np.testing.assert_array_equal(both.crops_hu[3:], b.crops_hu)
    with pytest.raises(ValueError, match="different EHR features"):
        ExampleSet.concat([a, random_examples(2, timepoints=2, crop_size_vox=8, n_ehr=4)])
    with pytest.raises(ValueError, match="cannot concatenate crops"):
        ExampleSet.concat([a, random_examples(2, timepoints=2, crop_size_vox=4, n_ehr=3)])

"""The comparison protocol: same split for every model, ensembles equal what gets evaluated."""

import numpy as np
import pytest
import torch

from models.data import random_examples
from models.encoders import EncoderConfig, MultimodalEncoder
from models.finetune import FinetuneConfig, predict_proba
from models.protocol import (
    ProtocolConfig,
    evaluate_predictions,
    predictions_frame,
    predictions_from_frame,
    run_protocol,
)


def _small_encoder(n_ehr: int) -> MultimodalEncoder:
    torch.manual_seed(0)
    config = EncoderConfig(
        n_ehr_features=n_ehr, crop_size_vox=16, patch_size_vox=8, embed_dim=16, depth=1, heads=2
    )
    return MultimodalEncoder(config)


@pytest.fixture(scope="module")
def protocol_result():
    internal = random_examples(60, crop_size_vox=16, n_ehr=6, seed=1)
    external = random_examples(30, crop_size_vox=16, n_ehr=6, seed=2)
    config = ProtocolConfig(
        finetune=FinetuneConfig(epochs=2, batch_size=16, patience=2), seeds=(0, 1)
    )
    pretrained = _small_encoder(6)
    return internal, external, run_protocol(internal, external, pretrained, config, progress=False)


def test_every_model_predicts_every_test_patient(protocol_result) -> None:
    internal, external, result = protocol_result
    expected = {
        "jepa",
        "jepa_probe",
        "multimodal",
        "imaging_only",
        "clinical_brock",
        "clinical_refit",
    }
    for cohort, n in (("internal", len(result.split["test"])), ("external", len(external))):
        assert set(result.predictions[cohort]) == expected
        for values in result.predictions[cohort].values():
            assert values.shape == (n,) and np.all((values >= 0) & (values <= 1))


def test_split_is_patient_disjoint(protocol_result) -> None:
    _, _, result = protocol_result
    train, val, test = (set(result.split[k].tolist()) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)


def test_reported_prediction_is_the_seed_ensemble(protocol_result) -> None:
    """What is evaluated (and exported) is the mean of the seed models, not one lucky seed."""
    _, external, result = protocol_result
    ensemble = result.ensembles["jepa"]
    assert len(ensemble.members) == 2
    members = np.mean([predict_proba(m, external) for m in ensemble.members], axis=0)
    np.testing.assert_allclose(result.predictions["external"]["jepa"], members, atol=1e-6)


def test_predictions_round_trip_and_evaluate(protocol_result) -> None:
    _, _, result = protocol_result
    labels, predictions = predictions_from_frame(predictions_frame(result))
    for cohort in result.predictions:
        np.testing.assert_array_equal(labels[cohort], result.labels[cohort])
    evaluation = evaluate_predictions(labels, predictions, n_replicates=50, seed=0)
    assert set(evaluation) == {"internal", "external", "delong"}
    assert "jepa_vs_multimodal" in evaluation["delong"]["external"]


def test_single_class_test_cohort_is_a_clear_error() -> None:
    internal = random_examples(40, crop_size_vox=16, n_ehr=6, seed=1)
    external = random_examples(10, crop_size_vox=16, n_ehr=6, seed=2)
    external.label[:] = 0
    config = ProtocolConfig(finetune=FinetuneConfig(epochs=1), seeds=(0,))
    with pytest.raises(ValueError, match="external: 10 patients, 0 malignant"):
        run_protocol(internal, external, _small_encoder(6), config, progress=False)

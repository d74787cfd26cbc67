"""The comparison protocol: out-of-fold predictions for every labeled patient, fold ensembles."""

import numpy as np
import pytest
import torch

from cohorts.example_set import random_examples
from models.data import example_tensors
from models.encoders import EncoderConfig, MultimodalEncoder
from models.finetune import FinetuneConfig, finetune, predict_proba
from models.protocol import (
    BASELINE_MODELS,
    NEURAL_MODELS,
    JepaRecipe,
    ProtocolConfig,
    evaluate_predictions,
    label_efficiency_frame,
    new_model,
    predictions_frame,
    predictions_from_frame,
    run_config,
    run_protocol,
)


def _small_encoder(n_ehr: int) -> MultimodalEncoder:
    torch.manual_seed(0)
    config = EncoderConfig(
        n_ehr_features=n_ehr, crop_size_vox=16, patch_size_vox=8, embed_dim=16, depth=1, heads=2
    )
    return MultimodalEncoder(config)


CONFIG = ProtocolConfig(
    finetune=FinetuneConfig(epochs=2, batch_size=16, patience=2),
    seeds=(0,),
    folds=3,
    jepa=JepaRecipe(probe_epochs=2),  # = finetune epochs: jepa continues the probe members
    label_fractions=(0.5,),
    label_efficiency_models=("jepa", "multimodal"),
)


@pytest.fixture(scope="module")
def protocol_result():
    internal = random_examples(60, crop_size_vox=16, n_ehr=6, seed=1)
    external = random_examples(30, crop_size_vox=16, n_ehr=6, seed=2)
    pretrained = _small_encoder(6)
    result = run_protocol(internal, external, pretrained, CONFIG, progress=False)
    return internal, external, pretrained, result


def test_every_labeled_internal_patient_is_predicted_out_of_fold(protocol_result) -> None:
    internal, external, _, result = protocol_result
    assert set(result.predictions["internal"]) == set(NEURAL_MODELS) | set(BASELINE_MODELS)
    np.testing.assert_array_equal(result.patient_ids["internal"], internal.patient_id)
    for cohort, n in (("internal", len(internal)), ("external", len(external))):
        for values in result.predictions[cohort].values():
            assert values.shape == (n,) and np.all((values >= 0) & (values <= 1))


def test_folds_partition_the_patients(protocol_result) -> None:
    internal, _, _, result = protocol_result
    tests = np.concatenate([f.test for f in result.folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(len(internal)))
    for fold in result.folds:
        parts = [set(fold.train.tolist()), set(fold.val.tolist()), set(fold.test.tolist())]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert set().union(*parts) == set(range(len(internal)))


def _retrained_member_matches(protocol_result, name: str, fold_index: int) -> None:
    """Retrain one fold's member by hand, all of its recipe's stages; its test-fold
    predictions must be the protocol's out-of-fold ones."""
    internal, _, pretrained, result = protocol_result
    fold = result.folds[fold_index]
    model = new_model(name, pretrained, pretrained, seed=0, readout=CONFIG.readout)
    recipe = run_config(name, CONFIG.finetune, 0, CONFIG.jepa)
    trained = finetune(
        model, internal.subset(fold.train), internal.subset(fold.val), recipe, progress=False
    ).model
    np.testing.assert_allclose(
        result.predictions["internal"][name][fold.test],
        predict_proba(trained, internal.subset(fold.test)),
        atol=1e-6,
    )


def test_out_of_fold_prediction_comes_from_the_model_that_never_saw_the_fold(
    protocol_result,
) -> None:
    _retrained_member_matches(protocol_result, "multimodal", fold_index=1)


def test_jepa_members_continuing_the_probe_equal_lp_ft_trained_from_scratch(
    protocol_result,
) -> None:
    """Reusing the jepa_probe member as LP-FT's first stage changes nothing."""
    recipe = run_config("jepa", CONFIG.finetune, 0, CONFIG.jepa)
    assert recipe.probe_epochs == CONFIG.finetune.epochs  # the shared path is what runs
    _retrained_member_matches(protocol_result, "jepa", fold_index=2)
    result = protocol_result[3]
    stages = {h.get("stage") for run in result.histories["jepa"] for h in run}
    assert stages == {"probe", "finetune"}


def test_external_prediction_is_the_fold_ensemble(protocol_result) -> None:
    """What is evaluated (and exported) is the mean of the fold models, not one lucky fold."""
    _, external, _, result = protocol_result
    ensemble = result.ensembles["jepa"]
    assert len(ensemble.members) == CONFIG.folds and len(result.member_names["jepa"]) == 3
    members = np.mean([predict_proba(m, external) for m in ensemble.members], axis=0)
    np.testing.assert_allclose(result.predictions["external"]["jepa"], members, atol=1e-6)
    with torch.no_grad():
        tensors = example_tensors(external)
        from cohorts.example_set import FIELDS

        forward = ensemble(*(tensors[k] for k in FIELDS)).numpy()
    np.testing.assert_allclose(forward, members, atol=1e-6)


def test_oracle_and_measured_brock_differ_only_by_the_reader(protocol_result) -> None:
    _, _, _, result = protocol_result
    internal = result.predictions["internal"]
    assert not np.allclose(internal["clinical_brock"], internal["oracle_brock"])
    measured = CONFIG.reader.measure(np.array([8.0, 8.0]), np.array(["a", "b"]))
    again = CONFIG.reader.measure(np.array([8.0]), np.array(["b"]))
    assert measured[1] == again[0]  # one draw per patient, whatever else is measured


def test_label_efficiency_curve_has_every_fraction(protocol_result) -> None:
    internal, _, _, result = protocol_result
    frame = label_efficiency_frame(result)
    assert sorted(frame["fraction"].unique()) == [0.5, 1.0]
    assert set(frame["model"]) == {"jepa", "multimodal"}
    full = frame[(frame["fraction"] == 1.0) & (frame["model"] == "jepa")]
    np.testing.assert_allclose(full["probability"], result.predictions["internal"]["jepa"])
    half = frame[(frame["fraction"] == 0.5) & (frame["model"] == "jepa")]
    assert len(half) == len(internal)
    assert not np.allclose(half["probability"], full["probability"])


def test_predictions_round_trip_and_evaluate(protocol_result) -> None:
    _, _, _, result = protocol_result
    labels, predictions = predictions_from_frame(predictions_frame(result))
    for cohort in result.predictions:
        np.testing.assert_array_equal(labels[cohort], result.labels[cohort])
        for name, values in result.predictions[cohort].items():
            np.testing.assert_allclose(predictions[cohort][name], values)
    evaluation = evaluate_predictions(labels, predictions, n_replicates=50, seed=0)
    assert set(evaluation) == {"internal", "external", "delong"}
    assert "jepa_vs_multimodal" in evaluation["delong"]["external"]


def test_single_class_test_cohort_is_a_clear_error() -> None:
    internal = random_examples(40, crop_size_vox=16, n_ehr=6, seed=1)
    external = random_examples(10, crop_size_vox=16, n_ehr=6, seed=2)
    external.label[:] = 0
    config = ProtocolConfig(finetune=FinetuneConfig(epochs=1), seeds=(0,), folds=3)
    with pytest.raises(ValueError, match="external: 10 patients, 0 malignant"):
        run_protocol(internal, external, _small_encoder(6), config, progress=False)


def test_too_few_malignant_patients_for_the_folds_is_a_clear_error() -> None:
    internal = random_examples(40, crop_size_vox=16, n_ehr=6, seed=1)
    internal.label[:] = 0
    internal.label[:2] = 1
    external = random_examples(10, crop_size_vox=16, n_ehr=6, seed=2)
    config = ProtocolConfig(finetune=FinetuneConfig(epochs=1), seeds=(0,), folds=3)
    with pytest.raises(ValueError, match="2 malignant .* needs at least 3"):
        run_protocol(internal, external, _small_encoder(6), config, progress=False)

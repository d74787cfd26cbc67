"""Pseudonymisation: deterministic per key, different across keys and id kinds, never the raw id;
the demo key only for the generator's marked output, a private installation key for the rest."""

import os
import stat
from pathlib import Path

import pandas as pd
import pytest
from dicom_factory import PHI, curation_config, write_ct_series

from cohorts.dicom import curate_cohort
from cohorts.privacy import (
    DEMO_KEY,
    KEY_FILE_ENV,
    KeyFileError,
    date_shift_days,
    installation_key,
    key_fingerprint,
    key_record,
    pseudonymise,
    resolve_key,
)
from cohorts.synthetic import generate_archive, preset_config


def test_pseudonym_is_deterministic_and_keyed() -> None:
    key_a, key_b = b"key-a", b"key-b"
    assert pseudonymise("MRN001", key_a) == pseudonymise("MRN001", key_a)
    assert pseudonymise("MRN001", key_a) != pseudonymise("MRN001", key_b)
    assert pseudonymise("MRN001", key_a) != pseudonymise("MRN002", key_a)
    assert pseudonymise("MRN001", key_a, "patient") != pseudonymise("MRN001", key_a, "series")
    assert "MRN001" not in pseudonymise("MRN001", key_a)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown id kind"):
        pseudonymise("x", b"k", "hospital")


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home" / "pseudonym.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    monkeypatch.delenv("LUNGJEPA_PSEUDONYM_KEY", raising=False)
    return path


def test_real_data_gets_a_private_installation_key_never_the_demo_key(key_file: Path) -> None:
    assert not key_file.exists()
    key = resolve_key(synthetic=False)
    assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key != DEMO_KEY.encode() and len(key) == 64  # 32 random bytes, hex
    assert resolve_key(synthetic=False) == key == installation_key(key_file)  # stable
    assert resolve_key(synthetic=True) == DEMO_KEY.encode()
    assert key_fingerprint(key) != key_fingerprint(DEMO_KEY.encode())
    assert key.decode() not in key_fingerprint(key)


def test_environment_key_wins_for_any_data(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGJEPA_PSEUDONYM_KEY", "site-managed-secret")
    assert resolve_key(synthetic=False) == resolve_key(synthetic=True) == b"site-managed-secret"
    assert not key_file.exists()  # no installation key is created when a key is given


def test_a_key_file_others_can_read_or_without_a_key_is_refused(key_file: Path) -> None:
    installation_key(key_file)
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyFileError, match="readable by others.*chmod 600"):
        resolve_key(synthetic=False)
    key_file.write_text("short\n")
    os.chmod(key_file, 0o600)
    with pytest.raises(KeyFileError, match="no usable key"):
        resolve_key(synthetic=False)


def _real_export(root: Path) -> tuple[Path, str]:
    """A hospital-like cohort folder: one CT series, no generator marks anywhere."""
    spec = write_ct_series(root / "dicom" / "series1", n_slices=10, seed=4)
    return root, spec.series_uid


def test_curated_real_input_cannot_be_recomputed_with_the_demo_key(
    key_file: Path, tmp_path: Path
) -> None:
    raw, _ = _real_export(tmp_path / "raw")
    config = curation_config()  # no key given
    summary = curate_cohort(raw, tmp_path / "out", config, progress=False)
    index = pd.read_parquet(tmp_path / "out" / "index.parquet")
    assert summary.accepted == 1 and summary.synthetic is False
    mrn = PHI["patient_id"]
    private = installation_key(key_file)
    assert index["patient_id"].tolist() == [pseudonymise(mrn, private, "patient")]
    assert pseudonymise(mrn, DEMO_KEY.encode(), "patient") not in index["patient_id"].tolist()
    assert summary.key_fingerprint == key_fingerprint(private)


def test_generator_output_keeps_the_demo_key_but_a_marker_over_real_files_is_refused(
    key_file: Path, tmp_path: Path
) -> None:
    generate_archive(tmp_path / "synth", preset_config("tiny", seed=5, workers=1), progress=False)
    cohort = tmp_path / "synth" / "internal"
    config = curation_config()
    summary = curate_cohort(cohort, tmp_path / "out", config, progress=False)
    assert summary.synthetic is True
    assert summary.key_fingerprint == key_fingerprint(DEMO_KEY.encode())
    assert not key_file.exists()  # synthetic data never needs the private key

    # real series copied into the generated folder: not curated with the published key
    write_ct_series(cohort / "dicom" / "copied-in", n_slices=10, seed=6)
    with pytest.raises(ValueError, match="lack the generator's mark; remove the marker"):
        curate_cohort(cohort, tmp_path / "out2", config, progress=False)


def test_the_ehr_follows_curations_recorded_key_never_the_marker_file(
    key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cohorts.privacy import curated_key

    demo, private = DEMO_KEY.encode(), installation_key(key_file)
    assert curated_key(key_record(demo, 30, True), "curated_scans/archive") == demo
    assert curated_key(key_record(private, 30, False), "curated_scans/internal") == private
    # an older record without the flag: never the demo key
    unflagged = {"key_fingerprint": key_fingerprint(private)}
    assert curated_key(unflagged, "curated_scans/internal") == private
    with pytest.raises(ValueError, match=r"curated_scans/external: no pseudonymisation record"):
        curated_key({}, "curated_scans/external")
    monkeypatch.setenv("LUNGJEPA_PSEUDONYM_KEY", "a-site-secret-set-after-curation")
    with pytest.raises(ValueError, match=r"curated_scans/internal: curation used key .* now is"):
        curated_key(key_record(private, 30, False), "curated_scans/internal")


def test_a_marker_copied_over_real_files_never_puts_the_demo_key_on_their_ehr(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """Through the real assets: curation refuses the marker over unmarked series, so the EHR
    is not featurised; once the cohort is curated as real data (private key), its EHR takes
    the same private key even with the marker file put back: ehr_features follows curation's
    record, not the marker (before, a marker alone gave the EHR the published key)."""
    import json
    import shutil

    import dagster as dg
    from pipeline_run import run_pipeline

    from cohorts.privacy import SYNTHETIC_MARKER

    source, _, result = tiny_pipeline
    assert result.success
    root = tmp_path / "site"
    shutil.copytree(source / "data" / "raw", root / "data" / "raw")
    internal = root / "data" / "raw" / "internal"
    write_ct_series(internal / "dicom" / "copied-in", n_slices=10, seed=6)  # no generator mark
    marker = (internal / SYNTHETIC_MARKER).read_text()
    feast_record = root / "data" / "feast" / "key_fingerprint.json"
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        refused = run_pipeline(root, instance, ["curated_scans", "ehr_features"])
        assert not refused.success
        assert not feast_record.exists()  # no EHR was pseudonymised at all

        # the cohort curated as real data (no marker; the copied-in series taken out again)
        shutil.rmtree(internal / "dicom" / "copied-in")
        (internal / SYNTHETIC_MARKER).unlink()
        assert run_pipeline(root, instance, ["curated_scans", "ehr_features"]).success
        (internal / SYNTHETIC_MARKER).write_text(marker)  # the marker comes back
        assert run_pipeline(root, instance, ["ehr_features"]).success

    records = json.loads(feast_record.read_text())
    private = key_fingerprint(resolve_key(synthetic=False))
    assert records["internal"] == {
        "key_fingerprint": private,
        "date_shift_max_days": records["archive"]["date_shift_max_days"],
        "synthetic": False,
    }
    assert records["archive"]["key_fingerprint"] == key_fingerprint(DEMO_KEY.encode())
    sources = root / "data" / "feast" / "sources"
    ehr_ids = set(pd.read_parquet(sources / "demographics.parquet")["patient_id"])
    curated = pd.read_parquet(root / "data" / "curated" / "internal" / "index.parquet")
    assert set(curated["patient_id"]) & ehr_ids  # CT and EHR still link under the private key


def test_date_shift_is_backward_bounded_keyed_and_consistent() -> None:
    shifts = {date_shift_days(f"MRN{i}", b"k", 30) for i in range(200)}
    assert all(-30 <= s <= -1 for s in shifts) and len(shifts) > 20
    other_key = [date_shift_days(f"MRN{i}", b"other", 30) for i in range(50)]
    assert other_key != [date_shift_days(f"MRN{i}", b"k", 30) for i in range(50)]
    assert date_shift_days("MRN1", b"k", 30) == date_shift_days("MRN1", b"k", 30)
    assert date_shift_days("MRN1", b"k", 0) == 0


def test_ct_and_ehr_pseudonymised_with_different_keys_are_refused_not_joined() -> None:
    from cohorts.privacy import check_same_key

    a, b = key_record(b"key-a" * 8, 30, False), key_record(b"key-b" * 8, 30, False)
    check_same_key("internal", a, a)  # same key: joins
    check_same_key("internal", a, {})  # an older output without a record: not checked
    with pytest.raises(
        ValueError, match=r"internal: the curated CT ids .* EHR features .* same key"
    ):
        check_same_key("internal", a, b)
    with pytest.raises(ValueError, match=r"internal: .* date_shift_max_days 30 .* with 0"):
        check_same_key("internal", a, key_record(b"key-a" * 8, 0, False))


def test_an_arrival_batch_must_share_the_key_of_some_ehr_cohort() -> None:
    from cohorts.privacy import check_shares_a_key

    site, demo = key_record(b"key-a" * 8, 30, False), key_record(DEMO_KEY.encode(), 30, True)
    check_shares_a_key("incoming batch b1", site, {"archive": demo, "internal": site})
    check_shares_a_key("incoming batch b1", site, {})  # a store built before records: unchecked
    with pytest.raises(ValueError, match=r"incoming batch b1 shares its key .* no EHR cohort"):
        check_shares_a_key("incoming batch b1", site, {"archive": demo})


def test_shifted_and_unshifted_pipelines_give_the_same_examples_and_the_same_model(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    """The date shift (on by default) changes every released date and nothing a model sees.

    The session's tiny pipeline ran with params.yaml's shift; here the same raw archive is
    curated, featurised through Feast and assembled again with the shift off. CT and EHR
    moved together, so the point-in-time join picks the same snapshot for every scan.
    """
    import shutil

    import dagster as dg
    import numpy as np
    import torch
    from pipeline_run import run_pipeline

    from cohorts.example_set import load_examples
    from models.diagnostic import DiagnosticModel
    from models.encoders import EncoderConfig, MultimodalEncoder
    from models.finetune import FinetuneConfig, finetune, predict_proba
    from orchestration.resources import COHORTS

    shifted_root, _, shifted_run = tiny_pipeline
    assert shifted_run.success
    plain_root = tmp_path / "plain"
    shutil.copytree(shifted_root / "data" / "raw", plain_root / "data" / "raw")
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        plain_run = run_pipeline(
            plain_root,
            instance,
            ["curated_scans", "ehr_features", "training_examples"],
            resources={"privacy": {"date_shift_max_days": 0}},
        )
    assert plain_run.success

    for cohort in COHORTS:
        shifted_index = pd.read_parquet(shifted_root / "data/curated" / cohort / "index.parquet")
        plain_index = pd.read_parquet(plain_root / "data/curated" / cohort / "index.parquet")
        both = shifted_index.merge(plain_index, on="series_id", suffixes=("_s", "_p"))
        assert len(both) == len(plain_index) > 0
        days = (pd.to_datetime(both["study_date_p"]) - pd.to_datetime(both["study_date_s"])).dt.days
        assert days.between(1, 365).all()  # every date moved back
        assert (days.groupby(both["patient_id_s"]).nunique() == 1).all()  # one shift a patient
        a = np.load(shifted_root / "data/examples" / f"{cohort}.npz")
        b = np.load(plain_root / "data/examples" / f"{cohort}.npz")
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{cohort}: {name}")

    models = []
    for root in (shifted_root, plain_root):
        examples = load_examples(root / "data/examples/internal.npz")
        torch.manual_seed(0)
        config = EncoderConfig(
            n_ehr_features=examples.n_ehr_features,
            crop_size_vox=examples.crop_size_vox,
            embed_dim=16,
            depth=1,
            heads=2,
        )
        model = DiagnosticModel(MultimodalEncoder(config), "multimodal")
        trained = finetune(model, examples, examples, FinetuneConfig(epochs=2), progress=False)
        models.append(predict_proba(trained.model, examples))
    np.testing.assert_array_equal(models[0], models[1])


def test_every_card_records_the_key_fingerprint_and_never_the_key(tiny_pipeline: tuple) -> None:
    """Examples, model cards and the ONNX metadata name the key by its fingerprint, so a model
    can be traced to the ids it was trained on; the key itself appears nowhere."""
    import json

    import onnx

    root, _, result = tiny_pipeline
    assert result.success
    demo = key_fingerprint(DEMO_KEY.encode())  # the tiny archive is the generator's output
    examples = json.loads((root / "data/examples/key_fingerprint.json").read_text())
    assert {c: r["key_fingerprint"] for c, r in examples.items()} == {
        "archive": demo,
        "internal": demo,
        "external": demo,
    }
    assert {r["date_shift_max_days"] for r in examples.values()} == {365}
    latest = json.loads((root / "artifacts/models/latest.json").read_text())
    card_text = (root / "artifacts" / latest["path"] / "card.json").read_text()
    assert json.loads(card_text)["privacy"] == examples
    exported = json.loads((root / "artifacts" / latest["path"] / "onnx/exported.json").read_text())
    onnx_path = root / "artifacts" / exported["models"]["jepa"]
    metadata = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert json.loads(metadata["key_fingerprints"])["internal"] == demo
    assert DEMO_KEY not in card_text and DEMO_KEY not in json.dumps(metadata)

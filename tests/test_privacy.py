"""Pseudonymisation: deterministic per key, different across keys and id kinds, never the raw id;
the demo key only for the generator's marked output, a private installation key for the rest."""

import os
import stat
from pathlib import Path

import pandas as pd
import pytest
from dicom_factory import PHI, write_ct_series

from cohorts.dicom import CurationConfig, curate_cohort
from cohorts.privacy import (
    DEMO_KEY,
    KEY_FILE_ENV,
    KeyFileError,
    date_shift_days,
    installation_key,
    key_fingerprint,
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
    config = CurationConfig(min_slices=8, workers=1, crop_size_vox=16)  # no key given
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
    config = CurationConfig(min_slices=8, workers=1, crop_size_vox=16)
    summary = curate_cohort(cohort, tmp_path / "out", config, progress=False)
    assert summary.synthetic is True
    assert summary.key_fingerprint == key_fingerprint(DEMO_KEY.encode())
    assert not key_file.exists()  # synthetic data never needs the private key

    # real series copied into the generated folder: not curated with the published key
    write_ct_series(cohort / "dicom" / "copied-in", n_slices=10, seed=6)
    with pytest.raises(ValueError, match="lack the generator's mark; remove the marker"):
        curate_cohort(cohort, tmp_path / "out2", config, progress=False)


def test_date_shift_is_bounded_and_consistent() -> None:
    shifts = {date_shift_days(f"MRN{i}", b"k", 30) for i in range(200)}
    assert all(-30 <= s <= 30 for s in shifts) and len(shifts) > 10
    assert date_shift_days("MRN1", b"k", 30) == date_shift_days("MRN1", b"k", 30)
    assert date_shift_days("MRN1", b"k", 0) == 0


def test_ct_and_ehr_pseudonymised_with_different_keys_are_refused_not_joined() -> None:
    from cohorts.privacy import check_same_key

    a, b = key_fingerprint(b"key-a" * 8), key_fingerprint(b"key-b" * 8)
    check_same_key("internal", a, a)  # same key: joins
    check_same_key("internal", a, None)  # an older output without a record: not checked
    with pytest.raises(
        ValueError, match=r"internal: the curated CT ids .* EHR features .* same key"
    ):
        check_same_key("internal", a, b)

"""Pseudonymisation: deterministic per key, different across keys and id kinds, never the raw id."""

import pytest

from cohorts.privacy import date_shift_days, pseudonym_key, pseudonymise


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


def test_environment_key_overrides_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGJEPA_PSEUDONYM_KEY", "from-env")
    assert pseudonym_key("from-config") == b"from-env"
    monkeypatch.delenv("LUNGJEPA_PSEUDONYM_KEY")
    assert pseudonym_key("from-config") == b"from-config"


def test_date_shift_is_bounded_and_consistent() -> None:
    shifts = {date_shift_days(f"MRN{i}", b"k", 30) for i in range(200)}
    assert all(-30 <= s <= 30 for s in shifts) and len(shifts) > 10
    assert date_shift_days("MRN1", b"k", 30) == date_shift_days("MRN1", b"k", 30)
    assert date_shift_days("MRN1", b"k", 0) == 0

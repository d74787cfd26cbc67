"""params.yaml profiles (`extends`) and where relative output paths resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestration import params as params_module


@pytest.fixture
def params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "params.yaml"
    monkeypatch.setenv(params_module.PARAMS_ENV, str(path))
    params_module.load_params.cache_clear()
    yield path
    params_module.load_params.cache_clear()


def _write(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data))


def test_a_profile_extends_another_and_overrides_it(params_file: Path) -> None:
    _write(
        params_file,
        {
            "pretrain": {"epochs": 100, "lr": 0.001},
            "retraining": {"cron": "0 2 * * 0"},
            "profiles": {
                "tiny": {"pretrain": {"epochs": 2}},
                "team-ci": {"extends": "tiny", "retraining": {"cron": "* * * * *"}},
            },
        },
    )
    merged = params_module.params("team-ci")
    assert merged["pretrain"] == {"epochs": 2, "lr": 0.001}
    assert merged["retraining"] == {"cron": "* * * * *"}
    assert "extends" not in merged and "profiles" not in merged


def test_profiles_that_extend_in_a_cycle_or_name_no_profile_are_refused(params_file: Path) -> None:
    _write(params_file, {"profiles": {"a": {"extends": "b"}, "b": {"extends": "a"}, "c": {}}})
    with pytest.raises(ValueError, match="cycle"):
        params_module.params("a")
    _write(params_file, {"profiles": {"a": {"extends": "missing"}}})
    params_module.load_params.cache_clear()
    with pytest.raises(KeyError, match="missing"):
        params_module.params("a")


def test_the_repository_team_ci_profile_is_tiny_with_a_schedule_every_minute() -> None:
    tiny, team = params_module.params("tiny"), params_module.params("team-ci")
    assert team["retraining"]["cron"] == "* * * * *"
    assert {k: v for k, v in team.items() if k != "retraining"} == {
        k: v for k, v in tiny.items() if k != "retraining"
    }


def test_relative_paths_resolve_under_lungjepa_root_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(params_module.ROOT_ENV, raising=False)
    assert params_module.resolve_path("data") == params_module.REPO_ROOT / "data"
    monkeypatch.setenv(params_module.ROOT_ENV, str(tmp_path))
    assert params_module.resolve_path("data") == tmp_path.resolve() / "data"
    assert params_module.resolve_path("/abs/data") == Path("/abs/data")


def test_a_profile_changed_after_the_first_read_is_refused(monkeypatch) -> None:
    """Config defaults hold the first read's profile: a later switch must not mix two."""
    from orchestration import params as params_module

    monkeypatch.setattr(params_module, "_FIRST_ACTIVE", [])
    monkeypatch.setenv("LUNGJEPA_PROFILE", "tiny")
    assert params_module.params()["synth"]["preset"] == "tiny"
    monkeypatch.setenv("LUNGJEPA_PROFILE", "study")
    with pytest.raises(RuntimeError, match="changed from 'tiny' to 'study'"):
        params_module.section("synth")
    assert params_module.section("synth", "study")["preset"] == "study"  # named: always fine

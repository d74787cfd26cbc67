"""EHR features through a real Feast store (file offline store, SQLite online store) in tmp dirs."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ehr_factory import AS_OF, LOOKBACK, N_SIG, SIGNATURES, TTL_DAYS, archive_ehr, write_ehr
from feast import FeatureStore
from feast.repo_config import load_repo_config
from feast.repo_operations import apply_total

from cohorts.ehr import (
    CLINICAL_HISTORY,
    CLINICAL_SIGNATURES,
    VIEWS,
    CohortFeatures,
    build_feature_tables,
    combine_cohorts,
    ehr_feature_names,
    fit_signatures,
    scan_timestamp,
)
from cohorts.ehr.covariates import CLINICAL_HISTORY_FEATURES
from cohorts.privacy import pseudonymise
from feature_repo.store import (
    apply_definitions,
    historical_features,
    materialize,
    online_features,
    open_store,
    write_sources,
)

REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
KEY = b"test-key"
# Patient A is scanned on 2019-01-15 and 2021-03-01; patient B on 2019-01-15 only.
SCAN_1, SCAN_2 = dt.date(2019, 1, 15), dt.date(2021, 3, 1)
INTERNAL = {
    "person": ["A,F,1955,1,1,,1", "B,M,1948,1,1,,1"],
    "condition_occurrence": [
        "A,J44.9,2018-03-01",  # before scan 1
        "A,Z80.1,2019-01-15",  # on scan 1's day: counts (inclusive rule)
        "A,J43.1,2019-01-16",  # the day after scan 1: must not reach it
        "A,F17.210,2019-06-01",  # after scan 1
        "A,I10,2019-06-01",
        "B,E11.9,2019-02-01",  # B's history starts after the scan
        "B,Z85.3,2019-02-01",
    ],
    "observation": ["A,401201003,2019-06-01,40,"],
    "drug_exposure": ["A,197361,2018-03-01", "A,1191,2019-06-01"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Signatures fitted on an archive, internal cohort tables written to and applied in a store."""
    root = tmp_path_factory.mktemp("feast")
    signatures = fit_signatures(archive_ehr(root / "archive"), N_SIG, LOOKBACK, as_of=AS_OF)
    internal_dir = write_ehr(root / "internal", INTERNAL)
    built = build_feature_tables(
        internal_dir, "internal", KEY, signatures, LOOKBACK, as_of=AS_OF, date_shift_max_days=0
    )
    data_dir = root / "data"
    write_sources(combine_cohorts([built]), data_dir)
    store = open_store(REPO_DIR, data_dir)
    apply_definitions(store, data_dir, TTL_DAYS, N_SIG)
    return {
        "root": root,
        "store": store,
        "data_dir": data_dir,
        "signatures": signatures,
        "internal_dir": internal_dir,
        "A": pseudonymise("A", KEY, "patient"),
        "B": pseudonymise("B", KEY, "patient"),
    }


def _mid_year(year: int) -> int:
    """birth_reference_day of an unshifted year of birth (cohorts/ehr/features.py)."""
    return (dt.date(year, 7, 1) - dt.date(1970, 1, 1)).days


def _truncated_features(world: dict, as_of: dt.date) -> CohortFeatures:
    """The same cohort built from only the events up to ``as_of`` (the ground truth)."""
    return build_feature_tables(
        world["internal_dir"],
        "internal",
        KEY,
        world["signatures"],
        LOOKBACK,
        as_of=as_of,
        date_shift_max_days=0,
    )


def test_point_in_time_features_never_see_later_events(world: dict) -> None:
    a, b = world["A"], world["B"]
    entity = pd.DataFrame(
        {
            "patient_id": [a, b, a],
            "event_timestamp": scan_timestamp(pd.Series([SCAN_1, SCAN_1, SCAN_2])),
        }
    )
    got = historical_features(world["store"], entity)
    assert got["patient_id"].tolist() == [a, b, a]
    assert set(ehr_feature_names(N_SIG)) - {"age_at_scan_years"} <= set(got.columns)

    first = got.iloc[0]
    assert first["copd"] == 1  # 2018 event reaches the scan
    assert first["family_history_lung_cancer"] == 1  # scan-day event counts
    assert first["emphysema"] == 0  # next-day event does not
    assert first["smoking_current"] == 0 and first["pack_years"] == 0
    assert first["sex_female"] == 1 and first["birth_reference_day"] == _mid_year(1955)
    assert got.iloc[1][CLINICAL_HISTORY_FEATURES + SIGNATURES].isna().all()  # nothing yet
    assert got.iloc[1]["birth_reference_day"] == _mid_year(1948)
    later = got.iloc[2]
    assert later["emphysema"] == 1 and later["smoking_current"] == 1 and later["pack_years"] == 40

    # every feature equals the one computed from the EHR cut at the scan day
    for row, scan in [(0, SCAN_1), (2, SCAN_2)]:
        truth = _truncated_features(world, scan).tables
        for view, names in [
            (CLINICAL_HISTORY, CLINICAL_HISTORY_FEATURES),
            (CLINICAL_SIGNATURES, SIGNATURES),
        ]:
            table = truth[view]
            expected = table[table["patient_id"] == a].iloc[-1][names].astype(float)
            np.testing.assert_allclose(got.iloc[row][names].astype(float), expected, rtol=1e-6)


def test_online_features_equal_historical_at_materialisation(world: dict) -> None:
    store, a, b = world["store"], world["A"], world["B"]
    first_end = dt.datetime(2019, 3, 1, tzinfo=dt.UTC)
    second_end = dt.datetime(2021, 3, 1, tzinfo=dt.UTC)
    names = ["sex_female", "birth_reference_day", *CLINICAL_HISTORY_FEATURES, *SIGNATURES]
    for end in (first_end, second_end):  # the second run is incremental
        materialize(store, end)
        online = online_features(store, [a, b]).set_index("patient_id")
        entity = pd.DataFrame({"patient_id": [a, b], "event_timestamp": [pd.Timestamp(end)] * 2})
        offline = historical_features(store, entity).set_index("patient_id")
        for pid in (a, b):
            np.testing.assert_allclose(
                online.loc[pid, names].astype(float),
                offline.loc[pid, names].astype(float),
                rtol=1e-6,
            )
    assert online.loc[a, "pack_years"] == 40  # the second run brought A's 2019-06 history
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == set(VIEWS)
    assert all(v.most_recent_end_time is not None for v in views.values())


def test_clinical_views_expire_after_the_ttl_and_demographics_never_do(
    world: dict, tmp_path: Path
) -> None:
    """features.ttl_days: a scan more than ttl after a patient's latest clinical snapshot gets
    no clinical history (NaN, so the model sees it as unrecorded) but keeps its demographics."""
    from feature_repo.definitions import source_path

    data_dir = tmp_path / "data"
    shutil.copytree(world["data_dir"] / "feast" / "sources", data_dir / "feast" / "sources")
    short = open_store(REPO_DIR, data_dir)
    apply_definitions(short, data_dir, ttl_days=30, n_signatures=N_SIG)
    history = pd.read_parquet(source_path(data_dir, CLINICAL_HISTORY))
    a = world["A"]
    last = history.loc[history["patient_id"] == a, "event_timestamp"].max()
    entity = pd.DataFrame(
        {"patient_id": [a, a], "event_timestamp": [last + pd.Timedelta(days=d) for d in (10, 40)]}
    )
    names = [*CLINICAL_HISTORY_FEATURES, *SIGNATURES]
    within, expired = historical_features(short, entity).itertuples(index=False)
    long_ttl = historical_features(world["store"], entity)
    assert not pd.isna([getattr(within, n) for n in names]).any()
    assert pd.isna([getattr(expired, n) for n in names]).all()
    assert expired.birth_reference_day == _mid_year(1955) and expired.sex_female == 1
    # the product's ttl (ten years) keeps the same snapshot for both scans
    for row in (0, 1):
        np.testing.assert_allclose(
            long_ttl.iloc[row][names].astype(float),
            pd.Series(within._asdict())[names].astype(float),
            rtol=1e-6,
        )


def test_write_sources_rejects_naive_timestamps(world: dict, tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"patient_id": ["P1"], "event_timestamp": [pd.Timestamp("2020-01-01")], "cohort": ["x"]}
    )
    with pytest.raises(ValueError, match="tz-aware UTC"):
        write_sources({CLINICAL_HISTORY: table}, tmp_path)
    with pytest.raises(ValueError, match="tz-aware"):
        historical_features(world["store"], table[["patient_id", "event_timestamp"]])


def _copy_repo(tmp_path: Path) -> Path:
    """A copy of feature_repo/ whose default paths land in tmp_path/data/feast."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(REPO_DIR, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "data" / "feast").mkdir(parents=True)  # feast's file registry makes one level only
    return repo


def test_repo_yaml_is_valid_and_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `feast apply` does, in-process: load feature_store.yaml, import the repo, apply."""
    repo = _copy_repo(tmp_path)
    monkeypatch.chdir(repo)  # feast names repo modules relative to the working directory
    monkeypatch.setattr(sys, "path", [*sys.path, str(repo)])  # as the CLI's repo check does
    monkeypatch.delitem(sys.modules, "definitions", raising=False)
    config = load_repo_config(repo, repo / "feature_store.yaml")
    assert (config.project, config.provider) == ("lungjepa", "local")
    assert config.online_store.type == "sqlite" and config.offline_store.type == "file"
    apply_total(config, repo, skip_source_validation=True)
    sys.modules.pop("definitions", None)
    store = FeatureStore(repo_path=str(repo))
    assert (tmp_path / "data" / "feast" / "registry.db").is_file()
    assert {s.name for s in store.list_feature_services()} == {
        "diagnosis_training",
        "diagnosis_serving",
    }
    assert {v.name for v in store.list_feature_views()} == set(VIEWS)
    sources = {v.name: v.batch_source.path for v in store.list_feature_views()}
    assert sources[CLINICAL_HISTORY] == str(
        tmp_path / "data/feast/sources/clinical_history.parquet"
    )


def test_feast_cli_applies_the_repo_yaml(tmp_path: Path) -> None:
    repo = _copy_repo(tmp_path)
    feast = Path(sys.executable).parent / "feast"
    result = subprocess.run(
        [str(feast), "apply"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "data" / "feast" / "registry.db").is_file()
    store = FeatureStore(repo_path=str(repo))
    assert {s.name for s in store.list_feature_services()} == {
        "diagnosis_training",
        "diagnosis_serving",
    }

"""The team deployment on its real servers: PostgreSQL, Redis, dagster-daemon and -webserver.

`make test-team` starts a deployment of its own (deploy/team/team.sh, profile team-ci: the tiny
chain, with a retraining schedule that fires every minute), runs this file, and stops it. The
runs are launched the way a user launches them: through the webserver's GraphQL API into the
run queue, which the daemon drains; nothing here executes a job in-process.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.team

REPO = Path(__file__).resolve().parents[2]
WORKSPACE = REPO / "deploy" / "team" / "workspace.yaml"
RUN_TIMEOUT_S = 1200
PROFILE = "team-ci"


def _read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.fixture(scope="module")
def team() -> Iterator[dict[str, str]]:
    """The deployment's settings (its env file), exported into this process while the tests run."""
    env_file = os.environ.get("LUNGJEPA_TEAM_ENV")
    assert env_file and Path(env_file).is_file(), (
        "no team deployment: run these through `make test-team` (it starts one), or set "
        "LUNGJEPA_TEAM_ENV to the team.env of a running one (make team-up)"
    )
    settings = _read_env(Path(env_file))
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield settings
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def instance(team: dict[str, str]):
    import dagster as dg

    with dg.DagsterInstance.from_config(team["DAGSTER_HOME"]) as inst:
        yield inst


def _engine(team: dict[str, str], database: str) -> sa.Engine:
    url = sa.URL.create(
        "postgresql+psycopg",
        username=team["LUNGJEPA_PG_USER"],
        password=team["LUNGJEPA_PG_PASSWORD"],
        host=team["LUNGJEPA_PG_HOST"],
        port=int(team["LUNGJEPA_PG_PORT"]),
        database=database,
    )
    return sa.create_engine(url)


def _client(team: dict[str, str]):
    from dagster_graphql import DagsterGraphQLClient

    return DagsterGraphQLClient("127.0.0.1", port_number=int(team["LUNGJEPA_UI_PORT"]))


def _wait_finished(instance, run_ids: list[str], timeout_s: float = RUN_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = {run_id: instance.get_run_by_id(run_id) for run_id in run_ids}
        if all(run is not None and run.is_finished for run in runs.values()):
            return runs
        assert time.monotonic() < deadline, {r: run.status for r, run in runs.items() if run}
        time.sleep(3)


BLOCKED = "Step blocked by limit for pool gpu"
HOLDER = "team-test-holds-the-gpu"


def _blocked_steps(instance, run_id: str) -> set[str]:
    return {
        entry.step_key
        for entry in instance.all_logs(run_id)
        if entry.step_key and entry.message and entry.message.startswith(BLOCKED)
    }


@pytest.fixture(scope="module")
def two_runs(team: dict[str, str], instance, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The full tiny pipeline twice, submitted at once: on the deployment's own folder
    ($LUNGJEPA_ROOT, default run config) and on a folder of its own.

    The test holds the gpu pool's one slot until both runs wait for it at jepa_encoder, so the
    two training steps really contend (unheld, one run can finish training before the other
    gets there, and "never overlapped" would prove nothing).
    """
    from pipeline_run import pipeline_run_config

    storage = instance.event_log_storage
    assert storage.claim_concurrency_slot("gpu", HOLDER, "holder").is_claimed
    other = tmp_path_factory.mktemp("team_run")
    client = _client(team)
    try:
        submitted = {
            "deployment": client.submit_job_execution("full_pipeline", run_config={}),
            "other": client.submit_job_execution(
                "full_pipeline", run_config=pipeline_run_config(other)
            ),
        }
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not all(
            "jepa_encoder" in _blocked_steps(instance, run_id) for run_id in submitted.values()
        ):
            runs = [instance.get_run_by_id(run_id) for run_id in submitted.values()]
            assert not any(run.is_finished for run in runs), [run.status for run in runs]
            assert time.monotonic() < deadline, "the runs never reached the gpu pool"
            time.sleep(3)
    finally:
        storage.free_concurrency_slots_for_run(HOLDER)
    runs = _wait_finished(instance, list(submitted.values()))
    return {
        "ids": submitted,
        "runs": {name: runs[run_id] for name, run_id in submitted.items()},
        "data": {"deployment": Path(team["LUNGJEPA_ROOT"]) / "data", "other": other / "data"},
    }


def test_two_runs_through_the_queue_both_succeed_and_live_in_postgres(
    team: dict[str, str], two_runs: dict
) -> None:
    from dagster import DagsterRunStatus

    for name, run in two_runs["runs"].items():
        assert run.status == DagsterRunStatus.SUCCESS, name
    ids = list(two_runs["ids"].values())
    with _engine(team, team["LUNGJEPA_PG_DAGSTER_DB"]).connect() as conn:
        query = sa.text("SELECT count(*) FROM runs WHERE run_id = ANY(:ids)")
        assert conn.execute(query, {"ids": ids}).scalar() == 2
        for run_id in ids:
            events = sa.text("SELECT count(*) FROM event_logs WHERE run_id = :id")
            assert conn.execute(events, {"id": run_id}).scalar() > 50


def _gpu_steps(instance, run_id: str) -> list[tuple[str, float, float]]:
    from dagster import DagsterEventType

    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key not in ("jepa_encoder", "diagnostic_models"):
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = entry.timestamp
    assert starts.keys() == ends.keys() == {"jepa_encoder", "diagnostic_models"}
    return [(step, starts[step], ends[step]) for step in starts]


def test_the_gpu_pool_runs_one_training_step_at_a_time_across_the_two_runs(
    instance, two_runs: dict
) -> None:
    first, second = (_gpu_steps(instance, run_id) for run_id in two_runs["ids"].values())
    for step_a, start_a, end_a in first:
        for step_b, start_b, end_b in second:
            assert end_a <= start_b or end_b <= start_a, (step_a, step_b)
    info = instance.event_log_storage.get_concurrency_info("gpu")
    assert info.slot_count == 1 and not info.using_default_limit  # team-up set it explicitly
    # the wait is in each run's event log (the fixture held the slot until both waited)
    for run_id in two_runs["ids"].values():
        assert "jepa_encoder" in _blocked_steps(instance, run_id)


def _definition_names(data_dir: Path) -> dict[str, set[str]]:
    from feature_repo.definitions import feature_definitions

    features = section_features()
    kinds: dict[str, set[str]] = {}
    for obj in feature_definitions(data_dir, features["ttl_days"], features["n_signatures"]):
        kinds.setdefault(type(obj).__name__, set()).add(obj.name)
    return kinds


def test_features_come_from_redis_and_a_sql_registry_and_equal_the_embedded_store(
    team: dict[str, str], two_runs: dict
) -> None:
    import redis

    from feature_repo import store as feast_store

    backends = feast_store.StoreBackends.from_env()
    assert backends.describe() == {"registry": "sql", "online_store": "redis"}
    client = redis.Redis(
        host="127.0.0.1",
        port=int(team["LUNGJEPA_REDIS_PORT"]),
        password=team["LUNGJEPA_REDIS_PASSWORD"],
    )
    assert client.dbsize() > 0
    repo = REPO / "feature_repo"
    projects = set()
    for name, data_dir in two_runs["data"].items():
        assert not (feast_store.feast_dir(data_dir) / "online.db").exists(), name  # no SQLite
        assert not (feast_store.feast_dir(data_dir) / "registry.db").exists(), name
        team_store = feast_store.open_store(repo, data_dir)
        projects.add(team_store.project)
        assert type(team_store.registry).__name__ == "SqlRegistry"
        # every object of the definitions, after two runs applied theirs at once
        listed = {
            "Entity": {e.name for e in team_store.list_entities()},
            "FileSource": {s.name for s in team_store.list_data_sources()},
            "FeatureView": {v.name for v in team_store.list_feature_views()},
            "FeatureService": {s.name for s in team_store.list_feature_services()},
        }
        assert listed == _definition_names(data_dir), name

        sources = pd.read_parquet(next((feast_store.feast_dir(data_dir) / "sources").glob("*")))
        patients = sorted(sources["patient_id"].unique())
        from_redis = feast_store.online_features(team_store, patients)

        embedded = feast_store.open_store(repo, data_dir, feast_store.StoreBackends())
        features = section_features()
        feast_store.apply_definitions(
            embedded, data_dir, features["ttl_days"], features["n_signatures"]
        )
        feast_store.materialize(embedded, pd.Timestamp.now(tz="UTC").to_pydatetime())
        from_sqlite = feast_store.online_features(embedded, patients)
        assert from_redis.notna().to_numpy().sum() > len(patients)  # real values, not nulls
        pd.testing.assert_frame_equal(
            from_redis.sort_index(axis=1), from_sqlite.sort_index(axis=1), check_dtype=False
        )
    assert len(projects) == 2  # one registry namespace per data folder

    with _engine(team, "feast").connect() as conn:
        rows = conn.execute(
            sa.text("SELECT count(*) FROM feature_views WHERE project_id = ANY(:p)"),
            {"p": sorted(projects)},
        ).scalar()
    assert rows == 2 * len(_definition_names(two_runs["data"]["other"])["FeatureView"])


def section_features() -> dict[str, Any]:
    from orchestration.params import section

    return section("features", PROFILE)


def _dagster(*args: str) -> None:
    command = [str(REPO / ".venv" / "bin" / "dagster"), *args, "-w", str(WORKSPACE)]
    subprocess.run(command, cwd=REPO, env=os.environ.copy(), check=True, capture_output=True)


def test_a_scheduled_tick_evaluated_by_the_daemon_launches_retraining(
    team: dict[str, str], instance, two_runs: dict
) -> None:
    from dagster import DagsterRunStatus, RunsFilter

    assert two_runs["runs"]["deployment"].status == DagsterRunStatus.SUCCESS
    schedule = {"dagster/schedule_name": "weekly_retraining"}
    assert not instance.get_runs(filters=RunsFilter(tags=schedule))
    _dagster("schedule", "start", "weekly_retraining")
    try:
        deadline = time.monotonic() + 180  # cron every minute (team-ci), daemon every ~30 s
        while not (runs := instance.get_runs(filters=RunsFilter(tags=schedule))):
            assert time.monotonic() < deadline, "the daemon launched no scheduled run"
            time.sleep(3)
    finally:
        _dagster("schedule", "stop", "weekly_retraining")
    run = runs[-1]
    assert run.job_name == "retraining"
    finished = _wait_finished(instance, [run.run_id])[run.run_id]
    assert finished.status == DagsterRunStatus.SUCCESS
    with _engine(team, team["LUNGJEPA_PG_DAGSTER_DB"]).connect() as conn:
        ticks = conn.execute(sa.text("SELECT count(*) FROM job_ticks WHERE status = 'SUCCESS'"))
        assert ticks.scalar() >= 1

"""orchestration/runs.py: a run killed with kill -9 is found, marked failed and its pool slot
freed, so the next materialisation of the asset is not blocked for ever.

Real Dagster: a child process runs a one-asset job on a persistent SQLite instance whose
pools have limit 1 (as orchestration/dagster.yaml sets), and is killed mid-step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from orchestration.runs import recover_dead_runs, run_tags

JOB = textwrap.dedent(
    """
    import sys, time, dagster as dg
    from orchestration.runs import run_tags

    @dg.asset(pool="slow_asset")
    def slow_asset() -> None:
        time.sleep(float(sys.argv[1]))

    defs = dg.Definitions(assets=[slow_asset])
    job = dg.define_asset_job("slow", selection=[slow_asset]).resolve(
        asset_graph=defs.resolve_asset_graph()
    )
    with dg.DagsterInstance.get() as instance:
        ok = job.execute_in_process(instance=instance, tags=run_tags()).success
    sys.exit(0 if ok else 1)
    """
)


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "concurrency:\n  pools:\n    default_limit: 1\ntelemetry:\n  enabled: false\n"
    )
    return home


def _child(home: Path, seconds: float) -> subprocess.Popen[bytes]:
    """The job in a child process; its output goes to a log beside the instance."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(Path.cwd())}
    log = (home / f"child_{seconds:g}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-c", JOB, str(seconds)], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def test_a_killed_run_is_marked_failed_and_its_pool_slot_freed(tmp_path: Path) -> None:
    home = _home(tmp_path)
    child = _child(home, 120)
    instance = dg.DagsterInstance.from_config(str(home))
    deadline = time.time() + 90
    while time.time() < deadline:  # until the step holds the pool's one slot
        if instance.event_log_storage.get_concurrency_info("slow_asset").active_slot_count:
            break
        time.sleep(0.5)
    else:
        child.kill()
        raise AssertionError("the child's step never claimed its pool slot")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    (record,) = instance.get_run_records()
    assert record.dagster_run.status == dg.DagsterRunStatus.STARTED  # nobody saw it die
    assert record.dagster_run.tags == {**record.dagster_run.tags, **run_tags()}

    assert recover_dead_runs(instance) == [record.dagster_run.run_id]
    run = instance.get_run_by_id(record.dagster_run.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info("slow_asset").active_slot_count == 0
    assert recover_dead_runs(instance) == []  # nothing left to recover

    again = _child(home, 0)  # the next materialisation is not blocked by the dead run
    assert again.wait(timeout=120) == 0, (home / "child_0.log").read_text()[-4000:]


def test_a_live_run_is_left_alone(tmp_path: Path) -> None:
    home = _home(tmp_path)
    child = _child(home, 30)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not instance.get_run_records(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
        ):
            time.sleep(0.5)
        assert instance.get_run_records(), "the child never started its run"
        assert recover_dead_runs(instance) == []
    finally:
        child.kill()
        child.wait()

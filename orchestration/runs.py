"""Runs whose worker process died (kill -9, power loss) before Dagster could record the end.

Such a run stays STARTED in the instance and keeps the concurrency-pool slots its steps
claimed, so the next materialisation of those assets would wait for ever ("Step blocked by
limit for pool ..."). For runs launched through the daemon, Dagster's run monitoring marks
them failed and frees their slots (dagster.yaml ``run_monitoring``). Runs the CLI executes
in-process have no daemon watching, so the CLI does the same before each run: a run whose
recorded worker pid no longer exists on this machine is reported failed through the
instance, and its slots are freed through the instance's event-log storage.
"""

from __future__ import annotations

import socket

import dagster as dg

from cohorts.parallel import process_alive

_ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
HOST_TAG = "lungjepa/host"  # the machine whose process executes the run (run_tags)


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process that started ``run_id`` (its RUN_START event), if recorded."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.RUN_START, limit=1
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.pid is not None:
            return int(event.pid)
    return None


def recover_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every active run of this host whose worker is gone; free its pool slots.

    Only runs started on this machine are judged (the ``host`` tag this module's callers set,
    or no tag on a single-machine SQLite instance); returns the run ids recovered.
    """
    host = socket.gethostname()
    recovered = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=_ACTIVE)):
        run = record.dagster_run
        if run.tags.get(HOST_TAG, host) != host:
            continue
        pid = worker_pid(instance, run.run_id)
        if pid is None or process_alive(pid):
            continue
        instance.report_run_failed(run, f"run worker (pid {pid}) is gone: the run was killed")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        recovered.append(run.run_id)
    return recovered


def run_tags() -> dict[str, str]:
    """Tags for a run executed in this process: the host, so recovery judges only its own."""
    return {HOST_TAG: socket.gethostname()}

"""Sensors: new scan batches are picked up without anyone typing a command, and every failed
run leaves a line in a log that outlives the run history."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
from dagster_shared.error import SerializableErrorInfo

from models.promotion import append_log
from orchestration.assets.incoming import INCOMING_PARTITIONS, IncomingArchive
from orchestration.jobs import incoming_curation
from orchestration.resources import PipelinePaths

FAILURE_LOG = "runs/failures.jsonl"
"""Under the artifacts folder: one JSON line per failed run (run_failures)."""


def _seen(cursor: str | None) -> set[str]:
    """Batch names already requested; the cursor is a JSON list so it survives restarts."""
    return set(json.loads(cursor)) if cursor else set()


@dg.sensor(
    job=incoming_curation,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches paths.incoming for complete batch folders (dicom/ + annotations.csv) "
    "and requests one curation run per new batch; the cursor holds the batches already seen.",
)
def incoming_batches(
    context: dg.SensorEvaluationContext, incoming: IncomingArchive
) -> dg.SensorResult | dg.SkipReason:
    seen = _seen(context.cursor)
    new = [name for name in incoming.ready_batches() if name not in seen]
    if not new:
        return dg.SkipReason(f"no new complete batch in {incoming.root}")
    context.log.info(f"new incoming batches: {new}")
    return dg.SensorResult(
        # run_key is a second guard: Dagster never launches the same key twice for a sensor.
        run_requests=[dg.RunRequest(run_key=name, partition_key=name) for name in new],
        dynamic_partitions_requests=[INCOMING_PARTITIONS.build_add_request(new)],
        cursor=json.dumps(sorted(seen | set(new))),
    )


def _root_cause(error: SerializableErrorInfo) -> str:
    """The class name of the innermost cause (a retry policy wraps the user's error)."""
    while error.cause is not None:
        error = error.cause
    return error.cls_name


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Appends each failed run of this code location to artifacts/runs/failures.jsonl: "
    "time, run id, job, partition, failed steps and error classes (no messages: those can "
    "name input files, and the full error stays in the run's own page).",
)
def run_failures(context: dg.RunFailureSensorContext, paths: PipelinePaths) -> None:
    run = context.dagster_run
    failures = context.get_step_failure_events()
    errors = sorted(
        {
            _root_cause(event.event_specific_data.error)
            for event in failures
            if event.event_specific_data is not None and event.event_specific_data.error
        }
    )
    record = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "failed_steps": sorted({event.step_key for event in failures if event.step_key}),
        "errors": errors,
    }
    append_log(paths.artifacts / FAILURE_LOG, record)
    context.log.info(f"run {run.run_id} of {run.job_name} failed: {record['failed_steps']}")

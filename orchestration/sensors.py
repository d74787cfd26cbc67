"""Sensors: new scan batches are picked up without anyone typing a command."""

from __future__ import annotations

import json

import dagster as dg

from orchestration.assets.incoming import INCOMING_PARTITIONS, IncomingArchive
from orchestration.jobs import incoming_curation


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

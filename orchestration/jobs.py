"""Jobs and schedules: the full pipeline, weekly retraining, and curation of arrival batches."""

from __future__ import annotations

import dagster as dg

from orchestration.params import section

# Arrival batches are dynamically partitioned; the cohort pipeline is not, and one job cannot
# mix the two, so the full pipeline is everything outside the `incoming` group.
INCOMING = dg.AssetSelection.groups("incoming")

# Steps run in one process: torch is imported once and GPU steps never share a device.
full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all() - INCOMING,
    executor_def=dg.in_process_executor,
    description="Archive -> curation -> features -> JEPA -> diagnostic models -> evaluation -> ONNX.",
)

retraining = dg.define_asset_job(
    "retraining",
    selection=dg.AssetSelection.groups("features", "training", "diagnosis", "deployment"),
    executor_def=dg.in_process_executor,
    description="Features -> pretrain -> finetune -> evaluate -> export on the cohorts with the "
    "arrival batches that join them (cohorts/batches.py).",
)

incoming_curation = dg.define_asset_job(
    "incoming_curation",
    selection=INCOMING,
    executor_def=dg.in_process_executor,
    description="Curate one arrival batch of new scans (launched by the incoming_batches sensor).",
)

weekly_retraining = dg.ScheduleDefinition(
    name="weekly_retraining",
    job=retraining,
    cron_schedule=section("retraining")["cron"],
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="params.yaml retraining.cron (default Sunday 02:00 UTC): retrain on the cohorts "
    "and every arrival batch that passed its blocking checks (params.yaml retraining.batches).",
)

"""Jobs and schedules: the full pipeline, and weekly retraining on what has arrived."""

from __future__ import annotations

import dagster as dg

# Steps run in one process: torch is imported once and GPU steps never share a device.
full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all(),
    executor_def=dg.in_process_executor,
    description="Archive -> curation -> features -> JEPA -> diagnostic models -> evaluation -> ONNX.",
)

retraining = dg.define_asset_job(
    "retraining",
    selection=dg.AssetSelection.groups("features", "training", "diagnosis", "deployment"),
    executor_def=dg.in_process_executor,
    description="Features -> pretrain -> finetune -> evaluate -> export on the current cohorts.",
)

weekly_retraining = dg.ScheduleDefinition(
    job=retraining,
    cron_schedule="0 2 * * 0",
    execution_timezone="UTC",
    description="Sunday 02:00 UTC: retrain on everything curated so far.",
)

"""The Dagster code location: assets, checks, resources, jobs and schedules, assembled."""

from __future__ import annotations

import dagster as dg

from orchestration.assets import data, evaluation, export, features, training
from orchestration.checks import onnx_parity
from orchestration.jobs import full_pipeline, retraining, weekly_retraining
from orchestration.resources import FeatureStoreResource, PipelinePaths, TorchDevice

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data, features, training, evaluation, export]),
    asset_checks=[onnx_parity],
    jobs=[full_pipeline, retraining],
    schedules=[weekly_retraining],
    resources={
        "paths": PipelinePaths(),
        "feature_store": FeatureStoreResource(),
        "torch_device": TorchDevice(),
    },
)

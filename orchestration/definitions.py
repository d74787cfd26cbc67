"""The Dagster code location: assets, checks, resources, jobs and schedules, assembled."""

from __future__ import annotations

import dagster as dg

from orchestration.assets import (
    data,
    evaluation,
    export,
    features,
    incoming,
    instrument,
    training,
)
from orchestration.assets.incoming import IncomingArchive
from orchestration.checks import onnx_parity
from orchestration.jobs import full_pipeline, incoming_curation, retraining, weekly_retraining
from orchestration.quality import QUALITY_CHECKS, cohort_drift
from orchestration.resources import (
    FeatureStoreResource,
    PipelinePaths,
    PrivacyResource,
    TorchDevice,
)
from orchestration.sensors import incoming_batches, run_failures

defs = dg.Definitions(
    assets=[
        *dg.load_assets_from_modules(
            [data, features, training, instrument, evaluation, export, incoming]
        ),
        cohort_drift,
    ],
    asset_checks=[onnx_parity, *QUALITY_CHECKS],
    jobs=[full_pipeline, retraining, incoming_curation],
    schedules=[weekly_retraining],
    sensors=[incoming_batches, run_failures],
    resources={
        "paths": PipelinePaths(),
        "feature_store": FeatureStoreResource(),
        "torch_device": TorchDevice(),
        "incoming": IncomingArchive(),
        "privacy": PrivacyResource(),
    },
)

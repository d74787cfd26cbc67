"""Feast objects of the EHR features: entity ``patient``, one parquet source and feature view
per table built by ``cohorts.ehr.features``, and the diagnosis feature services.

``feature_definitions(data_dir, ttl_days, n_signatures)`` builds them for any data folder (the
pipeline and tests use it through ``store.py``); the module-level objects below are the same
definitions on the default paths, for the ``feast`` CLI run from this folder.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, Int64

from cohorts.ehr.covariates import CLINICAL_HISTORY_FEATURES
from cohorts.ehr.features import (
    BIRTH_REFERENCE_DAY,
    CLINICAL_HISTORY,
    CLINICAL_SIGNATURES,
    DEMOGRAPHICS,
)
from cohorts.ehr.signatures import signature_names

REPO_DIR = Path(__file__).resolve().parent
TRAINING_SERVICE = "diagnosis_training"
SERVING_SERVICE = "diagnosis_serving"
_FALLBACK = {"n_signatures": 16, "ttl_days": 3650, "data": "data"}


def source_path(data_dir: Path, view: str) -> Path:
    """Parquet file behind a feature view: <data_dir>/feast/sources/<view>.parquet."""
    return Path(data_dir).resolve() / "feast" / "sources" / f"{view}.parquet"


def feature_definitions(data_dir: Path, ttl_days: int, n_signatures: int) -> list:
    """Entity, sources, feature views and services with sources under ``data_dir``.

    Demographics never expire (ttl 0: a birth reference is valid for life); the clinical views
    expire ``ttl_days`` after their latest snapshot, as stale history is no history.
    """
    patient = Entity(
        name="patient",
        join_keys=["patient_id"],
        value_type=ValueType.STRING,
        description="Pseudonymised patient (cohorts.privacy.pseudonymise, kind 'patient')",
    )
    schemas = {
        DEMOGRAPHICS: [
            Field(name="sex_female", dtype=Float32),
            Field(name=BIRTH_REFERENCE_DAY, dtype=Int64),
        ],
        CLINICAL_HISTORY: [Field(name=n, dtype=Float32) for n in CLINICAL_HISTORY_FEATURES],
        CLINICAL_SIGNATURES: [Field(name=n, dtype=Float32) for n in signature_names(n_signatures)],
    }
    ttls = {
        DEMOGRAPHICS: timedelta(0),
        CLINICAL_HISTORY: timedelta(days=ttl_days),
        CLINICAL_SIGNATURES: timedelta(days=ttl_days),
    }
    objects: list = [patient]
    views: list[FeatureView] = []
    for name, schema in schemas.items():
        source = FileSource(
            name=f"{name}_source",
            path=str(source_path(data_dir, name)),
            timestamp_field="event_timestamp",
        )
        view = FeatureView(
            name=name,
            entities=[patient],
            ttl=ttls[name],
            schema=schema,
            source=source,
            online=True,
        )
        objects += [source, view]
        views.append(view)
    objects.append(
        FeatureService(
            name=TRAINING_SERVICE,
            features=views,
            description="EHR features of a scan, point-in-time as of its study day",
        )
    )
    objects.append(
        FeatureService(
            name=SERVING_SERVICE,
            features=views,
            description="The same features, read from the online store at prediction time",
        )
    )
    return objects


def default_settings() -> dict[str, int | str]:
    """features.* and paths.data from params.yaml next to this repo, when there is one."""
    params_file = REPO_DIR.parent / "params.yaml"
    settings = dict(_FALLBACK)
    if params_file.is_file():
        params = yaml.safe_load(params_file.read_text()) or {}
        features = params.get("features", {})
        settings["n_signatures"] = int(features.get("n_signatures", settings["n_signatures"]))
        settings["ttl_days"] = int(features.get("ttl_days", settings["ttl_days"]))
        settings["data"] = str(params.get("paths", {}).get("data", settings["data"]))
    return settings


_SETTINGS = default_settings()
(
    patient,
    demographics_source,
    demographics,
    clinical_history_source,
    clinical_history,
    clinical_signatures_source,
    clinical_signatures,
    diagnosis_training,
    diagnosis_serving,
) = feature_definitions(
    REPO_DIR.parent / str(_SETTINGS["data"]),
    int(_SETTINGS["ttl_days"]),
    int(_SETTINGS["n_signatures"]),
)

"""Plain helpers around a Feast FeatureStore (no Dagster), for the pipeline and the tests.

Embedded (the default, what `make demo` and `make test` use): everything the store touches
lives under ``<data_dir>/feast/``: registry.db, online.db (SQLite) and sources/<view>.parquet
(the offline store reads these files). The team deployment (deploy/team/) keeps the sources
there but puts the registry in PostgreSQL (Feast's SQL registry: concurrent writers are safe,
unlike the file registry, which is rewritten whole) and the online store in Redis. Which one
a process uses is configuration, never code: `StoreBackends.from_env()`. The config is built
in code so any data folder works; feature_store.yaml (and deploy/team/feature_store.yaml)
hold the same settings for the ``feast`` CLI on the default paths.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from feast import FeatureService, FeatureStore, RepoConfig

from cohorts.ehr.features import KEY_COLUMNS, VIEWS
from cohorts.files import atomic_output
from feature_repo.definitions import (
    SERVING_SERVICE,
    TRAINING_SERVICE,
    feature_definitions,
    source_path,
)

PROJECT = "lungjepa"
_EARLIEST = dt.datetime(1800, 1, 1, tzinfo=dt.UTC)


REGISTRY_URL_ENV = "LUNGJEPA_FEAST_REGISTRY_URL"
"""SQLAlchemy URL of a SQL registry, e.g. postgresql+psycopg://user:password@host:5432/feast."""
REDIS_ENV = "LUNGJEPA_FEAST_REDIS"
"""Feast's Redis connection string, e.g. 127.0.0.1:6379,password=...,db=0."""


@dataclass(frozen=True)
class StoreBackends:
    """Where the registry and the online store live; None: the embedded file/SQLite default.

    Both hold credentials, so they come from the environment (deploy/team/ writes them to an
    env file outside git) and `describe()` is what may be logged or shown.
    """

    registry_url: str | None = None
    redis: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoreBackends:
        env = os.environ if environ is None else environ
        return cls(registry_url=env.get(REGISTRY_URL_ENV) or None, redis=env.get(REDIS_ENV) or None)

    def project(self, data_dir: Path) -> str:
        """The Feast project (registry namespace, Redis key prefix) of ``data_dir``'s features.

        Embedded, each data folder has a registry file of its own: always ``lungjepa``. A
        shared SQL registry and Redis hold every data folder's store (the pipeline's, a
        replicate's, a study cell's, a test's): one project per folder, or two runs on
        different folders would re-point each other's sources and overwrite each other's rows.
        """
        if not (self.registry_url or self.redis):
            return PROJECT
        folder = str(Path(data_dir).resolve())
        return f"{PROJECT}_{hashlib.sha256(folder.encode()).hexdigest()[:12]}"

    def describe(self) -> dict[str, str]:
        """The kinds only (no host, user or password): safe for logs and Dagster metadata."""
        return {
            "registry": "sql" if self.registry_url else "file",
            "online_store": "redis" if self.redis else "sqlite",
        }

    def registry(self, root: Path) -> dict[str, Any]:
        if self.registry_url:
            return {
                "registry_type": "sql",
                "path": self.registry_url,
                "cache_ttl_seconds": 60,
                "sqlalchemy_config_kwargs": {"pool_pre_ping": True},
            }
        return {"registry_type": "file", "path": str(root / "registry.db"), "cache_ttl_seconds": 60}

    def online_store(self, root: Path) -> dict[str, Any]:
        if self.redis:
            return {"type": "redis", "connection_string": self.redis}
        return {"type": "sqlite", "path": str(root / "online.db")}


def feast_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / "feast"


def open_store(
    repo_dir: Path, data_dir: Path, backends: StoreBackends | None = None
) -> FeatureStore:
    """A FeatureStore whose sources live under ``data_dir``; registry and online store where
    ``backends`` say (default: the environment's, `StoreBackends.from_env`)."""
    backends = StoreBackends.from_env() if backends is None else backends
    root = feast_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project=backends.project(data_dir),
        provider="local",
        registry=backends.registry(root),
        online_store=backends.online_store(root),
        offline_store={"type": "file"},
        repo_path=Path(repo_dir).resolve(),
        entity_key_serialization_version=3,
    )
    return FeatureStore(config=config)


def has_registry(data_dir: Path, backends: StoreBackends | None = None) -> bool:
    """Whether a store was ever applied for ``data_dir`` (a SQL registry: assumed; Feast says)."""
    backends = StoreBackends.from_env() if backends is None else backends
    return bool(backends.registry_url) or (feast_dir(data_dir) / "registry.db").is_file()


def apply_definitions(
    store: FeatureStore, data_dir: Path, ttl_days: int, n_signatures: int
) -> None:
    """Register entity, sources, views and services (idempotent) with sources under data_dir."""
    store.apply(feature_definitions(data_dir, ttl_days, n_signatures))


def _check_table(view: str, table: pd.DataFrame) -> None:
    missing = [c for c in KEY_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{view}: missing column(s) {missing}")
    ts = table["event_timestamp"]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype) or str(ts.dt.tz) != "UTC":
        raise ValueError(f"{view}: event_timestamp must be tz-aware UTC, got {ts.dtype}")
    if table.duplicated(subset=["patient_id", "event_timestamp"]).any():
        raise ValueError(f"{view}: repeated (patient_id, event_timestamp) rows")


def write_sources(tables: dict[str, pd.DataFrame], data_dir: Path) -> dict[str, Path]:
    """Write each view's table to its parquet source atomically (temp file, then rename)."""
    unknown = sorted(set(tables) - set(VIEWS))
    if unknown:
        raise ValueError(f"unknown feature view(s) {unknown}; expected {VIEWS}")
    written: dict[str, Path] = {}
    for view, table in tables.items():
        _check_table(view, table)
        target = source_path(data_dir, view)
        with atomic_output(target) as tmp:
            table.to_parquet(tmp, index=False)
        written[view] = target
    return written


def materialize(store: FeatureStore, end: dt.datetime) -> list[str]:
    """Load the offline rows up to ``end`` into the online store, incrementally; the views.

    Feast's first incremental run starts at wall-clock now - ttl, which skips historical
    (synthetic or backfilled) data; so a view never materialised before is loaded from
    end - ttl (ttl 0: from the beginning), and later runs continue where the last one ended.
    Feast prints each view's window as calendar dates; that print is kept out of the run's
    logs (a clock-derived date is indistinguishable from a patient's date to anyone reading
    them, and the privacy scan treats every real date as PHI), so callers log the views.
    """
    if end.tzinfo is None:
        raise ValueError("end must be tz-aware (UTC)")
    names = []
    for view in store.list_feature_views():
        with contextlib.redirect_stdout(io.StringIO()):
            if view.most_recent_end_time is not None:
                store.materialize_incremental(end_date=end, feature_views=[view.name])
            else:
                has_ttl = view.ttl is not None and view.ttl.total_seconds() > 0
                start = end - view.ttl if has_ttl else _EARLIEST
                store.materialize(start_date=start, end_date=end, feature_views=[view.name])
        names.append(view.name)
    return names


def historical_features(
    store: FeatureStore, entity_df: pd.DataFrame, service: str = TRAINING_SERVICE
) -> pd.DataFrame:
    """Features as of each row's event_timestamp (point-in-time), one row per input row, in order.

    entity_df needs patient_id and a tz-aware event_timestamp (``scan_timestamp``); other
    columns pass through. Feast's file (dask) offline store drops an entity row when any one
    view has no row for it in the TTL window (a scan before the patient's first EHR event
    would lose its demographics too), so each view is joined separately and left-merged:
    a view without data as of the scan gives NaN features.
    """
    missing = [c for c in ("patient_id", "event_timestamp") if c not in entity_df.columns]
    if missing:
        raise ValueError(f"entity_df: missing column(s) {missing}")
    ts = entity_df["event_timestamp"]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"entity_df.event_timestamp must be tz-aware (UTC), got {ts.dtype}")
    result = entity_df.reset_index(drop=True).assign(_row=lambda f: range(len(f)))
    keys = result[["patient_id", "event_timestamp", "_row"]]
    for projection in store.get_feature_service(service).feature_view_projections:
        names = [feature.name for feature in projection.features]
        refs = [f"{projection.name_to_use()}:{name}" for name in names]
        joined = store.get_historical_features(entity_df=keys, features=refs).to_df()
        result = result.merge(joined[["_row", *names]], on="_row", how="left")
    return result.sort_values("_row").drop(columns="_row").reset_index(drop=True)


_SERVICES: weakref.WeakKeyDictionary[FeatureStore, dict[str, FeatureService]] = (
    weakref.WeakKeyDictionary()
)


def feature_service(store: FeatureStore, name: str) -> FeatureService:
    """``store.get_feature_service(name)``, fetched once per open store.

    Why: resolving the service through the registry was most of an online lookup (4.5 ms of
    a 4.8 ms read, on the demo store); a serving process keeps the store open and pays it once.
    A process that re-applies the definitions opens a new store to see them.
    """
    services = _SERVICES.setdefault(store, {})
    if name not in services:
        services[name] = store.get_feature_service(name)
    return services[name]


def online_feature_rows(
    store: FeatureStore, patient_ids: list[str], service: str = SERVING_SERVICE
) -> dict[str, dict[str, Any]]:
    """Latest materialised features per patient: {patient_id: {feature: value or None}}.

    One ``get_online_features`` call for all ids, read back as plain dicts (no DataFrame):
    the path a per-request caller takes. A patient the store has no row for maps to Nones.
    """
    columns = _online(store, patient_ids, service).to_dict()
    ids = columns.pop("patient_id")
    return {pid: {name: values[k] for name, values in columns.items()} for k, pid in enumerate(ids)}


def online_features(
    store: FeatureStore, patient_ids: list[str], service: str = SERVING_SERVICE
) -> pd.DataFrame:
    """Latest materialised features per patient (one row per id, in the given order)."""
    return _online(store, patient_ids, service).to_df()


def _online(store: FeatureStore, patient_ids: list[str], service: str) -> Any:
    """Feast's online response for the ids: one read of every view of ``service``."""
    return store.get_online_features(
        features=feature_service(store, service),
        entity_rows=[{"patient_id": pid} for pid in patient_ids],
    )

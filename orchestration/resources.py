"""Dagster resources: where the pipeline's files live, the Feast store, the torch device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from cohorts.files import atomic_write_json
from cohorts.privacy import PrivacyConfig
from orchestration.params import REPO_ROOT, resolve_path, section

_PATHS = section("paths")
_PRIVACY = section("privacy")
COHORTS: tuple[str, ...] = ("archive", "internal", "external")


class PipelinePaths(dg.ConfigurableResource):
    """Roots of data/, artifacts/ and metrics/ (relative paths are relative to the repo)."""

    data_dir: str = _PATHS["data"]
    artifacts_dir: str = _PATHS["artifacts"]
    metrics_dir: str = _PATHS["metrics"]

    @property
    def data(self) -> Path:
        return resolve_path(self.data_dir)

    @property
    def artifacts(self) -> Path:
        return resolve_path(self.artifacts_dir)

    @property
    def metrics(self) -> Path:
        return resolve_path(self.metrics_dir)

    def raw(self, cohort: str) -> Path:
        return self.data / "raw" / cohort

    def curated(self, cohort: str) -> Path:
        return self.data / "curated" / cohort

    def examples(self, cohort: str) -> Path:
        return self.data / "examples" / f"{cohort}.npz"

    def point_latest(self, kind: str, version: str, folder: Path) -> None:
        """Record ``folder`` as the newest ``kind`` ("encoders", "models"): lineage, not mtimes."""
        relative = str(Path(folder).relative_to(self.artifacts))
        atomic_write_json(
            self.artifacts / kind / "latest.json", {"version": version, "path": relative}
        )

    def latest(self, kind: str) -> tuple[str, Path]:
        """(version, folder) of the newest ``kind``, as its producing asset recorded it."""
        pointer = self.artifacts / kind / "latest.json"
        if not pointer.exists():
            raise FileNotFoundError(
                f"{pointer}: no {kind} yet; materialise the asset that makes them"
            )
        latest = json.loads(pointer.read_text())
        return latest["version"], self.artifacts / latest["path"]


def resources_under(root: Path) -> dict[str, Any]:
    """Run-config `resources` block pointing every folder resource at ``root``.

    One place for "this run's data/, artifacts/, metrics/ live here": study cells,
    benchmarks and tests each run the real job on a folder of their own.
    """
    root = Path(root)
    return {
        "paths": {
            "config": {
                "data_dir": str(root / "data"),
                "artifacts_dir": str(root / "artifacts"),
                "metrics_dir": str(root / "metrics"),
            }
        },
        "feature_store": {"config": {"data_dir": str(root / "data")}},
    }


class PrivacyResource(dg.ConfigurableResource):
    """De-identification settings (params.yaml ``privacy``), one value per run for every asset.

    A resource, not each asset's Config, so that curation and the EHR features of one run
    always shift dates alike; across runs the key record (cohorts/privacy.py) catches a
    mismatch. Holds no secret: the key is never here.
    """

    date_shift_max_days: int = _PRIVACY["date_shift_max_days"]

    def domain(self) -> PrivacyConfig:
        return PrivacyConfig(date_shift_max_days=self.date_shift_max_days)


class FeatureStoreResource(dg.ConfigurableResource):
    """The Feast store of EHR features; Feast has no official Dagster integration, so we wrap it.

    The offline store (parquet files) lives under ``<data_dir>/feast``; so do the registry and
    the online store (SQLite) unless the environment names a SQL registry and a Redis
    (feature_repo/store.py StoreBackends; the team deployment's env file sets them). Not
    resource fields: they carry credentials, and the UI shows resource config.
    """

    repo_dir: str = str(REPO_ROOT / "feature_repo")
    data_dir: str = _PATHS["data"]

    def open(self):  # -> feast.FeatureStore (import kept local: Feast is slow to import)
        from feature_repo.store import open_store

        return open_store(Path(self.repo_dir), resolve_path(self.data_dir))


class TorchDevice(dg.ConfigurableResource):
    """Which device training runs on: 'auto' takes CUDA when present."""

    device: str = "auto"

    def resolve(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

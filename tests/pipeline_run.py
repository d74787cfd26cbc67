"""Run the real Dagster definitions in-process on a throw-away folder and instance."""

import shutil
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.resources import resources_under


def pipeline_run_config(root: Path) -> dict[str, Any]:
    """Point every resource at ``root`` so a test never touches the repo's data/."""
    return {
        "resources": resources_under(root),
        "ops": {"evaluation": {"config": {"results_markdown": str(root / "RESULTS.md")}}},
    }


def run_pipeline(
    root: Path,
    instance: dg.DagsterInstance,
    selection: list[str] | None = None,
    resources: dict[str, dict[str, Any]] | None = None,
    ops: dict[str, dict[str, Any]] | None = None,
) -> dg.ExecuteInProcessResult:
    """``resources``: extra resource config by name, e.g. {"privacy": {"date_shift_max_days": 0}};
    ``ops``: run config by asset, e.g. {"curated_scans": {"crop_spacing_mm": 1.5}}."""
    from orchestration.definitions import defs

    job = defs.resolve_job_def("full_pipeline")
    keys = [dg.AssetKey(name) for name in selection] if selection else None
    config = pipeline_run_config(root)
    for name, values in (resources or {}).items():
        config["resources"][name] = {"config": values}
    if selection is not None and "evaluation" not in selection:
        config.pop("ops")
    for name, values in (ops or {}).items():
        config.setdefault("ops", {}).setdefault(name, {}).setdefault("config", {}).update(values)
    return job.execute_in_process(
        instance=instance, asset_selection=keys, run_config=config, raise_on_error=False
    )


def copy_pipeline(tiny_pipeline: tuple, root: Path) -> Path:
    """A writable copy at ``root`` of the session's tiny pipeline outputs (data/, artifacts/)."""
    source, _, result = tiny_pipeline
    assert result.success
    for part in ("data", "artifacts"):
        shutil.copytree(source / part, root / part, symlinks=True)
    return root

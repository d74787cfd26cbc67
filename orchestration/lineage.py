"""Which upstream artifact a step builds on: the version this run materialised.

Assets pass artifacts by version, not through a global pointer alone. A step that needs the
encoder (or the diagnostic models) takes the version that an earlier step of its own run
materialised (its ``version`` metadata), so a run never pairs its models with an encoder
that another run, manual or scheduled, finished in between. Only a step run on its own
(a single asset materialised in the UI, a DVC stage) falls back to the newest version, as
its producing asset recorded it in ``<kind>/latest.json``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from orchestration.resources import PipelinePaths

ENCODERS, MODELS = "encoders", "models"
_PRODUCER = {ENCODERS: "jepa_encoder", MODELS: "diagnostic_models"}


def version_in_run(instance: dg.DagsterInstance, run_id: str, asset: str) -> str | None:
    """The ``version`` metadata of ``asset``'s last materialisation in run ``run_id``, if any."""
    key = dg.AssetKey(asset)
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    for entry in reversed(events):
        materialization = entry.asset_materialization
        if materialization is not None and materialization.asset_key == key:
            version = materialization.metadata.get("version")
            if version is not None:
                return str(version.value)
    return None


def built_on(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
    paths: PipelinePaths,
    kind: str,
) -> tuple[str, Path]:
    """(version, folder) of the ``kind`` ("encoders" / "models") this step builds on.

    The version its own run materialised, else (a step run alone) the newest one. Raises
    FileNotFoundError when the run's version is not on disk (a folder removed mid-run).
    """
    version = version_in_run(context.instance, context.run.run_id, _PRODUCER[kind])
    if version is None:
        version, folder = paths.latest(kind)
        context.log.info(f"{_PRODUCER[kind]} not materialised in this run: newest, {version}")
        return version, folder
    folder = paths.artifacts / kind / version
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {_PRODUCER[kind]} {version} of this run is gone")
    return version, folder

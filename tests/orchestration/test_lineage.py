"""Lineage by version (orchestration/lineage.py; issue 19): a run's models are built on the
encoder that run pretrained, even when another run's encoder lands in between."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
from pipeline_run import copy_pipeline, pipeline_run_config

from orchestration.definitions import defs
from orchestration.lineage import ENCODERS, version_in_run
from orchestration.resources import PipelinePaths

INTERLOPER = "0ther0encoder"  # the version another run finished between our two steps


def _card(root: Path) -> dict:
    models = PipelinePaths(**pipeline_run_config(root)["resources"]["paths"]["config"])
    _, folder = models.latest("models")
    return json.loads((folder / "card.json").read_text())


def test_models_take_their_runs_encoder_not_the_newest(
    tiny_pipeline: tuple, tmp_path: Path
) -> None:
    root = copy_pipeline(tiny_pipeline, tmp_path / "copy")
    config = pipeline_run_config(root)
    config.pop("ops")
    paths = PipelinePaths(**config["resources"]["paths"]["config"])

    @dg.success_hook
    def another_run_pretrains(context: dg.HookContext) -> None:
        """Right after our jepa_encoder: a second encoder lands and becomes the newest."""
        if context.step_key == "jepa_encoder":
            _, ours = paths.latest(ENCODERS)
            other = paths.artifacts / ENCODERS / INTERLOPER
            shutil.copytree(ours, other)
            paths.point_latest(ENCODERS, INTERLOPER, other)

    interleaved = dg.define_asset_job(
        "interleaved",
        selection=dg.AssetSelection.assets("jepa_encoder", "diagnostic_models"),
        executor_def=dg.in_process_executor,
        hooks={another_run_pretrains},
    )
    # resolved inside the instance: Dagster reads the current instance's defs state while it
    # builds a repository, and outside one it may find a state storage an earlier test's
    # instance left behind (CI: "Attempted to resolve undefined DagsterInstance weakref")
    with dg.instance_for_test() as instance:
        job = dg.Definitions.merge(defs, dg.Definitions(jobs=[interleaved])).resolve_job_def(
            "interleaved"
        )
        run = job.execute_in_process(instance=instance, run_config=config)
        assert run.success
        ours = version_in_run(instance, run.run_id, "jepa_encoder")
        assert ours is not None and ours != INTERLOPER
        assert paths.latest(ENCODERS)[0] == INTERLOPER  # the pointer moved under the run
        card = _card(root)
        assert card["encoder_version"] == ours
        models = instance.get_latest_materialization_event(dg.AssetKey("diagnostic_models"))
        assert models.asset_materialization.metadata["encoder_version"].value == ours

        # a step run on its own has no encoder of its run: it takes the newest
        alone = defs.resolve_job_def("full_pipeline").execute_in_process(
            instance=instance,
            run_config=config,
            asset_selection=[dg.AssetKey("diagnostic_models")],
        )
        assert alone.success
        assert version_in_run(instance, alone.run_id, "jepa_encoder") is None
        assert _card(root)["encoder_version"] == INTERLOPER

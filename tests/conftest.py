"""Shared fixtures. The `tiny` params profile keeps every pipeline test at seconds-scale sizes.

LUNGJEPA_PROFILE is set before anything imports orchestration/, whose Dagster Config
defaults are read from params.yaml at import time.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LUNGJEPA_PROFILE", "tiny")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """One real run of the whole tiny pipeline per test session, shared read-only.

    Yields (root folder, Dagster instance, run result). Tests that change files copy them.
    """
    import dagster as dg
    from pipeline_run import run_pipeline

    root: Path = tmp_path_factory.mktemp("tiny_pipeline")
    (root / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster_home")) as instance:
        result = run_pipeline(root, instance)
        yield root, instance, result

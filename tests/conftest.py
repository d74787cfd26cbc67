"""Shared fixtures. The `tiny` params profile keeps every pipeline test at seconds-scale sizes.

LUNGJEPA_PROFILE is set before anything imports orchestration/, whose Dagster Config
defaults are read from params.yaml at import time.
"""

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LUNGJEPA_PROFILE", "tiny")
# A test never touches the user's installation key (~/.local/share/lungjepa): real-data paths
# create their own under a per-process temporary folder, inherited by subprocesses.
os.environ.setdefault(
    "LUNGJEPA_KEY_FILE", str(Path(tempfile.mkdtemp(prefix="lungjepa-key-")) / "pseudonym.key")
)
os.environ.pop("LUNGJEPA_PSEUDONYM_KEY", None)  # tests that want one set it themselves
# The embedded default under test: never a team deployment's servers or storage, even from a
# shell that has them set (the team tests, tests/team/, read deploy/team's env file themselves).
for _name in ("LUNGJEPA_FEAST_REGISTRY_URL", "LUNGJEPA_FEAST_REDIS", "LUNGJEPA_ROOT"):
    os.environ.pop(_name, None)


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

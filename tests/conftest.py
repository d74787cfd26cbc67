"""Shared fixtures. The `tiny` params profile keeps every pipeline test at seconds-scale sizes.

LUNGJEPA_PROFILE is set before anything imports orchestration/, whose Dagster Config
defaults are read from params.yaml at import time.
"""

import os

os.environ.setdefault("LUNGJEPA_PROFILE", "tiny")

"""The external tools `make test` declares (installed by `make system-deps`), found or failed.

One policy for every test that needs one: the tool is a requirement of the suite, so a
missing tool fails the test with the command that installs it, never a silent skip.
"""

from __future__ import annotations

import shutil

import pytest

PACKAGE_OF: dict[str, str] = {
    "dciodvfy": "dicom3tools",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


def require_tool(name: str) -> str:
    """The absolute path of `name` on PATH (or /usr/bin); pytest.fail naming its package if absent."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if found is None:
        package = PACKAGE_OF.get(name, name)
        pytest.fail(
            f"{name} (Debian package {package}) is required by make test and is missing: "
            "run `make system-deps` (installs it as root or with sudo)",
            pytrace=False,
        )
    return found

"""Synthetic archives of a chosen size for the benchmarks (a preset, cohort sizes overridden)."""

from __future__ import annotations

from pathlib import Path

from cohorts.synthetic import generate_archive, preset_config

BASE_ARCHIVE_PATIENTS = 8
"""The tiny preset's archive cohort: archive size x1."""


def make_archive(
    root: Path,
    n_archive: int,
    n_internal: int = 1,
    n_external: int = 1,
    workers: int = 1,
    preset: str = "tiny",
    **overrides: object,
) -> dict:
    """Generate root/<cohort>/ with the preset's image sizes and the given cohort sizes.

    ``overrides``: any other ``SynthConfig`` field (e.g. a clinical ``image_size_px``).
    """
    config = preset_config(
        preset,
        workers=workers,
        n_archive=n_archive,
        n_internal=n_internal,
        n_external=n_external,
        **overrides,
    )
    return generate_archive(Path(root), config, progress=False)

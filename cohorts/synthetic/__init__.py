"""The synthetic environment: a seeded causal generator of longitudinal chest CT + EHR archives."""

from cohorts.synthetic.config import SynthConfig, preset_config
from cohorts.synthetic.generate import generate_archive

__all__ = ["SynthConfig", "generate_archive", "preset_config"]

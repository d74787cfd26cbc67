"""Every JEPA pretraining knob (PretrainConfig) and the encoder those knobs and the data imply.

Why its own module: the loop (models/jepa/pretrain.py), the single step (step.py), the
benchmark (benchmarks/jepa.py), the ablation and the Dagster run config
(orchestration/configs.py) all need the config without the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cohorts.example_set import ExampleSet
from models.data import ehr_normalisation
from models.encoders import EncoderConfig, MultimodalEncoder
from models.jepa.loss import LOSSES
from models.jepa.masks import MaskConfig


@dataclass(frozen=True)
class PretrainConfig:
    """Every pretraining knob. params.yaml `pretrain` sets the first block (its Dagster run
    config is built from this class, orchestration/configs.py); the rest keep I-JEPA's recipe.

    batch_size is global (split evenly over DDP ranks). weight_decay and ema_momentum are
    (start, end) of their schedules. device: "auto" (CUDA if available), "cuda" or "cpu".
    """

    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.0005
    warmup_epochs: int = 3
    weight_decay: tuple[float, float] = (0.04, 0.2)
    ema_momentum: tuple[float, float] = (0.996, 1.0)
    ema_init_weight: float = 0.01
    embed_dim: int = 64
    depth: int = 3
    heads: int = 4
    predictor_dim: int = 32
    predictor_depth: int = 2
    patch_size_vox: int = 8
    patch_stem: str = "linear"
    stem_width: int = 8
    ehr_tokens: int = 4
    loss: str = "smooth_l1"
    checkpoint_every_steps: int = 50
    seed: int = 0
    # not (yet) in params.yaml: I-JEPA defaults
    final_lr: float = 1.0e-6
    grad_clip: float = 1.0
    mask_strategy_weights: tuple[float, float, float] = (0.45, 0.45, 0.1)
    mask_tube: bool = True
    mask_n_target_blocks: int = 4
    mask_block_scale: tuple[float, float] = (0.15, 0.2)
    mask_block_aspect: tuple[float, float] = (0.75, 1.5)
    mask_context_scale: tuple[float, float] = (0.85, 1.0)
    monitor_examples: int = 256
    collapse_threshold: float = 1.0e-3
    device: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"PretrainConfig: loss must be one of {LOSSES}, got {self.loss!r}")
        if min(self.epochs, self.batch_size, self.checkpoint_every_steps) < 1:
            raise ValueError("PretrainConfig: epochs, batch_size, checkpoint_every_steps >= 1")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError("PretrainConfig: device must be auto, cuda or cpu")
        self.mask_config()  # validates the mask knobs

    def mask_config(self) -> MaskConfig:
        """The `MaskConfig` these fields describe."""
        return MaskConfig(
            strategy_weights=self.mask_strategy_weights,
            tube=self.mask_tube,
            n_target_blocks=self.mask_n_target_blocks,
            block_scale=self.mask_block_scale,
            block_aspect=self.mask_block_aspect,
            context_scale=self.mask_context_scale,
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], base: PretrainConfig | None = None
    ) -> PretrainConfig:
        """`base` (defaults) overridden by values, e.g. params.yaml `pretrain`; unknown keys raise."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(names)
        if unknown:
            raise ValueError(f"PretrainConfig: unknown keys {sorted(unknown)}")
        coerced = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()}
        return dataclasses.replace(base or cls(), **coerced)


def encoder_config_for(examples: ExampleSet, config: PretrainConfig) -> EncoderConfig:
    """Encoder sizes: data-given (crop size, time points, EHR width) + config-given."""
    return EncoderConfig(
        n_ehr_features=examples.n_ehr_features,
        crop_size_vox=examples.crop_size_vox,
        patch_size_vox=config.patch_size_vox,
        ehr_tokens=config.ehr_tokens,
        max_timepoints=examples.timepoints,
        embed_dim=config.embed_dim,
        depth=config.depth,
        heads=config.heads,
        patch_stem=config.patch_stem,
        stem_width=config.stem_width,
    )


def build_encoder(examples: ExampleSet, config: PretrainConfig) -> MultimodalEncoder:
    """A freshly initialised encoder carrying the training set's EHR normalisation."""
    encoder = MultimodalEncoder(encoder_config_for(examples, config))
    encoder.set_ehr_normalisation(*ehr_normalisation(examples))
    return encoder

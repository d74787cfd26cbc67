"""Context/target masks over the multimodal token sequence (the multimodal `MaskCollator`).

Tokens are (modality, time point, patch) units laid out as in `models.encoders.TokenLayout`:
ordered by time point, and within a time point image patches first, then EHR tokens. Each sample
gets one masking strategy:

- ``multiblock``: several 3D blocks of image patches (each 15-20% of a scan's patch grid), as in
  I-JEPA. With ``tube`` (the default) each block covers the same patches at every time point
  with a scan, like V-JEPA's tubes: a patient's scans differ far less than patients do, so a
  block hidden at one time point only would be copied from its twin at another;
- ``modality``: every EHR token of every time point, or every image token of every time point:
  the model must predict one modality with none of it visible, the only case that forces it
  to learn what the modalities share;
- ``timepoint``: every token of one time point (predict a scan from the others in latent space).

The context is the remaining valid tokens, subsampled to a random fraction in ``context_scale``
(the large I-JEPA context block). Masks are boolean [B, N] so samples need not share counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.encoders import EHR, IMAGE, TokenLayout

STRATEGIES: tuple[str, ...] = ("multiblock", "modality", "timepoint")
__all__ = ["EHR", "IMAGE", "STRATEGIES", "MaskConfig", "MultimodalMaskGenerator"]


@dataclass(frozen=True)
class MaskConfig:
    """Every masking knob; mirrored by the ``mask_*`` fields of `PretrainConfig`."""

    strategy_weights: tuple[float, float, float] = (0.45, 0.45, 0.1)
    tube: bool = True
    n_target_blocks: int = 4
    block_scale: tuple[float, float] = (0.15, 0.2)
    block_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.strategy_weights) != len(STRATEGIES) or min(self.strategy_weights) < 0:
            raise ValueError(f"strategy_weights needs {len(STRATEGIES)} non-negative weights")
        if sum(self.strategy_weights) <= 0:
            raise ValueError("strategy_weights must not all be zero")
        if self.n_target_blocks < 1:
            raise ValueError("n_target_blocks must be >= 1")
        for name in ("block_scale", "block_aspect", "context_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        if self.block_scale[1] > 1 or self.context_scale[1] > 1:
            raise ValueError("block_scale and context_scale are fractions <= 1")


def _as_numpy(values: object) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


class MultimodalMaskGenerator:
    """Samples per-sample disjoint (context, target) boolean masks over the N tokens.

    Deterministic in (seed, step, rank): resuming at a step replays the same masks, and each
    DDP rank draws its own masks for its own shard of the batch.
    """

    def __init__(
        self,
        modality: object,
        time_index: object,
        patch_index: object,
        patch_grid: int | tuple[int, int, int],
        config: MaskConfig | None = None,
    ) -> None:
        self.config = config or MaskConfig()
        self.modality = _as_numpy(modality).astype(np.int64)  # [N]
        self.time_index = _as_numpy(time_index).astype(np.int64)  # [N]
        self.patch_index = _as_numpy(patch_index).astype(np.int64)  # [N]
        grid = (patch_grid,) * 3 if isinstance(patch_grid, int) else tuple(patch_grid)
        if len(grid) != 3:
            raise ValueError(f"patch_grid must be 3D, got {grid}")
        self.patch_grid: tuple[int, int, int] = (int(grid[0]), int(grid[1]), int(grid[2]))
        self.n_tokens = int(self.modality.shape[0])
        self.n_timepoints = int(self.time_index.max()) + 1
        # token id of image patch p at time t; -1 where absent
        n_patches = int(np.prod(self.patch_grid))
        self._image_token = np.full((self.n_timepoints, n_patches), -1, dtype=np.int64)
        image = np.flatnonzero(self.modality == IMAGE)
        self._image_token[self.time_index[image], self.patch_index[image]] = image
        self._image_grid = self._image_token.reshape(self.n_timepoints, *self.patch_grid)
        self._probs = np.asarray(self.config.strategy_weights, dtype=np.float64)
        self._probs = self._probs / self._probs.sum()

    @classmethod
    def from_layout(
        cls, layout: TokenLayout, config: MaskConfig | None = None
    ) -> MultimodalMaskGenerator:
        """Build from the encoder's `TokenLayout` (modality, time_index, patch_index, patch_grid)."""
        return cls(
            layout.modality, layout.time_index, layout.patch_index, layout.patch_grid, config
        )

    def __call__(
        self, valid: torch.Tensor, step: int, rank: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for one batch.

        Steps: (1) seed a generator with (seed, step, rank); (2) per sample, pick a strategy by
        ``strategy_weights`` among those feasible for its valid tokens; (3) draw its targets;
        (4) context = valid minus targets, subsampled to ``context_scale``; (5) repair so that
        both are non-empty. A sample with fewer than 2 valid tokens gets empty masks.

        valid: [B, N] bool. Returns (context [B, N] bool, target [B, N] bool) on valid's device.
        """
        valid_np = _as_numpy(valid).astype(bool)
        if valid_np.ndim != 2 or valid_np.shape[1] != self.n_tokens:
            raise ValueError(f"valid must be [B, {self.n_tokens}], got {valid_np.shape}")
        rng = np.random.default_rng([self.config.seed, int(step), int(rank)])
        context = np.zeros_like(valid_np)
        target = np.zeros_like(valid_np)
        for b in range(valid_np.shape[0]):
            if valid_np[b].sum() >= 2:  # fewer: nothing to predict from; the sample sits out
                context[b], target[b] = self.sample(valid_np[b], rng)
        device = valid.device if isinstance(valid, torch.Tensor) else torch.device("cpu")
        return torch.from_numpy(context).to(device), torch.from_numpy(target).to(device)

    def sample(self, valid: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One sample's (context [N], target [N]) bool masks; needs >= 2 valid tokens."""
        if int(valid.sum()) < 2:
            raise ValueError("a sample needs at least 2 valid tokens to mask")
        feasible = self._feasible(valid)
        probs = np.where(feasible, self._probs, 0.0)
        if probs.sum() == 0:  # only multiblock-impossible corner cases: fall back to random tokens
            target = self._random_tokens(valid, rng)
        else:
            strategy = STRATEGIES[int(rng.choice(len(STRATEGIES), p=probs / probs.sum()))]
            if strategy == "multiblock":
                target = self._multiblock(valid, rng)
            elif strategy == "modality":
                target = self._modality(valid, rng)
            else:
                target = self._timepoint(valid, rng)
        target &= valid
        context = self._context(valid & ~target, rng)
        return self._repair(valid, context, target, rng)

    def _image_times(self, valid: np.ndarray) -> np.ndarray:
        return np.unique(self.time_index[valid & (self.modality == IMAGE)])

    def _feasible(self, valid: np.ndarray) -> np.ndarray:
        has_image = bool((valid & (self.modality == IMAGE)).any())
        has_ehr = bool((valid & (self.modality == EHR)).any())
        n_times = np.unique(self.time_index[valid]).size
        return np.array([has_image, has_ehr, n_times >= 2])

    def _multiblock(self, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Union of ``n_target_blocks`` 3D blocks: at every scan (tube) or one random scan each."""
        gz, gy, gx = self.patch_grid
        n_patches = gz * gy * gx
        times = self._image_times(valid)
        target = np.zeros(self.n_tokens, dtype=bool)
        lo_a, hi_a = np.log(self.config.block_aspect[0]), np.log(self.config.block_aspect[1])
        for _ in range(self.config.n_target_blocks):
            t = int(rng.choice(times))  # drawn in both modes: the rng stream stays aligned
            at = times if self.config.tube else np.array([t])
            volume = float(rng.uniform(*self.config.block_scale)) * n_patches
            a1, a2 = (float(a) for a in np.exp(rng.uniform(lo_a, hi_a, size=2)))
            side = volume ** (1.0 / 3.0)
            dz = min(max(round(side * a1), 1), gz)
            dy = min(max(round(side * a2), 1), gy)
            dx = min(max(round(volume / (dz * dy)), 1), gx)
            z0 = int(rng.integers(0, gz - dz + 1))
            y0 = int(rng.integers(0, gy - dy + 1))
            x0 = int(rng.integers(0, gx - dx + 1))
            tokens = self._image_grid[at, z0 : z0 + dz, y0 : y0 + dy, x0 : x0 + dx].ravel()
            target[tokens[tokens >= 0]] = True
        return target

    def _modality(self, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """All EHR tokens, or all image tokens, of every time point (the other modality is context)."""
        ehr_valid = valid & (self.modality == EHR)
        image_valid = valid & (self.modality == IMAGE)
        if not (image_valid.any() and ehr_valid.any()):
            # one modality only: hiding it leaves nothing; target one scan's tokens instead
            t = int(rng.choice(np.unique(self.time_index[valid])))
            return valid & (self.time_index == t)
        return (ehr_valid if rng.random() < 0.5 else image_valid).copy()

    def _timepoint(self, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Every token of one time point that has valid tokens."""
        t = int(rng.choice(np.unique(self.time_index[valid])))
        return valid & (self.time_index == t)

    def _random_tokens(self, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = np.flatnonzero(valid)
        n = max(1, int(round(rng.uniform(*self.config.block_scale) * idx.size)))
        target = np.zeros(self.n_tokens, dtype=bool)
        target[rng.choice(idx, size=n, replace=False)] = True
        return target

    def _context(self, remaining: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Keep a random ``context_scale`` fraction of the non-target valid tokens."""
        idx = np.flatnonzero(remaining)
        keep = int(round(rng.uniform(*self.config.context_scale) * idx.size))
        context = np.zeros(self.n_tokens, dtype=bool)
        if idx.size:
            context[rng.choice(idx, size=max(1, keep), replace=False)] = True
        return context

    def _repair(
        self, valid: np.ndarray, context: np.ndarray, target: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Guarantee non-empty, disjoint context and target within the valid tokens."""
        if not context.any():  # targets swallowed every valid token: hand one back
            moved = int(rng.choice(np.flatnonzero(target)))
            target[moved], context[moved] = False, True
        if not target.any():
            moved = int(rng.choice(np.flatnonzero(context)))
            target[moved], context[moved] = True, False
            if not context.any():
                spare = np.flatnonzero(valid & ~target)
                context[int(rng.choice(spare))] = True
        return context, target

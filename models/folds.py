"""Patient-level folds for out-of-fold evaluation of small labeled cohorts.

Why: with ~150 labeled patients a single 20% test split holds ~30 patients, too few for a
paired DeLong test to see a paper-sized AUC difference (power ~0.03 for 0.91 vs 0.88).
Repeated stratified k-fold cross-validation tests every labeled patient once per repeat, on
a model that never saw them; each training fold keeps a stratified validation part for early
stopping, so the test fold is never used to choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.finetune import stratified_patient_split


@dataclass(frozen=True)
class Fold:
    """One (repeat, fold) of repeated k-fold CV: disjoint patient index arrays (sorted int64).

    train ∪ val ∪ test covers every labeled patient; test is the held-out fold.
    """

    repeat: int
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.index}"

    def to_dict(self) -> dict:
        return {
            "repeat": self.repeat,
            "fold": self.index,
            **{k: getattr(self, k).tolist() for k in ("train", "val", "test")},
        }


def _stratified_chunks(labels: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """k disjoint index sets, each label spread round-robin after a shuffle (sizes differ by <= 1)."""
    chunks: list[list[np.ndarray]] = [[] for _ in range(k)]
    offset = 0
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        for i in range(k):
            chunks[(i + offset) % k].append(members[i::k])
        offset += len(members) % k  # keeps fold sizes balanced across labels
    return [np.sort(np.concatenate(c)).astype(np.int64) for c in chunks]


def repeated_stratified_folds(
    labels: np.ndarray, k: int, repeats: int, val_fraction: float, seed: int
) -> list[Fold]:
    """repeats x k folds over patients with 0/1 `labels` [N]; deterministic in `seed`.

    Each class must have at least k members (every test fold holds both classes), and the
    validation part of each training fold is stratified too.
    """
    labels = np.asarray(labels)
    if k < 2 or repeats < 1 or not 0.0 < val_fraction < 1.0:
        raise ValueError("folds: need k >= 2, repeats >= 1 and 0 < val_fraction < 1")
    counts = np.bincount(labels.astype(np.int64), minlength=2)
    if counts.min() < k:
        raise ValueError(
            f"folds: {counts[1]} malignant and {counts[0]} benign labeled patients; "
            f"{k}-fold CV needs at least {k} of each"
        )
    folds = []
    for repeat in range(repeats):
        rng = np.random.default_rng([seed, repeat])
        chunks = _stratified_chunks(labels, k, rng)
        for index, test in enumerate(chunks):
            rest = np.setdiff1d(np.arange(len(labels)), test)
            inner = stratified_patient_split(
                labels[rest],
                {"train": 1.0 - val_fraction, "val": val_fraction},
                seed=seed * 1_000_003 + repeat * 1_009 + index,
            )
            folds.append(Fold(repeat, index, rest[inner["train"]], rest[inner["val"]], test))
    return folds


def subsample_stratified(
    idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """A stratified `fraction` of patient indices `idx` (at least one of each label present)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError("fraction must be in (0, 1]")
    if fraction == 1.0:
        return np.sort(idx)
    rng = np.random.default_rng(seed)
    keep = []
    for value in np.unique(labels[idx]):
        members = rng.permutation(idx[labels[idx] == value])
        keep.append(members[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(keep)).astype(np.int64)

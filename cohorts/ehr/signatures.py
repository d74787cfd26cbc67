"""Latent clinical signatures: FastICA over code intensities (Lasko et al.), fitted once.

The signatures are fitted on the unlabeled archive only and applied unchanged to the internal
and external cohorts, so no label or evaluation cohort shapes the EHR representation. The
fitted state (vocabulary, mean, unmixing matrix) is saved as a plain ``.npz`` (no pickle).
Code groups absent from the fit vocabulary carry no weight; ``unseen_codes`` counts them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import FastICA

from cohorts.files import atomic_output


def signature_names(n_components: int) -> list[str]:
    return [f"sig_{k:02d}" for k in range(n_components)]


class ClinicalSignatures:
    """FastICA (whiten='unit-variance', fixed seed) from code intensities to K signatures."""

    def __init__(
        self,
        n_components: int,
        random_state: int = 0,
        max_iter: int = 1000,
        max_rows: int = 50_000,
    ) -> None:
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = n_components
        self.random_state = random_state
        self.max_iter = max_iter
        self.max_rows = max_rows
        self.vocabulary: list[str] = []
        self.mean_: np.ndarray = np.zeros(0)
        self.unmixing_: np.ndarray = np.zeros((0, 0))

    @property
    def feature_names(self) -> list[str]:
        return signature_names(self.n_components)

    @property
    def is_fitted(self) -> bool:
        return bool(self.vocabulary)

    def fit(self, intensities: pd.DataFrame) -> ClinicalSignatures:
        """Fit on archive intensities (rows: snapshots; columns: code groups).

        At most ``max_rows`` rows (a seeded sample) enter the fit, which bounds its time.
        """
        n_rows, n_codes = intensities.shape
        if self.n_components > min(n_rows, n_codes):
            raise ValueError(
                f"{self.n_components} signatures need at least as many rows and code groups; "
                f"got {n_rows} rows x {n_codes} code groups"
            )
        rows = intensities
        if n_rows > self.max_rows:
            rows = intensities.sample(n=self.max_rows, random_state=self.random_state)
        ica = FastICA(
            n_components=self.n_components,
            whiten="unit-variance",
            random_state=self.random_state,
            max_iter=self.max_iter,
        )
        ica.fit(rows.to_numpy(dtype=np.float64))
        self.vocabulary = [str(c) for c in intensities.columns]
        self.mean_ = ica.mean_.astype(np.float64)
        self.unmixing_ = ica.components_.astype(np.float64)
        return self

    def _aligned(self, intensities: pd.DataFrame) -> np.ndarray:
        if not self.is_fitted:
            raise RuntimeError("ClinicalSignatures.fit or .load must come before transform")
        return intensities.reindex(columns=self.vocabulary, fill_value=0.0).to_numpy(np.float64)

    def transform(self, intensities: pd.DataFrame) -> pd.DataFrame:
        """Signatures per row: unmixing @ (x - mean), x aligned to the fit vocabulary."""
        values = (self._aligned(intensities) - self.mean_) @ self.unmixing_.T
        return pd.DataFrame(
            values.astype(np.float32), index=intensities.index, columns=self.feature_names
        )

    def unseen_codes(self, intensities: pd.DataFrame) -> dict[str, int]:
        """Code groups outside the fit vocabulary -> number of rows where they are non-zero."""
        extra = [c for c in intensities.columns if c not in set(self.vocabulary)]
        nonzero = (intensities[extra] != 0).sum(axis=0)
        return {str(code): int(n) for code, n in nonzero.items() if n > 0}

    def save(self, path: Path) -> None:
        """Write vocabulary, mean and unmixing matrix to ``path`` (.npz) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "n_components": self.n_components,
            "random_state": self.random_state,
            "max_iter": self.max_iter,
            "max_rows": self.max_rows,
        }
        with atomic_output(path) as tmp, tmp.open("wb") as handle:
            np.savez(
                handle,
                vocabulary=np.asarray(self.vocabulary, dtype=np.str_),
                mean=self.mean_,
                unmixing=self.unmixing_,
                meta=np.asarray(json.dumps(meta)),
            )

    @classmethod
    def load(cls, path: Path) -> ClinicalSignatures:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            signatures = cls(
                meta["n_components"], meta["random_state"], meta["max_iter"], meta["max_rows"]
            )
            signatures.vocabulary = [str(c) for c in data["vocabulary"]]
            signatures.mean_ = data["mean"]
            signatures.unmixing_ = data["unmixing"]
        return signatures

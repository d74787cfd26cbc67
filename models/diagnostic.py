"""Nodule malignancy model: the shared multimodal encoder plus a small classification head.

The readout follows lung-cplp: the prediction is made at the most recent scan, as the mean of
that time point's valid tokens (image patches, plus EHR tokens when EHR is available and the
model is multimodal). Earlier scans and EHR inform it only through attention.
"""

from __future__ import annotations

import torch
from torch import nn

from models.encoders import IMAGE, MultimodalEncoder, init_weights

MODALITIES: tuple[str, ...] = ("multimodal", "imaging")


class DiagnosticModel(nn.Module):
    """Encoder + head (LayerNorm -> Linear -> GELU -> Linear -> 1) -> malignancy probability [B].

    modalities="imaging" drops every EHR token from attention and readout, so EHR inputs
    have no effect at all (they are still accepted, keeping one input signature).
    Deterministic and free of data-dependent Python control flow (ONNX-exportable).
    """

    def __init__(self, encoder: MultimodalEncoder, modalities: str = "multimodal") -> None:
        super().__init__()
        if modalities not in MODALITIES:
            raise ValueError(f"modalities must be one of {MODALITIES}, got {modalities!r}")
        self.encoder = encoder
        self.modalities = modalities
        d = encoder.config.embed_dim
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.head.apply(init_weights)

    def readout_mask(self, scan_mask: torch.Tensor, ehr_mask: torch.Tensor) -> torch.Tensor:
        """[B, N] bool: valid (and modality-allowed) tokens of each patient's latest present scan.

        The latest present time point is found from scan_mask (not assumed to be the last
        column), so right-padded inputs are read correctly too.
        """
        enc = self.encoder
        allowed = enc.valid_tokens(scan_mask, ehr_mask) & self.modality_keep()[None, :]
        t = scan_mask.shape[1]
        order = torch.arange(1, t + 1, device=scan_mask.device)
        latest = (scan_mask.bool().long() * order).amax(dim=1) - 1  # [B], -1 when no scan
        return allowed & (enc.token_time_index[None, :] == latest[:, None])

    def modality_keep(self) -> torch.Tensor:
        """[N] bool: tokens this model may use (all, or image tokens only)."""
        if self.modalities == "imaging":
            return self.encoder.token_modality == IMAGE
        return torch.ones_like(self.encoder.token_modality, dtype=torch.bool)

    def logits(
        self,
        crops_hu: torch.Tensor,
        months_before_latest: torch.Tensor,
        scan_mask: torch.Tensor,
        ehr: torch.Tensor,
        ehr_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Malignancy logit [B] (log-odds)."""
        keep = self.modality_keep()[None, :].expand(scan_mask.shape[0], -1)
        tokens = self.encoder(crops_hu, months_before_latest, scan_mask, ehr, ehr_mask, keep=keep)
        weights = self.readout_mask(scan_mask, ehr_mask).to(tokens.dtype).unsqueeze(-1)
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return self.head(pooled).squeeze(-1)

    def forward(
        self,
        crops_hu: torch.Tensor,
        months_before_latest: torch.Tensor,
        scan_mask: torch.Tensor,
        ehr: torch.Tensor,
        ehr_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Malignancy probability [B] in [0, 1]."""
        return torch.sigmoid(self.logits(crops_hu, months_before_latest, scan_mask, ehr, ehr_mask))

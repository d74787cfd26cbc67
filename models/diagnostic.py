"""Nodule malignancy model: the shared multimodal encoder plus a small classification head.

The prediction is made at the most recent scan (as in lung-cplp): earlier scans and EHR
inform it through the encoder's attention. What is read from that scan is the `readout`
(models/readout.py): by default its centre patch token(s), where the nodule sits, the
change of that token since the patient's earliest scan (growth), and a learned attention
pool over the latest scan's valid tokens (image patches, plus EHR tokens when EHR is
available and the model is multimodal). "mean" keeps the lung-cplp mean for ablations.
"""

from __future__ import annotations

import torch
from torch import nn

from models.encoders import IMAGE, MultimodalEncoder, init_weights
from models.readout import (
    AttentionPool,
    centre_token_mask,
    earliest_timepoint,
    latest_scan_tokens,
    masked_mean,
    readout_width,
)

DEFAULT_READOUT = "growth_attention"

MODALITIES: tuple[str, ...] = ("multimodal", "imaging")


class DiagnosticModel(nn.Module):
    """Encoder + head (LayerNorm -> Linear -> GELU -> Linear -> 1) -> malignancy probability [B].

    modalities="imaging" drops every EHR token from attention and readout, so EHR inputs
    have no effect at all (they are still accepted, keeping one input signature).
    Deterministic and free of data-dependent Python control flow (ONNX-exportable).
    """

    def __init__(
        self,
        encoder: MultimodalEncoder,
        modalities: str = "multimodal",
        readout: str = DEFAULT_READOUT,
    ) -> None:
        super().__init__()
        if modalities not in MODALITIES:
            raise ValueError(f"modalities must be one of {MODALITIES}, got {modalities!r}")
        self.encoder = encoder
        self.modalities = modalities
        self.readout = readout
        d = encoder.config.embed_dim
        width = readout_width(readout, d)
        self.pool = AttentionPool(d, encoder.config.heads) if "attention" in readout else None
        self.head = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, d), nn.GELU(), nn.Linear(d, 1)
        )
        self.head.apply(init_weights)

    def head_modules(self) -> nn.ModuleList:
        """Everything trained on top of the encoder (attention pool and head): the "head" group."""
        return nn.ModuleList([m for m in (self.pool, self.head) if m is not None])

    def readout_mask(self, scan_mask: torch.Tensor, ehr_mask: torch.Tensor) -> torch.Tensor:
        """[B, N] bool: valid (and modality-allowed) tokens of each patient's latest present scan.

        The latest present time point is found from scan_mask (not assumed to be the last
        column), so right-padded inputs are read correctly too.
        """
        return latest_scan_tokens(self.encoder, scan_mask, ehr_mask) & self.modality_keep()[None, :]

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
        return self.head(self.pooled(tokens, scan_mask, ehr_mask)).squeeze(-1)

    def pooled(
        self, tokens: torch.Tensor, scan_mask: torch.Tensor, ehr_mask: torch.Tensor
    ) -> torch.Tensor:
        """The readout of encoded tokens [B, N, D] -> [B, readout_width] (see READOUTS)."""
        select = self.readout_mask(scan_mask, ehr_mask)
        parts = []
        centre = centre_token_mask(self.encoder)[None, :]
        if self.readout in ("centre", "centre_attention", "growth_attention"):
            parts.append(masked_mean(tokens, select & centre))
        if self.readout == "growth_attention":
            first = earliest_timepoint(scan_mask)
            at_first = self.encoder.token_time_index[None, :] == first[:, None]
            earliest = masked_mean(
                tokens, centre & at_first & scan_mask.bool().any(1, keepdim=True)
            )
            parts.append(parts[0] - earliest)
        if self.readout == "mean":
            parts.append(masked_mean(tokens, select))
        if self.pool is not None:
            parts.append(self.pool(tokens, select))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

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

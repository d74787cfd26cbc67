"""The online half of the JEPA: context encoder + predictor, one module so DDP syncs both."""

from __future__ import annotations

import torch
from torch import nn

from models.encoders import MultimodalEncoder
from models.jepa.predictor import JEPAPredictor


class MultimodalJEPA(nn.Module):
    """Context encoder sees the context tokens; the predictor fills in the target tokens.

    The EMA target encoder is kept outside this module (it is not trained by gradients).
    """

    def __init__(self, encoder: MultimodalEncoder, predictor: JEPAPredictor) -> None:
        super().__init__()
        if predictor.embed_dim != encoder.config.embed_dim:
            raise ValueError("predictor.embed_dim must equal the encoder's embed_dim")
        self.encoder = encoder
        self.predictor = predictor

    def forward(
        self,
        crops_hu: torch.Tensor,
        months_before_latest: torch.Tensor,
        scan_mask: torch.Tensor,
        ehr: torch.Tensor,
        ehr_mask: torch.Tensor,
        context: torch.Tensor,
        target: torch.Tensor,
    ) -> torch.Tensor:
        """Predicted target embeddings [B, N, D] (meaningful where ``target`` [B, N] is True).

        The context encoder attends only to ``context`` [B, N] tokens; the predictor gets each
        token's position + modality embedding and the time embedding of its scan.
        """
        encoded = self.encoder(
            crops_hu, months_before_latest, scan_mask, ehr, ehr_mask, keep=context
        )
        months = torch.where(
            scan_mask.bool(),
            months_before_latest.float(),
            torch.zeros_like(months_before_latest.float()),
        )
        position = self.encoder.position_embedding().unsqueeze(
            0
        ) + self.encoder.token_time_embedding(months)  # [B, N, D]
        return self.predictor(encoded, position, context, target)

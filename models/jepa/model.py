"""The online half of the JEPA: context encoder + predictor, one module so DDP syncs both."""

from __future__ import annotations

import torch
from torch import nn

from models.encoders import MultimodalEncoder
from models.jepa.predictor import JEPAPredictor


def gather_tokens(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the selected tokens, left-packed: selected [B, N] bool -> idx [B, K], keep [B, K].

    K is the largest count in the batch; shorter rows are padded with index 0 and keep False
    (I-JEPA's `apply_masks`, for masks whose sizes differ per sample).
    """
    counts = selected.sum(dim=1)
    k = max(int(counts.max()) if counts.numel() else 0, 1)
    # stable sort puts the selected tokens first, in their original order
    order = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :k]
    keep = torch.arange(k, device=selected.device)[None, :] < counts[:, None]
    return torch.where(keep, order, torch.zeros_like(order)), keep


class MultimodalJEPA(nn.Module):
    """Context encoder sees the context tokens only; the predictor fills in the target tokens.

    The EMA target encoder is kept outside this module (it is not trained by gradients).
    """

    def __init__(self, encoder: MultimodalEncoder, predictor: JEPAPredictor) -> None:
        super().__init__()
        if predictor.embed_dim != encoder.config.embed_dim:
            raise ValueError("predictor.embed_dim must equal the encoder's embed_dim")
        self.encoder = encoder
        self.predictor = predictor

    def encode_context(
        self, tokens: torch.Tensor, valid: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """Run the encoder's blocks on the gathered context tokens only -> [B, N, D].

        tokens [B, N, D] are the embedded inputs; the result holds the encoded context at its
        token positions and zeros elsewhere. Cost scales with the context size K, not N: a
        sample whose image is hidden runs its few EHR tokens only.
        """
        idx, keep = gather_tokens(context & valid)
        d = tokens.shape[-1]
        gathered = torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, d))
        encoded = self.encoder.encode_tokens(gathered, keep)
        encoded = encoded * keep.unsqueeze(-1).to(encoded.dtype)
        out = torch.zeros_like(tokens, dtype=encoded.dtype)
        # padded slots carry zeros to index 0, which a real context token then overwrites
        return out.scatter_add(1, idx.unsqueeze(-1).expand(-1, -1, d), encoded)

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

        The context encoder encodes only the ``context`` [B, N] tokens; the predictor gets
        each token's position + modality embedding and the time embedding of its scan.
        """
        tokens, valid = self.encoder.embed(crops_hu, months_before_latest, scan_mask, ehr, ehr_mask)
        encoded = self.encode_context(tokens, valid, context)
        months = torch.where(
            scan_mask.bool(),
            months_before_latest.float(),
            torch.zeros_like(months_before_latest.float()),
        )
        position = self.encoder.position_embedding().unsqueeze(
            0
        ) + self.encoder.token_time_embedding(months)  # [B, N, D]
        return self.predictor(encoded, position, context & valid, target)

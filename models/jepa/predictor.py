"""Narrow transformer predictor: from context embeddings to target-token embeddings (I-JEPA).

Context outputs are projected down to ``predictor_dim``; every target position gets a learned
mask token; both carry the encoder's position (patch + modality) and time embeddings, so the
predictor knows *which* token (modality, time point, patch) it must predict. A few pre-norm
blocks attend over context and target positions only, then project back to the encoder width.
"""

from __future__ import annotations

import torch
from torch import nn

from models.encoders import TransformerBlock, init_weights, key_padding_bias


class JEPAPredictor(nn.Module):
    """Predicts target embeddings [B, N, D] at target positions from context embeddings."""

    def __init__(
        self,
        embed_dim: int,
        predictor_dim: int = 48,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if predictor_dim % heads:
            raise ValueError(f"predictor_dim {predictor_dim} not divisible by heads {heads}")
        self.embed_dim = embed_dim
        self.predictor_dim = predictor_dim
        self.context_proj = nn.Linear(embed_dim, predictor_dim)
        self.position_proj = nn.Linear(embed_dim, predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(predictor_dim, heads, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(predictor_dim)
        self.output_proj = nn.Linear(predictor_dim, embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """I-JEPA init (truncated normal std 0.02, zero biases), as the encoder does."""
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self,
        context_tokens: torch.Tensor,
        position: torch.Tensor,
        context: torch.Tensor,
        target: torch.Tensor,
    ) -> torch.Tensor:
        """Predictions [B, N, D]; only positions where ``target`` is True are meaningful.

        context_tokens: [B, N, D] context-encoder outputs (used where ``context``);
        position: [B, N, D] or [N, D] encoder position + modality + time embedding per token;
        context, target: [B, N] bool, disjoint.
        """
        x = self.context_proj(context_tokens)  # [B, N, Dp]
        x = torch.where(context.unsqueeze(-1), x, self.mask_token.to(x.dtype))
        pos = self.position_proj(position)
        x = x + (pos if pos.dim() == 3 else pos.unsqueeze(0))
        bias = key_padding_bias(context | target)  # keys: context and target positions only
        for block in self.blocks:
            x = block(x, bias)
        return self.output_proj(self.norm(x))

"""The shared multimodal (CT + EHR) token encoder used by JEPA pretraining and the diagnostic model.

Tokens are (modality, time point, patch) units, as in the lab's TDSig lineage: each present
scan contributes its 3D crop patches and `ehr_tokens` tokens projected from the EHR vector
as of that scan. Every token gets a learned patch-position embedding, a modality embedding
and a sin/cos embedding of its continuous time (months before the latest scan). The token
count N is fixed per config (absent scans and EHR are masked, not dropped), so shapes stay
static for DDP and ONNX.

Size: about 430 lines: the config, token layout, blocks, patch stems and the encoder are one
architecture that the diagnostic model, JEPA and the ONNX export all load by this one module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.weights import load_weights, read_header, save_weights

IMAGE, EHR = 0, 1
"""Modality ids in `TokenLayout.modality`."""

MASK_BIAS = -1.0e4
"""Additive attention bias for excluded keys: exp() underflows to exactly 0 in float32 for any
realistic score gap, yet a row with every key excluded stays finite (uniform attention, no NaN).
Small enough in magnitude to be representable in float16/bfloat16."""

MAX_PERIOD_MONTHS = 1000.0
"""Longest sin/cos period of the time encoding; the shortest is 2*pi months."""

PATCH_STEMS: tuple[str, ...] = ("linear", "conv")


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of the encoder. The pipeline builds it in one place, ``models.jepa.config.
    encoder_config_for``: widths from params.yaml `pretrain` (PretrainConfig), crop size, time
    points and EHR width from the examples. The defaults here are a standalone architecture for
    library callers, not params.yaml's values.

    crop_size_vox must be a multiple of patch_size_vox. hu_window = (low, high) HU mapped to [0, 1].
    patch_stem: "linear" embeds each patch with one strided convolution (ViT patchify);
    "conv" runs a small convolutional stem inside each patch first (see ConvPatchStem), which
    learns local shape and edges from few labels (Xiao et al., NeurIPS 2021). stem_width is
    that stem's first channel count.
    """

    n_ehr_features: int
    crop_size_vox: int = 32
    patch_size_vox: int = 8
    ehr_tokens: int = 4
    max_timepoints: int = 3
    embed_dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    hu_window: tuple[float, float] = field(default=(-1000.0, 400.0))
    patch_stem: str = "linear"
    stem_width: int = 8

    def __post_init__(self) -> None:
        if self.patch_stem not in PATCH_STEMS:
            raise ValueError(f"EncoderConfig: patch_stem must be one of {PATCH_STEMS}")
        if self.patch_stem == "conv" and (self.patch_size_vox % 2 or self.stem_width < 1):
            raise ValueError("EncoderConfig: the conv stem needs an even patch size, width >= 1")
        if self.crop_size_vox % self.patch_size_vox:
            raise ValueError("EncoderConfig: crop_size_vox must be a multiple of patch_size_vox")
        if self.embed_dim % self.heads or self.embed_dim % 2:
            raise ValueError("EncoderConfig: embed_dim must be even and divisible by heads")
        if min(self.n_ehr_features, self.ehr_tokens, self.max_timepoints, self.depth) < 1:
            raise ValueError(
                "EncoderConfig: feature, token, time point and depth counts must be >= 1"
            )
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError("EncoderConfig: hu_window must be (low, high) with low < high")

    @property
    def patch_grid(self) -> tuple[int, int, int]:
        """Patches per crop along z, y, x."""
        g = self.crop_size_vox // self.patch_size_vox
        return (g, g, g)

    @property
    def patches_per_scan(self) -> int:
        """Image tokens per time point."""
        return math.prod(self.patch_grid)

    @property
    def tokens_per_timepoint(self) -> int:
        """Image patches plus EHR tokens of one time point."""
        return self.patches_per_scan + self.ehr_tokens

    @property
    def n_tokens(self) -> int:
        """N = max_timepoints * (patches_per_scan + ehr_tokens)."""
        return self.max_timepoints * self.tokens_per_timepoint

    def to_dict(self) -> dict:
        """JSON-ready dict (hu_window as a list)."""
        d = asdict(self)
        d["hu_window"] = list(self.hu_window)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        """Inverse of to_dict; unknown keys are an error (a config from another code version)."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"EncoderConfig: unknown keys {sorted(unknown)}")
        d = dict(d)
        if "hu_window" in d:
            d["hu_window"] = tuple(float(v) for v in d["hu_window"])
        return cls(**d)


@dataclass(frozen=True)
class TokenLayout:
    """Where each of the N tokens comes from; ordered by time point, then [image patches..., ehr tokens...].

    modality [N] (0 image, 1 ehr); time_index [N] in [0, T); patch_index [N] (patch index in
    z-y-x raster order for image tokens, EHR-token index for ehr tokens); patch_grid (z, y, x).
    """

    modality: torch.Tensor
    time_index: torch.Tensor
    patch_index: torch.Tensor
    patch_grid: tuple[int, int, int]

    @property
    def n_tokens(self) -> int:
        return int(self.modality.shape[0])

    @classmethod
    def from_config(cls, config: EncoderConfig) -> TokenLayout:
        """The fixed layout of `config` (CPU long tensors)."""
        p, e, t = config.patches_per_scan, config.ehr_tokens, config.max_timepoints
        one_modality = torch.cat([torch.full((p,), IMAGE), torch.full((e,), EHR)])
        one_patch = torch.cat([torch.arange(p), torch.arange(e)])
        return cls(
            modality=one_modality.repeat(t),
            time_index=torch.arange(t).repeat_interleave(p + e),
            patch_index=one_patch.repeat(t),
            patch_grid=config.patch_grid,
        )


def sincos_time_encoding(months: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sin/cos encoding of continuous time (TDViT): months [...] -> [..., dim].

    Angular frequencies are geometric from 1 rad/month down to 1/MAX_PERIOD_MONTHS rad/month;
    the first half of the channels are sines, the second half cosines.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=months.device) / half
    freqs = MAX_PERIOD_MONTHS ** (-exponent)
    angles = months.float().unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def key_padding_bias(attend: torch.Tensor) -> torch.Tensor:
    """Additive attention bias from a key mask: attend [B, N] bool -> [B, 1, 1, N] float (0 or MASK_BIAS)."""
    zero = torch.zeros((), dtype=torch.float32, device=attend.device)
    bias = torch.where(attend, zero, torch.full_like(zero, MASK_BIAS))
    return bias[:, None, None, :]


class Attention(nn.Module):
    """Multi-head self-attention with an additive key bias (no data-dependent control flow)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, N, D], bias [B, 1, 1, N] -> [B, N, D]."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + attn(LN(x)), then x + MLP(LN(x)). Reused by the JEPA predictor."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, N, D], bias [B, 1, 1, N] from key_padding_bias -> [B, N, D]."""
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class ConvPatchStem(nn.Module):
    """Patch embedding by a small 3D CNN run inside each patch: [B, 1, S, S, S] -> [B, P, D].

    Each p^3 patch is cut out first and convolved on its own (zero padding at its border),
    so a token depends only on its own voxels, exactly as with linear patchify: JEPA's
    masking stays leak-free (a context token never sees a masked neighbour's voxels). Layers:
    conv 3^3 (w ch) -> GELU -> conv 3^3 stride 2 (2w) -> GELU -> conv (p/2)^3 -> D. Patches come
    out in z-y-x raster order, like the flattened output of a strided convolution.
    """

    def __init__(self, patch_size_vox: int, embed_dim: int, width: int) -> None:
        super().__init__()
        self.patch = patch_size_vox
        self.layers = nn.Sequential(
            nn.Conv3d(1, width, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv3d(width, 2 * width, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv3d(2 * width, embed_dim, kernel_size=patch_size_vox // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, s, _, _ = x.shape
        p = self.patch
        g = s // p
        cubes = x.reshape(b, g, p, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6)
        out = self.layers(cubes.reshape(b * g**3, 1, p, p, p))  # [b*P, D, 1, 1, 1]
        return out.reshape(b, g**3, -1)


class LinearPatchEmbed(nn.Module):
    """ViT patchify: one strided convolution, [B, 1, S, S, S] -> [B, P, D] (z-y-x raster)."""

    def __init__(self, patch_size_vox: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(1, embed_dim, kernel_size=patch_size_vox, stride=patch_size_vox)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def patch_embedding(config: EncoderConfig) -> nn.Module:
    """The tokenizer named by config.patch_stem."""
    if config.patch_stem == "conv":
        return ConvPatchStem(config.patch_size_vox, config.embed_dim, config.stem_width)
    return LinearPatchEmbed(config.patch_size_vox, config.embed_dim)


def init_weights(module: nn.Module) -> None:
    """I-JEPA style init: truncated normal (std 0.02) linear/conv weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear | nn.Conv3d):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MultimodalEncoder(nn.Module):
    """CT crops + EHR over up to T time points -> N contextualised tokens of width D.

    Inputs (B patients): crops_hu [B,T,S,S,S] HU (any real dtype, z-y-x); months_before_latest
    [B,T] float months (0 = latest); scan_mask [B,T] bool; ehr [B,T,F] raw features;
    ehr_mask [B,T] bool. Absent scans/EHR are zeroed before use, so padding values (even
    NaN/inf in EHR) never reach a valid token.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        layout = TokenLayout.from_config(config)
        self.register_buffer("token_modality", layout.modality, persistent=False)
        self.register_buffer("token_time_index", layout.time_index, persistent=False)
        self.register_buffer("token_patch_index", layout.patch_index, persistent=False)
        slot = torch.where(
            layout.modality == IMAGE,
            layout.patch_index,
            config.patches_per_scan + layout.patch_index,
        )
        self.register_buffer("token_slot", slot, persistent=False)
        self.register_buffer("ehr_mean", torch.zeros(config.n_ehr_features))
        self.register_buffer("ehr_std", torch.ones(config.n_ehr_features))

        self.patch_embed = patch_embedding(config)
        self.ehr_embed = nn.Linear(config.n_ehr_features, config.ehr_tokens * d)
        self.time_proj = nn.Linear(d, d, bias=False)
        self.patch_pos_embedding = nn.Parameter(torch.zeros(config.patches_per_scan, d))
        self.ehr_pos_embedding = nn.Parameter(torch.zeros(config.ehr_tokens, d))
        self.modality_embedding = nn.Parameter(torch.zeros(2, d))
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(d)

        self.apply(init_weights)
        for table in (self.patch_pos_embedding, self.ehr_pos_embedding, self.modality_embedding):
            nn.init.trunc_normal_(table, std=0.02)

    @property
    def layout(self) -> TokenLayout:
        """The token layout, on the module's device."""
        return TokenLayout(
            modality=self.token_modality,
            time_index=self.token_time_index,
            patch_index=self.token_patch_index,
            patch_grid=self.config.patch_grid,
        )

    @property
    def n_tokens(self) -> int:
        return self.config.n_tokens

    @torch.no_grad()
    def set_ehr_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store per-feature EHR mean/std [F] (raw units, from training data) inside the model.

        Non-finite values become 0 (mean) / 1 (std), and std is floored at 1e-6 so a constant
        feature maps to 0 instead of inf. The buffers travel into state dicts and ONNX graphs.
        """
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.shape != self.ehr_mean.shape or std.shape != self.ehr_std.shape:
            raise ValueError(f"EHR normalisation must have shape {tuple(self.ehr_mean.shape)}")
        mean = torch.where(torch.isfinite(mean), mean, torch.zeros_like(mean))
        std = torch.where(torch.isfinite(std) & (std > 1e-6), std, torch.ones_like(std))
        self.ehr_mean.copy_(mean)
        self.ehr_std.copy_(std)

    def position_embedding(self) -> torch.Tensor:
        """Data-free part of each token's embedding: patch/EHR-token position + modality -> [N, D]."""
        table = torch.cat([self.patch_pos_embedding, self.ehr_pos_embedding], dim=0)
        return table[self.token_slot] + self.modality_embedding[self.token_modality]

    def time_embedding(self, months: torch.Tensor) -> torch.Tensor:
        """Embedding of continuous time: months [...] -> [..., D] (sin/cos, then a learned linear map)."""
        return self.time_proj(sincos_time_encoding(months, self.config.embed_dim))

    def token_time_embedding(self, months_before_latest: torch.Tensor) -> torch.Tensor:
        """Per-token time embedding: months [B, T] -> [B, N, D] (each token gets its scan's time)."""
        return self.time_embedding(months_before_latest)[:, self.token_time_index]

    def valid_tokens(self, scan_mask: torch.Tensor, ehr_mask: torch.Tensor) -> torch.Tensor:
        """[B, N] bool: the token's scan is present, and for EHR tokens EHR is available too."""
        scan = scan_mask.bool()[:, self.token_time_index]
        ehr = ehr_mask.bool()[:, self.token_time_index]
        return scan & (ehr | (self.token_modality == IMAGE))

    def embed(
        self,
        crops_hu: torch.Tensor,
        months_before_latest: torch.Tensor,
        scan_mask: torch.Tensor,
        ehr: torch.Tensor,
        ehr_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings [B, N, D] and validity [B, N] bool, before any transformer block."""
        cfg = self.config
        b, t = scan_mask.shape
        scan = scan_mask.bool()
        low, high = cfg.hu_window
        x = (crops_hu.float() - low) / (high - low)
        x = torch.clamp(x, 0.0, 1.0) * scan[:, :, None, None, None].float()
        s = cfg.crop_size_vox
        patches = self.patch_embed(x.reshape(b * t, 1, s, s, s))  # [B*T, P, D]
        patches = patches.reshape(b, t, cfg.patches_per_scan, -1)

        available = (scan & ehr_mask.bool())[:, :, None]
        z = (ehr.float() - self.ehr_mean) / self.ehr_std
        z = torch.where(torch.isfinite(z) & available, z, torch.zeros_like(z))
        ehr_tokens = self.ehr_embed(z).reshape(b, t, cfg.ehr_tokens, -1)

        tokens = torch.cat([patches, ehr_tokens], dim=2).reshape(b, cfg.n_tokens, -1)
        months = months_before_latest.float()
        months = torch.where(scan, months, torch.zeros_like(months))
        tokens = tokens + self.position_embedding() + self.token_time_embedding(months)
        return tokens, self.valid_tokens(scan_mask, ehr_mask)

    def encode_tokens(self, tokens: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """Transformer blocks + final LayerNorm over given tokens [B, N, D]; keys limited to `attend` [B, N]."""
        bias = key_padding_bias(attend)
        for block in self.blocks:
            tokens = block(tokens, bias)
        return self.norm(tokens)

    def forward(
        self,
        crops_hu: torch.Tensor,
        months_before_latest: torch.Tensor,
        scan_mask: torch.Tensor,
        ehr: torch.Tensor,
        ehr_mask: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Contextualised tokens [B, N, D]; attention only to tokens that are valid & keep [B, N].

        Tokens outside that set still get an output (callers ignore it). A row with no
        attendable token attends uniformly instead of producing NaN (see MASK_BIAS).
        """
        tokens, valid = self.embed(crops_hu, months_before_latest, scan_mask, ehr, ehr_mask)
        attend = valid if keep is None else valid & keep.bool()
        return self.encode_tokens(tokens, attend)


ENCODER_FORMAT = "lungjepa.encoder.v1"


def save_encoder(encoder: MultimodalEncoder, path: Path, card: dict | None = None) -> None:
    """Write weights (+ EHR normalisation) to `path` (.safetensors) with the config in its metadata.

    Atomic, no pickle. The card (JSON-serialisable) rides along in the metadata too.
    """
    header = {
        "format": ENCODER_FORMAT,
        "encoder_config": encoder.config.to_dict(),
        "card": card or {},
    }
    save_weights(encoder.state_dict(), Path(path), header)


def load_encoder(path: Path) -> MultimodalEncoder:
    """Inverse of save_encoder (strict: every weight must be present)."""
    header = read_header(Path(path))
    if header.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path}: not a LungJEPA encoder file")
    encoder = MultimodalEncoder(EncoderConfig.from_dict(header["encoder_config"]))
    encoder.load_state_dict(load_weights(Path(path)), strict=True)
    return encoder

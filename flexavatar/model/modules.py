"""Network parts: image encoder (ViT), structured head queries, deformer (UNet)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, cross: bool = False, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross = cross
        if cross:
            self.norm_q = nn.LayerNorm(dim)
            self.norm_kv = nn.LayerNorm(dim)
            self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        if self.cross:
            kv = self.norm_kv(context)
            x = x + self.cross_attn(self.norm_q(x), kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ImageEncoder(nn.Module):
    """ViT over input crops; no camera pose input.

    images [B,V,3,S,S] in [0,1] -> tokens [B, V*(S/p)², dim]: the tokens of all V views are
    concatenated, so any V = 1…4 works without retraining.
    """

    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        grid = image_size // patch
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, views = images.shape[:2]
        x = self.patch_embed((images.flatten(0, 1) - 0.5) / 0.25)  # [B*V,dim,g,g]
        x = x.flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:  # views attend within themselves; fusion happens in the queries
            x = block(x)
        x = self.norm(x)
        return x.reshape(batch, views * x.shape[1], x.shape[2])


def fourier_features(points: torch.Tensor, num_freqs: int = 6, scale: float = 10.0) -> torch.Tensor:
    """[...,3] metres -> [...,3 + 6*num_freqs] sin/cos features (head-sized: ~0.1 m)."""
    freqs = scale * (2.0 ** torch.arange(num_freqs, device=points.device, dtype=points.dtype)) * math.pi
    angles = points[..., None] * freqs  # [...,3,F]
    return torch.cat([points, angles.sin().flatten(-2), angles.cos().flatten(-2)], -1)


class HeadQueries(nn.Module):
    """Structured head queries: one token per atlas patch.

    Each token is embedded from its patch's canonical 3D position (Fourier features) plus the
    patchified UV evidence; self-attention among queries, cross-attention to all image tokens;
    unpatchified into static attribute maps and the identity feature map.
    """

    def __init__(
        self,
        resolution: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        context_dim: int,
        static_channels: int,
        identity_channels: int,
        evidence_channels: int = 4,
    ):
        super().__init__()
        self.resolution, self.patch = resolution, patch
        self.static_channels, self.identity_channels = static_channels, identity_channels
        self.position_embed = nn.Sequential(nn.Linear(3 + 36, dim), nn.GELU(), nn.Linear(dim, dim))
        self.evidence_embed = nn.Linear(evidence_channels * patch * patch, dim)
        self.context_proj = nn.Linear(context_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, cross=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.static_head = nn.Linear(dim, static_channels * patch * patch)
        self.identity_head = nn.Linear(dim, identity_channels * patch * patch)
        # zero output: an untrained model returns the evidence on the template
        nn.init.zeros_(self.static_head.weight)
        nn.init.zeros_(self.static_head.bias)

    def patchify(self, maps: torch.Tensor) -> torch.Tensor:
        """[B,C,R,R] -> [B,(R/p)², C*p*p]."""
        return F.unfold(maps, self.patch, stride=self.patch).transpose(1, 2)

    def unpatchify(self, tokens: torch.Tensor, channels: int) -> torch.Tensor:
        """[B,(R/p)², C*p*p] -> [B,C,R,R]."""
        return F.fold(tokens.transpose(1, 2), self.resolution, self.patch, stride=self.patch).view(
            tokens.shape[0], channels, self.resolution, self.resolution
        )

    def forward(
        self, patch_positions: torch.Tensor, evidence: torch.Tensor, image_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """patch_positions [P,3] m, evidence [B,4,R,R], image_tokens [B,T,Dc] ->
        (static deltas [B,Cs,R,R], identity features [B,Cid,R,R])."""
        queries = self.position_embed(fourier_features(patch_positions))[None]
        queries = queries + self.evidence_embed(self.patchify(evidence))
        context = self.context_proj(image_tokens)
        for block in self.blocks:
            queries = block(queries, context)
        queries = self.norm(queries)
        static = self.unpatchify(self.static_head(queries), self.static_channels)
        identity = self.unpatchify(self.identity_head(queries), self.identity_channels)
        return static, identity


class Deformer(nn.Module):
    """Expression-driven deformer: ``diffusers.UNet2DModel`` on F_id ⊕ UV position maps.

    Inputs: identity features [B,Cid,R,R], the deformed-minus-neutral position map and the
    neutral position map ([B,3,R,R] each, metres, scaled to ~unit range). Output: per-texel
    dynamic deltas [B,Cd,R,R], zero at initialisation. ``data_source`` is the bias sink (class
    embedding): 0 multi-view (always at inference), 1 monocular.
    """

    POSITION_SCALE = 10.0  # 10 cm -> 1

    def __init__(
        self,
        resolution: int,
        identity_channels: int,
        out_channels: int,
        channels: tuple[int, ...],
        downsample: int,
        num_data_sources: int,
    ):
        super().__init__()
        from diffusers import UNet2DModel

        self.downsample = downsample
        size = resolution // downsample
        self.unet = UNet2DModel(
            sample_size=size,
            in_channels=identity_channels + 6,
            out_channels=out_channels,
            block_out_channels=tuple(channels),
            down_block_types=("DownBlock2D",) * len(channels),
            up_block_types=("UpBlock2D",) * len(channels),
            layers_per_block=1,
            norm_num_groups=min(8, *channels),
            num_class_embeds=num_data_sources,
            add_attention=False,
            time_embedding_type="positional",
            flip_sin_to_cos=True,
        )
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def forward(
        self,
        identity_features: torch.Tensor,
        offset_map: torch.Tensor,
        neutral_map: torch.Tensor,
        data_source: torch.Tensor | int = 0,
    ) -> torch.Tensor:
        batch = offset_map.shape[0]
        if identity_features.shape[0] != batch:
            identity_features = identity_features.expand(batch, -1, -1, -1)
        if neutral_map.shape[0] != batch:
            neutral_map = neutral_map.expand(batch, -1, -1, -1)
        x = torch.cat([identity_features, offset_map * self.POSITION_SCALE * 10, neutral_map * self.POSITION_SCALE], 1)
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        labels = torch.as_tensor(data_source, device=x.device, dtype=torch.long).expand(batch)
        timestep = torch.zeros(batch, device=x.device)
        out = self.unet(x, timestep, class_labels=labels).sample
        if self.downsample > 1:
            out = F.interpolate(out, scale_factor=self.downsample, mode="bilinear", align_corners=False)
        return out

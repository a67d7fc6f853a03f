"""Network parts: image encoder (ViT), structured head queries, deformer (UNet)."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
        x = self._pool(x)
        labels = torch.as_tensor(data_source, device=x.device, dtype=torch.long).expand(batch)
        timestep = torch.zeros(batch, device=x.device)
        out = self.unet(x, timestep, class_labels=labels).sample
        return self._upsample(out)

    def _upsample(self, out: torch.Tensor) -> torch.Tensor:
        if self.downsample > 1:
            out = F.interpolate(out, scale_factor=self.downsample, mode="bilinear", align_corners=False)
        return out

    def _pool(self, maps: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(maps, self.downsample) if self.downsample > 1 else maps

    @torch.no_grad()
    def constants(
        self, identity_features: torch.Tensor, neutral_map: torch.Tensor, data_source: int = 0
    ) -> DeformerConstants:
        """The expression-independent part of :meth:`forward` for one avatar (inference only).

        identity_features [1,Cid,R,R], neutral_map [1,3,R,R] metres. See :class:`DeformerConstants`.
        """
        unet = self.unet
        labels = torch.full((1,), int(data_source), dtype=torch.long, device=neutral_map.device)
        embedding = unet.time_embedding(unet.time_proj(torch.zeros(1, device=neutral_map.device)))
        embedding = F.silu(embedding + unet.class_embedding(labels))
        resnets = [m for m in unet.modules() if hasattr(m, "time_emb_proj")]
        convs = [m for m in unet.modules() if isinstance(m, nn.Conv2d)]
        layout = torch.channels_last
        return DeformerConstants(
            identity=self._pool(identity_features).contiguous(memory_format=layout),
            neutral=self._pool(neutral_map * self.POSITION_SCALE).contiguous(memory_format=layout),
            embeddings={m: m.time_emb_proj(embedding)[:, :, None, None] for m in resnets},
            weights={m: m.weight.detach().contiguous(memory_format=layout) for m in convs},
            data_source=int(data_source),
        )

    @torch.no_grad()
    def forward_constant(self, offset_map: torch.Tensor, constants: DeformerConstants) -> torch.Tensor:
        """:meth:`forward` for the avatar of ``constants``: offset_map [B,3,R,R] (deformed minus
        neutral position map, metres) -> dynamic deltas [B,Cd,R,R].

        The same UNet weights and operations as ``diffusers.UNet2DModel.forward`` without its
        per-call bookkeeping (timestep and class embeddings, dtype lookups), convolutions in
        channels_last. Equal to :meth:`forward` to float rounding (tests/test_live.py).
        """
        batch = offset_map.shape[0]
        x = torch.cat([constants.identity.expand(batch, -1, -1, -1), self._pool(offset_map * self.POSITION_SCALE * 10),
                       constants.neutral.expand(batch, -1, -1, -1)], 1)  # fmt: skip
        out = _unet_forward(self.unet, x.contiguous(memory_format=torch.channels_last), constants)
        return self._upsample(out.contiguous())


@dataclass
class DeformerConstants:
    """What :class:`Deformer` holds fixed for one avatar at inference (:meth:`Deformer.constants`).

    identity [1,Cid,r,r], neutral [1,3,r,r]: F_id and the scaled neutral position map, pooled to
    the UNet's grid (r = R / downsample). embeddings: per ResnetBlock2D, its projection of the
    time (always 0) + class embedding, [1,C,1,1]. weights: per Conv2d, its weight in
    channels_last (at batch 1 the UNet's convolutions take 2.4 ms in that layout, 2.8 ms in the
    default one; measured on 1 thread). data_source: the bias sink these were made for.
    """

    identity: torch.Tensor
    neutral: torch.Tensor
    embeddings: dict[nn.Module, torch.Tensor]
    weights: dict[nn.Module, torch.Tensor]
    data_source: int


def _conv(conv: nn.Conv2d, x: torch.Tensor, constants: DeformerConstants) -> torch.Tensor:
    return F.conv2d(x, constants.weights[conv], conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _resnet_forward(block: nn.Module, x: torch.Tensor, constants: DeformerConstants) -> torch.Tensor:
    """diffusers' ResnetBlock2D (default time-embedding norm, output scale 1, no resampling)."""
    hidden = _conv(block.conv1, F.silu(block.norm1(x)), constants) + constants.embeddings[block]
    hidden = _conv(block.conv2, F.silu(block.norm2(hidden)), constants)
    shortcut = x if block.conv_shortcut is None else _conv(block.conv_shortcut, x, constants)
    return shortcut + hidden


def _unet_forward(unet: nn.Module, x: torch.Tensor, constants: DeformerConstants) -> torch.Tensor:
    """diffusers' UNet2DModel.forward for DownBlock2D / UNetMidBlock2D (no attention) / UpBlock2D."""
    hidden = _conv(unet.conv_in, x, constants)
    skips = [hidden]
    for block in unet.down_blocks:
        for resnet in block.resnets:
            hidden = _resnet_forward(resnet, hidden, constants)
            skips.append(hidden)
        for downsampler in block.downsamplers or ():
            hidden = _conv(downsampler.conv, hidden, constants)
            skips.append(hidden)
    for resnet in unet.mid_block.resnets:
        hidden = _resnet_forward(resnet, hidden, constants)
    for block in unet.up_blocks:
        for resnet in block.resnets:
            hidden = _resnet_forward(resnet, torch.cat([hidden, skips.pop()], 1), constants)
        for upsampler in block.upsamplers or ():
            hidden = _conv(upsampler.conv, F.interpolate(hidden, scale_factor=2.0, mode="nearest"), constants)
    return _conv(unet.conv_out, F.silu(unet.conv_norm_out(hidden)), constants)

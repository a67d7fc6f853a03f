"""Typed model configuration, saved as ``config.json`` beside ``model.safetensors``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class FlexAvatarConfig:
    """Sizes of every part of :class:`~flexavatar.model.network.FlexAvatarModel`.

    ``cpu-s`` is the shipped default (crops 256², atlas 128² ≈ 10k Gaussians); ``gpu-l`` is the
    same code with crops 512² and atlas 256² (≈ 40k Gaussians); ``tiny`` is for tests.
    """

    name: str = "cpu-s"
    crop_size: int = 256  # input crops are crop_size² px
    atlas_resolution: int = 128  # UV atlas R (R² texels, ~60% valid)
    num_identity: int = 40  # ICT identity modes fitted and stored per avatar
    # image encoder (ViT)
    encoder_patch: int = 16
    encoder_dim: int = 192
    encoder_depth: int = 4
    encoder_heads: int = 3
    # structured head queries (one token per atlas patch)
    query_patch: int = 8
    query_dim: int = 192
    query_depth: int = 2
    query_heads: int = 3
    identity_channels: int = 16  # channels of the identity feature map F_id
    # deformer (diffusers UNet2DModel)
    deformer_channels: tuple[int, ...] = (16, 32, 64)
    deformer_downsample: int = 4  # the UNet runs at atlas_resolution / this; deltas upsampled back
    num_data_sources: int = 2  # bias sinks: 0 = multi-view, 1 = monocular
    # gaussian field
    scale_tangent: float = 0.6  # in-plane sigma as a fraction of the texel spacing
    scale_normal: float = 0.15  # sigma along the normal, same units
    offset_unit_m: float = 0.01  # one unit of predicted offset in metres
    init_opacity: float = 0.99
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS: dict[str, FlexAvatarConfig] = {
    "cpu-s": FlexAvatarConfig(),
    "gpu-l": FlexAvatarConfig(
        name="gpu-l",
        crop_size=512,
        atlas_resolution=256,
        encoder_patch=16,
        encoder_dim=384,
        encoder_depth=8,
        encoder_heads=6,
        query_patch=16,
        query_dim=384,
        query_depth=4,
        query_heads=6,
        identity_channels=32,
        deformer_channels=(64, 128, 192),
        deformer_downsample=1,
    ),
    # a test-sized network (crops 128², atlas 64²): the same code, seconds per hundred steps
    "tiny": FlexAvatarConfig(
        name="tiny", crop_size=128, atlas_resolution=64,
        encoder_dim=64, encoder_depth=1, encoder_heads=2,
        query_dim=64, query_depth=1, query_heads=2,
        identity_channels=8, deformer_channels=(8, 16), deformer_downsample=2,
    ),  # fmt: skip
}


def get_config(name: str) -> FlexAvatarConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown config '{name}'; choose one of {sorted(CONFIGS)}")
    return FlexAvatarConfig(**CONFIGS[name].to_dict())


def resolve_config(name_or_path: str, overrides: list[str] | None = None) -> FlexAvatarConfig:
    """A :class:`FlexAvatarConfig` from a config name (``cpu-s``, ``gpu-l``, ``tiny``: a
    test-sized network), a ``config.json`` path or a checkpoint folder, plus ``key=value`` overrides."""
    path = Path(name_or_path)
    if name_or_path not in CONFIGS and (path.is_dir() or path.suffix == ".json"):
        config = FlexAvatarConfig(**json.loads((path / "config.json" if path.is_dir() else path).read_text()))
    else:
        config = get_config(name_or_path)
    for item in overrides or []:
        key, _, value = item.partition("=")
        if not hasattr(config, key):
            raise ValueError(f"unknown config field '{key}'")
        setattr(config, key, type(getattr(config, key))(json.loads(value)))
    if isinstance(config.deformer_channels, list):
        config.deformer_channels = tuple(config.deformer_channels)
    return config

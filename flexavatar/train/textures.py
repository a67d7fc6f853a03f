"""Textures of the synthetic heads: a bank of real faces lifted onto the UV atlas, and their augmentation.

Texture bank: every photo in :data:`~flexavatar.train.TEXTURE_PHOTOS` (plus a few training
frames of the default video) is tracked (``fit_head``) and its pixels lifted onto the UV
atlas (:func:`flexavatar.model.evidence.uv_evidence`, the same lifting the network uses).
The bank is cached as ``.npz`` under ``$FLEXAVATAR_CACHE``.

Hair swatches: the same fit splits each photo's person mask into skin / hair / clothes
(:func:`flexavatar.model.hair.whole_head`, the split the network's carving uses); the colours
of its solid hair pixels, sorted by luminance, become a swatch of :data:`SWATCH_SIZE` quantiles
(the hair texture of :mod:`flexavatar.train.hairstyles`). A photo with too few hair pixels has
no swatch (``hair_found`` 0).

Augmentation (:class:`TextureAugmenter`): global brightness/contrast/hue/white-balance
jitter, skin-tone shift, lip and brow tints and a random hair colour on the scalp
(back-of-head chart and the face chart above a random hairline).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch

from flexavatar.assets import cache_dir
from flexavatar.head.atlas import REGION_INDEX
from flexavatar.images import read_image
from flexavatar.model.evidence import uv_evidence
from flexavatar.model.hair import MIN_HAIR_PIXELS, whole_head
from flexavatar.tracking.fit import fit_head
from flexavatar.train import DEFAULT_VIDEO, TEXTURE_PHOTOS, TEXTURE_VIDEO_FRAMES, media_dir
from flexavatar.video import iter_frames

BANK_VERSION = "3"
#: Luminance quantiles in a hair swatch.
SWATCH_SIZE = 32
HAIR_COLOURS = np.array(
    [[0.06, 0.05, 0.05], [0.15, 0.10, 0.07], [0.28, 0.18, 0.11], [0.45, 0.32, 0.20], [0.70, 0.58, 0.38],
     [0.55, 0.25, 0.12], [0.60, 0.60, 0.60], [0.85, 0.83, 0.80]], dtype=np.float32)  # fmt: skip
LIP_COLOURS = np.array([[0.70, 0.35, 0.38], [0.55, 0.28, 0.28], [0.78, 0.45, 0.45], [0.45, 0.25, 0.22],
                        [0.62, 0.18, 0.25]], dtype=np.float32)  # fmt: skip


# ----------------------------------------------------------------------------------- texture bank
def default_texture_sources() -> list[tuple[str, object]]:
    """(name, path or (video, frame)) of the real faces the bank lifts from (training data only)."""
    media = media_dir()
    sources: list[tuple[str, object]] = []
    for name in TEXTURE_PHOTOS:
        if (media / name).is_file():
            sources.append((name, media / name))
    video = media / DEFAULT_VIDEO.name
    if video.is_file():
        for frame in TEXTURE_VIDEO_FRAMES:
            sources.append((f"{video.name}#{frame}", (video, frame)))
    return sources


def _load_source(source) -> np.ndarray:
    if isinstance(source, tuple):
        video, frame = source
        for index, image in enumerate(iter_frames(video, max_frames=frame + 1)):
            if index == frame:
                return image
        raise ValueError(f"{video} has no frame {frame}")
    return read_image(source)


def build_texture_bank(
    head, atlas, crop_size: int = 256, sources=None, cache: bool = True
) -> dict[str, np.ndarray]:
    """Lift real faces onto the atlas: {"colour": [M,3,R,R] float32, "coverage": [M,1,R,R],
    "hair": [M,Q,3] hair swatch (colours sorted by luminance), "hair_found": [M] 0/1, "names"}.

    Cached under ``$FLEXAVATAR_CACHE`` by atlas resolution, crop size and the source files.
    A source whose face cannot be tracked is skipped.
    """
    sources = default_texture_sources() if sources is None else list(sources)
    if not sources:
        raise FileNotFoundError(f"no real faces to build a texture bank from (looked in {media_dir()})")
    key = hashlib.sha1(repr((BANK_VERSION, atlas.resolution, crop_size, head.num_identity)).encode())
    for name, source in sources:
        path = Path(source[0] if isinstance(source, tuple) else source)
        key.update(f"{name}:{path.stat().st_size}".encode())
    cache_path = cache_dir() / f"texture_bank_{key.hexdigest()[:12]}.npz"
    if cache and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    colours, coverages, swatches, found, names = [], [], [], [], []
    for name, source in sources:
        try:
            fit = fit_head(
                [_load_source(source)], resolution=crop_size, num_identity=head.num_identity, names=[name]
            )
        except Exception as exc:  # noqa: BLE001 - a photo the tracker rejects is just left out
            print(f"texture bank: skipping {name}: {exc}")
            continue
        crops = torch.from_numpy(np.stack([c.masked for c in fit.crops])).permute(0, 3, 1, 2).float() / 255
        masks = torch.from_numpy(np.stack([c.mask for c in fit.crops]))[:, None].float()
        with torch.no_grad():
            vertices = head.vertices(fit.identity[None].expand(len(crops), -1), fit.expressions)
            viewmats = torch.stack([c.viewmat for c in fit.cameras])
            Ks = torch.stack([c.K for c in fit.cameras])
            evidence, _ = uv_evidence(atlas, vertices, crops, masks, viewmats, Ks)
            neutral = head.vertices(fit.identity[None])
            parts = whole_head(
                atlas, head.landmarks_multipie68, neutral, vertices, crops, masks, viewmats, Ks
            ).parts
        swatch, has_hair = hair_swatch(crops, parts.hair)
        colours.append(evidence[:3].numpy())
        coverages.append(evidence[3:].numpy())
        swatches.append(swatch)
        found.append(has_hair)
        names.append(name)
    if not colours:
        raise RuntimeError("no face could be tracked in any texture source")
    bank = {"colour": np.stack(colours).astype(np.float32), "coverage": np.stack(coverages).astype(np.float32),
            "hair": np.stack(swatches).astype(np.float32), "hair_found": np.array(found, np.float32),
            "names": np.array(names)}  # fmt: skip
    if cache:
        tmp = cache_path.with_name(cache_path.name + ".tmp.npz")
        np.savez_compressed(tmp, **bank)
        tmp.replace(cache_path)
    return bank


def hair_swatch(crops: torch.Tensor, hair: torch.Tensor, size: int = SWATCH_SIZE) -> tuple[np.ndarray, bool]:
    """Swatch [size,3] of the solid hair pixels (hair [V,1,S,S] > 0.9) of crops [V,3,S,S]: the mean
    colour of each of ``size`` luminance bins (equal pixel counts), dark to light, between the
    5% and 90% luminance quantiles (rim pixels mixed with the background and specular glints
    left out); and whether there were at least MIN_HAIR_PIXELS of them (else the swatch is a
    flat dark brown)."""
    pixels = crops.permute(0, 2, 3, 1).reshape(-1, 3)[hair.reshape(-1) > 0.9].numpy()
    if len(pixels) < max(MIN_HAIR_PIXELS, size):
        return np.tile(HAIR_COLOURS[1], (size, 1)), False
    pixels = pixels[np.argsort(pixels.mean(1), kind="stable")]
    pixels = pixels[int(0.05 * len(pixels)) : int(0.9 * len(pixels))]
    bins = np.array_split(pixels, size)
    return np.stack([b.mean(0) for b in bins]), True


# ----------------------------------------------------------------------------------- augmentation
class TextureAugmenter:
    """Per-texel region masks of the atlas and the colour augmentations that use them."""

    def __init__(self, head, atlas):
        with torch.no_grad():
            neutral = head.vertices()
            points = atlas.surface_points(neutral)[0].cpu().numpy()  # [N,3] m
            landmarks = neutral[0, head.landmarks_multipie68].cpu().numpy()  # [68,3]
        region = atlas.region.cpu().numpy()
        face = region == REGION_INDEX["face"]
        back = region == REGION_INDEX["back_head"]
        self.points = points
        self.face, self.back = face, back
        self.skin = face | back
        front = points[:, 2] > landmarks[:, 2].min() - 0.01
        # lips: inside the ellipse of the outer lip contour (landmarks 48-59), frontal texels
        lips = landmarks[48:60]
        centre = lips.mean(0)
        half_w = (lips[:, 0].max() - lips[:, 0].min()) / 2 * 1.05
        half_h = (lips[:, 1].max() - lips[:, 1].min()) / 2 * 1.1
        ell = ((points[:, 0] - centre[0]) / half_w) ** 2 + ((points[:, 1] - centre[1]) / half_h) ** 2
        self.lips = (face & front & (ell < 1.0)).astype(np.float32)
        # brows: near the brow polylines (landmarks 17-21, 22-26) in the frontal projection
        brows = landmarks[17:27, :2] - np.array([0.0, 0.004])  # the landmarks sit on the brows' upper edge
        dist = np.min(np.linalg.norm(points[:, None, :2] - brows[None], axis=-1), axis=1)
        self.brows = (face & front & (dist < 0.007)).astype(np.float32)
        self.brow_top = float(landmarks[17:27, 1].max())
        self.ear_level = float(landmarks[36:48, 1].mean())  # eye height
        self.num_texels = atlas.num_texels

    def hair_mask(self, rng) -> np.ndarray:
        """[N] soft hair coverage: scalp above a random hairline, front and back."""
        x, y, z = self.points.T
        front_line = self.brow_top + rng.uniform(0.025, 0.06)
        back_line = self.ear_level + rng.uniform(-0.02, 0.03)
        soft = 0.006
        front = self.face / (1 + np.exp(-(y - front_line) / soft))
        back = self.back / (1 + np.exp(-(y - back_line) / soft))
        # behind the ears the hairline drops toward the nape
        back = np.maximum(back, self.back * (z < -0.02) / (1 + np.exp(-(y - back_line + 0.04) / soft)))
        return np.clip(front + back, 0, 1).astype(np.float32)

    def __call__(self, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """colour [N,3] per-texel in [0,1] -> augmented copy."""
        out = colour.copy()
        # skin tone shift (face + head/neck)
        skin_gain = np.exp(rng.normal(0, 0.12)) * np.exp(rng.normal(0, 0.04, 3))
        out[self.skin] = out[self.skin] * skin_gain
        # lips
        if rng.random() < 0.7:
            lip = LIP_COLOURS[rng.integers(len(LIP_COLOURS))] * np.exp(rng.normal(0, 0.1))
            strength = rng.uniform(0.1, 0.6) * self.lips[:, None]
            out = out * (1 - strength) + lip * strength
        # hair on the scalp, brows to match (or independent)
        hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * np.exp(rng.normal(0, 0.1, 3))
        hair = np.clip(hair, 0, 1)
        if rng.random() < 0.85:
            coverage = self.hair_mask(rng)[:, None] * rng.uniform(0.7, 1.0)
            streaks = 1 + 0.08 * np.sin(self.points[:, :1] * rng.uniform(150, 400) + rng.uniform(0, 6))
            out = out * (1 - coverage) + np.clip(hair * streaks, 0, 1) * coverage
        if rng.random() < 0.6:
            brow = hair * rng.uniform(0.5, 1.0) if rng.random() < 0.7 else np.full(3, rng.uniform(0.05, 0.3))
            strength = rng.uniform(0.2, 0.7) * self.brows[:, None]
            out = out * (1 - strength) + brow * strength
        # global lighting / white balance / contrast / hue
        mean = out.mean(0, keepdims=True)
        out = (out - mean) * rng.uniform(0.8, 1.2) + mean
        out = out * rng.uniform(0.8, 1.2) * np.exp(rng.normal(0, 0.05, 3))
        out = _hue_rotate(out, math.radians(rng.uniform(-12, 12)))
        out = out + rng.normal(0, 0.01, out.shape)
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def _hue_rotate(rgb: np.ndarray, angle: float) -> np.ndarray:
    """Rotate the hue of [N,3] RGB by ``angle`` radians (rotation about the grey axis)."""
    c, s = math.cos(angle), math.sin(angle)
    k = 1.0 / math.sqrt(3.0)
    axis = np.array([k, k, k])
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = c * np.eye(3) + s * cross + (1 - c) * np.outer(axis, axis)
    return rgb @ rotation.T

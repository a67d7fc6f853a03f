"""Synthetic multi-view data (class 0): ICT heads with textures lifted from real photos.

Texture bank: every photo in :data:`~flexavatar.train.TEXTURE_PHOTOS` (plus a few training
frames of the default video) is tracked (``fit_head``) and its pixels lifted onto the UV
atlas (:func:`flexavatar.model.evidence.uv_evidence`, the same lifting the network uses).
The bank is cached as ``.npz`` under ``$FLEXAVATAR_CACHE``.

A sample (deterministic in its seed): identity ~ N(0, 0.8²) on the first K modes; sparse
random expressions (jawOpen often, blinks sometimes); a bank texture with global
brightness/contrast/hue/white-balance jitter, skin-tone shift, lip and brow tints and a
random hair colour on the scalp (back-of-head chart and the face chart above a random
hairline); cameras: ``num_inputs`` frontal-ish views (azimuth ±30°, elevation ±15°) framed
like the real head crops, ``num_targets`` views anywhere on the sphere (back included). The
ground truth is rendered from the template Gaussians (no network involved): colour =
texture, every other attribute at its template value; alpha is the mask.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch

from flexavatar.assets import cache_dir
from flexavatar.camera import Camera, intrinsics, look_at
from flexavatar.head.blendshapes import EXPRESSION_INDEX, ICT_EXPRESSION_NAMES, NUM_EXPRESSIONS
from flexavatar.train import (
    DEFAULT_VIDEO,
    MULTI_VIEW,
    TEXTURE_PHOTOS,
    TEXTURE_VIDEO_FRAMES,
    TrainingSample,
    media_dir,
)

BANK_VERSION = "1"
IDENTITY_STD = 0.8
#: Crops span this many metres at the face (tracking.crop: 34 cm), jittered ±10%.
CROP_SPAN_M = 0.34
CROP_CENTRE_LIFT_M = 0.015
INPUT_AZIMUTH_DEG = 30.0
INPUT_ELEVATION_DEG = 15.0
DISTANCE_RANGE_M = (0.6, 0.9)
#: Blendshapes the random expressions draw from (PupilDilate never shows).
_EXPRESSION_POOL = [i for i, n in enumerate(ICT_EXPRESSION_NAMES) if not n.startswith("PupilDilate")]
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
    from flexavatar.video import iter_frames, read_image

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
    """Lift real faces onto the atlas: {"colour": [M,3,R,R] float32, "coverage": [M,1,R,R], "names"}.

    Cached under ``$FLEXAVATAR_CACHE`` by atlas resolution, crop size and the source files.
    A source whose face cannot be tracked is skipped.
    """
    from flexavatar.model.evidence import uv_evidence
    from flexavatar.tracking.fit import fit_head

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
    colours, coverages, names = [], [], []
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
            evidence = uv_evidence(atlas, vertices, crops, masks, viewmats, Ks)
        colours.append(evidence[:3].numpy())
        coverages.append(evidence[3:].numpy())
        names.append(name)
    if not colours:
        raise RuntimeError("no face could be tracked in any texture source")
    bank = {"colour": np.stack(colours).astype(np.float32), "coverage": np.stack(coverages).astype(np.float32),
            "names": np.array(names)}  # fmt: skip
    if cache:
        tmp = cache_path.with_name(cache_path.name + ".tmp.npz")
        np.savez_compressed(tmp, **bank)
        tmp.replace(cache_path)
    return bank


# ----------------------------------------------------------------------------------- randomness
def random_identity(rng: np.random.Generator, num_identity: int) -> np.ndarray:
    return (rng.standard_normal(num_identity) * IDENTITY_STD).astype(np.float32)


def _partner(index: int) -> int | None:
    name = ICT_EXPRESSION_NAMES[index]
    for a, b in (("_L", "_R"), ("_R", "_L")):
        if name.endswith(a):
            return EXPRESSION_INDEX.get(name[: -len(a)] + b)
    return None


def random_expression(rng: np.random.Generator) -> np.ndarray:
    """Sparse activations of a few blendshapes in [0,1]; jawOpen often, blinks sometimes."""
    code = np.zeros(NUM_EXPRESSIONS, dtype=np.float32)
    if rng.random() < 0.15:  # neutral now and then
        return code
    count = int(rng.integers(1, 5))
    for index in rng.choice(_EXPRESSION_POOL, size=count, replace=False):
        value = rng.uniform(0.2, 1.0)
        if ICT_EXPRESSION_NAMES[index].startswith("eyeLook"):
            value *= 0.6
        code[index] = value
        partner = _partner(int(index))
        if partner is not None and rng.random() < 0.6:  # mostly symmetric
            code[partner] = np.clip(value + rng.normal(0, 0.1), 0, 1)
    if rng.random() < 0.5:
        code[EXPRESSION_INDEX["jawOpen"]] = rng.uniform(0.0, 1.0)
    if rng.random() < 0.15:
        blink = rng.uniform(0.5, 1.0)
        code[EXPRESSION_INDEX["eyeBlink_L"]] = blink
        code[EXPRESSION_INDEX["eyeBlink_R"]] = np.clip(blink + rng.normal(0, 0.05), 0, 1)
    for a, b in (("jawLeft", "jawRight"), ("mouthLeft", "mouthRight")):  # opposite directions
        if code[EXPRESSION_INDEX[a]] > 0 and code[EXPRESSION_INDEX[b]] > 0:
            code[EXPRESSION_INDEX[b if rng.random() < 0.5 else a]] = 0
    return code


def random_camera(rng, centre: torch.Tensor, size: int, frontal: bool) -> Camera:
    """A camera looking at the head, framed like the real crops (the head fills the image)."""
    if frontal:
        azimuth = rng.uniform(-INPUT_AZIMUTH_DEG, INPUT_AZIMUTH_DEG)
        elevation = rng.uniform(-INPUT_ELEVATION_DEG, INPUT_ELEVATION_DEG)
    else:
        azimuth = rng.uniform(-180.0, 180.0)
        elevation = math.degrees(math.asin(rng.uniform(-0.5, 0.8)))  # -30°..53°, uniform on the sphere band
    distance = rng.uniform(*DISTANCE_RANGE_M)
    span = CROP_SPAN_M * rng.uniform(0.9, 1.1)
    focal = 0.5 * size * distance / (0.5 * span)
    az, el = math.radians(azimuth), math.radians(elevation)
    target = (
        centre
        + torch.tensor([0.0, CROP_CENTRE_LIFT_M, 0.0])
        + torch.from_numpy(rng.normal(0, 0.006, 3)).float()
    )
    direction = torch.tensor([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
    viewmat = look_at(target + distance * direction, target)
    roll = math.radians(rng.normal(0, 4.0))
    roll_matrix = torch.eye(4)
    roll_matrix[:2, :2] = torch.tensor([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
    return Camera(roll_matrix @ viewmat, intrinsics(focal, size, size), size, size)


# ----------------------------------------------------------------------------------- textures
class TextureAugmenter:
    """Per-texel region masks of the atlas and the colour augmentations that use them."""

    def __init__(self, head, atlas):
        with torch.no_grad():
            neutral = head.vertices()
            points = atlas.surface_points(neutral)[0].cpu().numpy()  # [N,3] m
            landmarks = neutral[0, head.landmarks_multipie68].cpu().numpy()  # [68,3]
        region = atlas.region.cpu().numpy()
        from flexavatar.head.atlas import REGION_INDEX

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


# ----------------------------------------------------------------------------------- rendering
def template_attributes(model, texture: torch.Tensor) -> torch.Tensor:
    """[1,N,14] per-texel attributes of the ground-truth head: colour = texture [N,3], rest template."""
    from flexavatar.model.field import ATTRIBUTE_SLICES, NUM_ATTRIBUTES

    attributes = torch.zeros(1, model.atlas.num_texels, NUM_ATTRIBUTES, device=texture.device)
    attributes[..., ATTRIBUTE_SLICES["colour"]] = texture
    return attributes


@torch.no_grad()
def render_template(model, texture, identity, expressions, cameras, background=(1.0, 1.0, 1.0)):
    """Render the template Gaussians (no network) coloured by ``texture`` [N,3]: frame b at
    expressions[b] from cameras[b]. Returns rgb [B,3,S,S] and alpha [B,1,S,S]."""
    from flexavatar.camera import stack_cameras
    from flexavatar.model.field import gaussians_from_attributes
    from flexavatar.render import rasterize

    device = model.device
    identity, expressions, texture = identity.to(device), expressions.to(device), texture.to(device)
    vertices = model.head.vertices(identity[None].expand(len(expressions), -1), expressions)
    cfg = model.config
    attributes = template_attributes(model, texture).expand(len(expressions), -1, -1)
    spacing = model.spacing(model.head.vertices(identity[None]))
    gaussians = gaussians_from_attributes(model.atlas, vertices, attributes, spacing,
                                          cfg.scale_tangent, cfg.scale_normal, cfg.offset_unit_m,
                                          cfg.init_opacity)  # fmt: skip
    viewmats, Ks = stack_cameras([c.to(device) for c in cameras])
    bg = torch.tensor(background, dtype=torch.float32, device=device)
    rgbs, alphas = [], []
    for b in range(len(expressions)):
        rgb, alpha, _ = rasterize(gaussians["means"][b], gaussians["quats"][b], gaussians["scales"][b],
                                  gaussians["opacities"][b], gaussians["colors"][b], viewmats[b : b + 1],
                                  Ks[b : b + 1], cameras[b].width, cameras[b].height, background=bg)  # fmt: skip
        rgbs.append(rgb[0])
        alphas.append(alpha[0])
    return torch.stack(rgbs).permute(0, 3, 1, 2).contiguous(), torch.stack(alphas).permute(
        0, 3, 1, 2
    ).contiguous()


# ----------------------------------------------------------------------------------- the dataset
class SyntheticHeads:
    """Synthetic multi-view samples, ``sample(seed)`` deterministic in ``seed`` (class 0).

    model: the network being trained (only its head, atlas and config are used: the ground
    truth never depends on the weights). ``bank``: a texture bank (default: built/cached from
    the real faces at hand). ``pool``: if set, ``sample(seed)`` uses ``seed % pool`` and keeps
    the samples in memory (a small fixed set, e.g. to overfit in a test).
    """

    def __init__(self, model, bank: dict | None = None, num_inputs: int = 1, num_targets: int = 2,
                 pool: int | None = None, mouth_weight: float = 3.0):  # fmt: skip
        self.model = model
        self.size = model.config.crop_size
        self.num_identity = model.config.num_identity
        if bank is None:
            bank = build_texture_bank(model.head, model.atlas, self.size)
        atlas = model.atlas
        self.textures = (
            atlas.gather(torch.from_numpy(bank["colour"]).to(atlas.mask.device)).cpu().numpy()
        )  # [M,N,3]
        self.bank_names = [str(n) for n in bank["names"]]
        self.augment = TextureAugmenter(model.head, atlas)
        self.num_inputs, self.num_targets = num_inputs, num_targets
        self.pool = pool
        self.mouth_weight = mouth_weight
        self._cache: dict[int, TrainingSample] = {}
        self.centre = model.head.head_centre().cpu()

    def __len__(self) -> int:
        return self.pool or 2**31

    def __getitem__(self, seed: int) -> TrainingSample:
        return self.sample(seed)

    def sample(self, seed: int) -> TrainingSample:
        if self.pool:
            seed = int(seed) % self.pool
            if seed in self._cache:
                return self._cache[seed]
        sample = self._make(seed)
        if self.pool:
            self._cache[seed] = sample
        return sample

    def _make(self, seed: int) -> TrainingSample:
        from flexavatar.train.losses import mouth_weight_map

        rng = np.random.default_rng([int(seed), 7013])
        identity = torch.from_numpy(random_identity(rng, self.num_identity))
        texture_id = int(rng.integers(len(self.textures)))
        texture = torch.from_numpy(self.augment(self.textures[texture_id], rng))
        input_expr = random_expression(rng)
        inputs = [
            input_expr if rng.random() < 0.7 else random_expression(rng) for _ in range(self.num_inputs)
        ]
        targets = [
            input_expr if rng.random() < 0.25 else random_expression(rng) for _ in range(self.num_targets)
        ]
        input_cams = [
            random_camera(rng, self.centre, self.size, frontal=True) for _ in range(self.num_inputs)
        ]
        target_cams = [
            random_camera(rng, self.centre, self.size, frontal=False) for _ in range(self.num_targets)
        ]
        # one render call for inputs and targets
        expressions = torch.from_numpy(np.stack(inputs + targets))
        rgb, alpha = render_template(self.model, texture, identity, expressions, input_cams + target_cams)
        rgb, alpha = rgb.cpu(), alpha.cpu()
        v = self.num_inputs
        target_expr = expressions[v:]
        weight = mouth_weight_map(self.model.head, identity, target_expr, target_cams, self.mouth_weight)
        return TrainingSample(
            images=rgb[:v], masks=alpha[:v], cameras=input_cams, identity=identity, expressions=expressions[:v],
            target_images=rgb[v:], target_cameras=target_cams, target_expressions=target_expr,
            loss_region=torch.ones_like(alpha[v:]), pixel_weight=weight, data_source=MULTI_VIEW,
            info={"seed": int(seed), "texture": self.bank_names[texture_id]},
        )  # fmt: skip

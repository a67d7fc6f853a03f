"""Synthetic multi-view data (class 0): ICT heads with textures lifted from real photos.

A sample (deterministic in its seed): identity ~ N(0, 0.8²) on the first K modes; sparse
random expressions (jawOpen often, blinks sometimes); a texture from the bank, augmented
(:mod:`flexavatar.train.textures`); cameras: ``num_inputs`` frontal-ish views (azimuth ±30°,
elevation ±15°) framed like the real head crops, ``num_targets`` views anywhere on the sphere
(back included). Each head gets a random hair volume (:mod:`flexavatar.train.hairstyles`:
bald, short, bob or long, fringe or not) textured from a hair swatch of a real photo (recoloured
half the time). The ground truth is rendered from the template Gaussians (no network involved)
lifted onto that hair shell by :func:`flexavatar.model.hair.shell_maps`, the parametrisation the
network's base uses: colour = texture (hair where the style covers), offsets and scales from the
hair heights, every other attribute at its template value; alpha is the input mask (plus a
shirt in the inputs, :func:`add_shirt`, when the head wears one: the skin under its collar is
cut from every render, :func:`~flexavatar.train.hairstyles.collar_cut`). The network
then carves its own hull from those inputs (``encode``, as at inference) and learns to complete
what the carving misses; the loss covers every pixel of the targets, back views included.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flexavatar.camera import Camera, intrinsics, look_at, stack_cameras
from flexavatar.head.blendshapes import EXPRESSION_INDEX, ICT_EXPRESSION_NAMES, NUM_EXPRESSIONS
from flexavatar.model.field import ATTRIBUTE_SLICES, NUM_ATTRIBUTES, gaussians_from_attributes
from flexavatar.model.hair import WholeHead, shell_maps
from flexavatar.render import rasterize
from flexavatar.train import MULTI_VIEW, TrainingSample
from flexavatar.train.hairstyles import (
    SHIRT_PROBABILITY,
    HairGeometry,
    collar_cut,
    hair_shape,
    hair_texture,
    random_hairstyle,
)
from flexavatar.train.losses import mouth_weight_map
from flexavatar.train.textures import HAIR_COLOURS, TextureAugmenter, build_texture_bank

IDENTITY_STD = 0.8
#: Crops span this many metres at the face (tracking.crop: 34 cm), jittered ±10%.
CROP_SPAN_M = 0.34
CROP_CENTRE_LIFT_M = 0.015
INPUT_AZIMUTH_DEG = 30.0
INPUT_ELEVATION_DEG = 15.0
DISTANCE_RANGE_M = (0.6, 0.9)
#: Blendshapes the random expressions draw from (PupilDilate never shows).
_EXPRESSION_POOL = [i for i, n in enumerate(ICT_EXPRESSION_NAMES) if not n.startswith("PupilDilate")]


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


# ----------------------------------------------------------------------------------- hair colour
def random_swatch(swatches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hair swatch [Q,3] from a real photo's (swatches [M,Q,3]), recoloured to a palette colour
    half the time (its light/dark texture kept), brightness jittered."""
    swatch = swatches[int(rng.integers(len(swatches)))]
    if rng.random() < 0.5:
        target = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
        swatch = swatch * (target / np.clip(swatch.mean(0), 0.02, None))
    return np.clip(swatch * np.exp(rng.normal(0, 0.1)), 0, 1)


def add_shirt(images: torch.Tensor, masks: torch.Tensor, collar_px: torch.Tensor, rng: np.random.Generator,
              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A shirt behind the head of each input view: images [V,3,S,S] (head on white) and masks
    [V,1,S,S] (its alpha); collar_px [V,M,2] pixels of the neck at the collar's height. Below
    the collar's row a trapezoid widens to the shoulders; it takes a random colour (dark half
    the time) with soft folds, under the head (hair hanging over it stays in front). Returns
    the new images and person masks (head + shirt)."""
    num_views, _, size, _ = images.shape
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]
    if rng.random() < 0.5:
        colour = np.full(3, rng.uniform(0.02, 0.2)) * np.exp(rng.normal(0, 0.1, 3))
    else:
        colour = rng.uniform(0.05, 0.9, 3)
    colour = torch.from_numpy(np.clip(colour, 0, 1)).float()[:, None, None]
    slope, folds, phase = rng.uniform(1.0, 3.0), rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi)
    out_images, out_masks = [], []
    for view in range(num_views):  # 1-4 views
        x, y = collar_px[view, :, 0], collar_px[view, :, 1]
        top, centre, half = float(y.median()), float(x.mean()), float((x.max() - x.min()) / 2) * 1.1
        shirt = ((rows >= top) & ((cols - centre).abs() <= half + (rows - top).clamp_min(0) * slope)).float()
        shade = 1 + 0.12 * torch.sin(cols * folds + rows * 0.03 + phase)
        behind = shirt * (1 - masks[view])
        out_images.append(images[view] + behind * (colour * shade - 1.0).clamp(-1, 0))
        out_masks.append(masks[view] + behind)
    return torch.stack(out_images).clamp(0, 1), torch.stack(out_masks).clamp(0, 1)


# ----------------------------------------------------------------------------------- rendering
def template_attributes(model, texture: torch.Tensor, shape: WholeHead | None = None,
                        spacing: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """[1,N,14] per-texel attributes of the ground-truth head: colour = texture [N,3]; offsets and
    scales of the hair shell of ``shape`` (:func:`~flexavatar.model.hair.shell_maps`, spacing [N]
    metres of this head), the rest at the template's values."""
    atlas, cfg = model.atlas, model.config
    if shape is None:
        base = torch.zeros(1, NUM_ATTRIBUTES, atlas.resolution, atlas.resolution, device=texture.device)
    else:
        base = shell_maps(atlas, shape, spacing, cfg.scale_normal, cfg.offset_unit_m)[None]
    attributes = atlas.gather(base).clone()
    attributes[..., ATTRIBUTE_SLICES["colour"]] = texture
    return attributes


@torch.no_grad()
def render_template(model, texture, identity, expressions, cameras, background=(1.0, 1.0, 1.0),
                    shape: WholeHead | None = None):  # fmt: skip
    """Render the template Gaussians (no network) coloured by ``texture`` [N,3] and lifted onto
    the hair shell of ``shape`` (none: bald): frame b at expressions[b] from cameras[b].
    Returns rgb [B,3,S,S] and alpha [B,1,S,S]."""
    device = model.device
    identity, expressions, texture = identity.to(device), expressions.to(device), texture.to(device)
    vertices = model.head.vertices(identity[None].expand(len(expressions), -1), expressions)
    cfg = model.config
    spacing = model.spacing(model.head.vertices(identity[None]))
    attributes = template_attributes(model, texture, shape, spacing).expand(len(expressions), -1, -1)
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
        self.hair_geometry = HairGeometry(model.head, atlas)
        found = np.asarray(bank.get("hair_found", []), bool)
        # banks without a usable swatch (no hair in any photo) fall back to flat palette colours
        self.swatches = (np.asarray(bank["hair"])[found] if found.any()
                         else np.linspace(0.7, 1.3, 32)[None, :, None] * HAIR_COLOURS[:, None])  # fmt: skip
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
        rng = np.random.default_rng([int(seed), 7013])
        identity = torch.from_numpy(random_identity(rng, self.num_identity))
        texture_id = int(rng.integers(len(self.textures)))
        texture = self.augment(self.textures[texture_id], rng)
        hairstyle = random_hairstyle(self.hair_geometry, rng)
        hair_rgb = hair_texture(self.hair_geometry.canonical, random_swatch(self.swatches, rng), rng)
        coverage = hairstyle.coverage[:, None]
        texture = torch.from_numpy((texture * (1 - coverage) + hair_rgb * coverage).astype(np.float32))
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
        shirt = rng.random() < SHIRT_PROBABILITY
        cut, collar_y = collar_cut(self.hair_geometry, hairstyle.heights, rng) if shirt else (None, 0.0)
        # one render call for inputs and targets
        expressions = torch.from_numpy(np.stack(inputs + targets))
        rgb, alpha = render_template(self.model, texture, identity, expressions, input_cams + target_cams,
                                     shape=hair_shape(hairstyle, self.model.device, cut))  # fmt: skip
        rgb, alpha = rgb.cpu(), alpha.cpu()
        v = self.num_inputs
        masks = alpha[:v]
        if shirt:  # in the inputs only: the avatar has no clothes
            canonical_y = torch.from_numpy(self.hair_geometry.canonical[:, 1])
            band = (
                torch.from_numpy(self.hair_geometry.skin)
                & (canonical_y < collar_y)
                & (canonical_y > collar_y - 0.01)
            )
            with torch.no_grad():
                vertices = self.model.head.vertices(identity[None].expand(v, -1).to(self.model.device),
                                                    expressions[:v].to(self.model.device))  # fmt: skip
                points = self.model.atlas.surface_points(vertices)[:, band.to(self.model.device)].cpu()
            collar_px = torch.stack([camera.project(p) for camera, p in zip(input_cams, points)])
            images, masks = add_shirt(rgb[:v], masks, collar_px, rng)
            rgb = torch.cat([images, rgb[v:]])
        target_expr = expressions[v:]
        weight = mouth_weight_map(self.model.head, identity, target_expr, target_cams, self.mouth_weight)
        return TrainingSample(
            images=rgb[:v], masks=masks, cameras=input_cams, identity=identity, expressions=expressions[:v],
            target_images=rgb[v:], target_cameras=target_cams, target_expressions=target_expr,
            loss_region=torch.ones_like(alpha[v:]), pixel_weight=weight, data_source=MULTI_VIEW,
            info={"seed": int(seed), "texture": self.bank_names[texture_id], "hairstyle": hairstyle.style,
                  "hair_heights": hairstyle.heights, "shirt": shirt, "cut": cut},  # fmt: skip
        )  # fmt: skip

"""Random hair volumes for the synthetic heads: a height map over the back-of-head chart and its texture.

A hairstyle (:func:`random_hairstyle`, deterministic in its generator) is a per-texel height
[N] metres along the surface normal, exactly the quantity :mod:`flexavatar.model.hair` carves
from silhouettes, so :func:`~flexavatar.model.hair.shell_maps` turns both into Gaussians the
same way: the ground truth and the network's base use one parametrisation. Styles (canonical
neutral-head coordinates, metres, +y up):

* **bald** (or buzz cut): no height;
* **short**: a cap of 0.4-1.5 cm down to about ear level at the back;
* **bob**: 1-3 cm, growing outward toward a bottom edge between the upper lip and the chin;
* **long**: 1-3.5 cm at the crown, flaring to 2.5-8.5 cm as it falls beside the neck to the shoulders;

each with a smooth random bottom edge and smooth multiplicative volume noise (sums of random
3D sinusoids of the surface point: no seams between UV charts), and with or without a fringe
over the forehead (a thin lifted layer of the face chart above the brows).

Clothes (:func:`collar_cut`): most heads wear a shirt: the skin below a random collar is cut
from the head (transparent, as the carving cuts a real neck below the collar: the avatar has
no clothes), and the inputs show a shirt there that is in their person masks but in no
target (:func:`flexavatar.train.synthetic.add_shirt`), so the network learns to leave clothes
alone, whatever their colour, while hair that hangs over them stays.

Hair texture (:func:`hair_texture`): strands run down from the crown, so the pattern varies
quickly around the head and slowly along it; each texel takes a luminance quantile of a hair
swatch (the colours of the hair pixels of a real photo, :mod:`flexavatar.train.textures`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from flexavatar.head.atlas import REGION_INDEX
from flexavatar.model.hair import BROWS, HAIR_FRONT_Z_M, MAX_HEIGHT_M, WholeHead

STYLES = ("bald", "short", "bob", "long")
#: Probability of each style, in STYLES order.
STYLE_WEIGHTS = (0.12, 0.3, 0.28, 0.3)
#: Softness of the hair's bottom edge and of the fringe's edge, metres.
EDGE_SOFTNESS_M = 0.006
#: Share of heads with a shirt, and how far below the chin its collar is (metres).
SHIRT_PROBABILITY = 0.7
COLLAR_BELOW_CHIN_M = (0.01, 0.05)
#: A texel lifted less than this (metres) is skin, and is cut below the collar.
BARE_HEIGHT_M = 0.002


@dataclass
class Hairstyle:
    """One random hair volume: heights [N] metres along the normals (0 = bare surface) and
    coverage [N] in [0,1] (where the surface shows hair colour: the lifted texels plus a thin
    hairline on the forehead); style: one of :data:`STYLES`."""

    heights: np.ndarray
    coverage: np.ndarray
    style: str


class HairGeometry:
    """The neutral template's texel points and landmark heights the hairstyles are built from.

    canonical [N,3] metres; chart [N] bool: the back-of-head texels hair may grow on (the same
    chart :func:`flexavatar.model.hair.whole_head` carves: behind the ears or above the brows);
    face [N] bool: the face chart (fringe).
    """

    def __init__(self, head, atlas):
        with torch.no_grad():
            neutral = head.vertices()
            self.canonical = atlas.surface_points(neutral)[0].cpu().numpy()
            landmarks = neutral[0, head.landmarks_multipie68].cpu().numpy()
        region = atlas.region.cpu().numpy()
        x, y, z = self.canonical.T
        self.brow_y = float(landmarks[list(BROWS), 1].mean())
        self.eye_y = float(landmarks[36:48, 1].mean())
        self.lip_y = float(landmarks[51, 1])
        self.chin_y = float(landmarks[8, 1])
        self.top_y = float(y.max())
        self.bottom_y = float(y[region == REGION_INDEX["back_head"]].min())
        front = (z > HAIR_FRONT_Z_M) & (y < self.brow_y)
        self.chart = (region == REGION_INDEX["back_head"]) & ~front
        self.face = region == REGION_INDEX["face"]
        self.skin = self.face | (region == REGION_INDEX["back_head"])
        self.num_texels = len(y)


def smooth_noise(
    points: np.ndarray, rng: np.random.Generator, wavelength_m: float, waves: int = 4
) -> np.ndarray:
    """[N] smooth noise of unit variance over points [N,3] metres: random 3D sinusoids of about
    ``wavelength_m`` (smooth across UV seams: a function of the surface point, not of UV)."""
    directions = rng.standard_normal((waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = 2 * math.pi / (wavelength_m * rng.uniform(0.7, 1.4, waves))
    phases = rng.uniform(0, 2 * math.pi, waves)
    return (np.sin(points @ (directions * frequencies[:, None]).T + phases) * math.sqrt(2 / waves)).sum(1)


def _sigmoid(value: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(value, -40, 40)))


def random_hairstyle(geometry: HairGeometry, rng: np.random.Generator, style: str | None = None) -> Hairstyle:
    """A random hair volume on the template (see the module docstring); ``style`` forces one."""
    style = style or str(rng.choice(STYLES, p=STYLE_WEIGHTS))
    points = geometry.canonical
    x, y, z = points.T
    g = geometry
    if style == "bald":
        # (the texture augmentation may still paint a buzz cut on the scalp)
        zeros = np.zeros(g.num_texels, np.float32)
        return Hairstyle(zeros, zeros.copy(), style)
    if style == "short":
        bottom = g.eye_y + rng.uniform(-0.035, 0.005)
        crown, flare = rng.uniform(0.004, 0.015), rng.uniform(0.0, 0.008)
    elif style == "bob":
        bottom = rng.uniform(g.chin_y - 0.015, g.lip_y)
        crown, flare = rng.uniform(0.01, 0.03), rng.uniform(0.005, 0.035)
    else:  # long, to the shoulders
        bottom = rng.uniform(g.bottom_y, g.chin_y - 0.04)
        crown, flare = rng.uniform(0.01, 0.035), rng.uniform(0.015, 0.05)
    # the bottom edge wanders (layers, a parting, hair behind one ear)
    edge = bottom + 0.012 * smooth_noise(points, rng, 0.12)
    # the volume grows from the crown down to the bottom edge: hair falls outward from the scalp
    fall = np.clip((g.top_y - y) / max(g.top_y - bottom, 1e-3), 0, 1)
    volume = (crown + flare * fall**1.5) * np.exp(0.25 * smooth_noise(points, rng, 0.1))
    inside = _sigmoid((y - edge) / EDGE_SOFTNESS_M)
    heights = np.clip(volume * inside, 0, MAX_HEIGHT_M * 0.9) * g.chart
    coverage = g.chart * np.clip(inside * 1.5, 0, 1)
    if rng.random() < 0.45:  # a fringe: a thin layer over the forehead down toward the brows
        fringe_line = g.brow_y + rng.uniform(0.004, 0.03) + 0.006 * smooth_noise(points, rng, 0.06)
        half_width = rng.uniform(0.05, 0.08)
        fringe = (
            g.face
            * (y > g.brow_y)
            * _sigmoid((y - fringe_line) / EDGE_SOFTNESS_M)
            * _sigmoid((half_width - np.abs(x)) / 0.01)
        )
        heights = heights + fringe * rng.uniform(0.002, 0.008)
        coverage = np.maximum(coverage, fringe)
    else:  # a hairline above the forehead (colour only, on the surface)
        hairline = g.brow_y + rng.uniform(0.03, 0.06)
        coverage = np.maximum(coverage, g.face * _sigmoid((y - hairline) / EDGE_SOFTNESS_M))
    return Hairstyle(heights.astype(np.float32), np.clip(coverage, 0, 1).astype(np.float32), style)


def collar_cut(
    geometry: HairGeometry, heights: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Texels hidden by a random collar: [N] bool (skin of the face and back-of-head charts below
    the collar's height, not lifted as hair) and the collar's height (metres, neutral head)."""
    collar_y = geometry.chin_y - rng.uniform(*COLLAR_BELOW_CHIN_M)
    cut = geometry.skin & (geometry.canonical[:, 1] < collar_y) & (heights < BARE_HEIGHT_M)
    return cut, float(collar_y)


def hair_texture(points: np.ndarray, swatch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N,3] strand texture over points [N,3] metres from a swatch [Q,3] (hair colours sorted by
    luminance): each texel takes the swatch colour at a strand value in [0,1] that changes fast
    around the head's vertical axis and slowly down it."""
    azimuth = np.arctan2(points[:, 0], -points[:, 2])
    strands = (
        0.15 * np.sin(azimuth * rng.uniform(25, 60) + 8 * points[:, 1] + rng.uniform(0, 2 * math.pi))
        + 0.08 * np.sin(azimuth * rng.uniform(80, 160) + rng.uniform(0, 2 * math.pi))
        + 0.1 * smooth_noise(points, rng, 0.08)
        + 0.06 * rng.standard_normal(len(points))
    )
    value = np.clip(0.5 + strands, 0, 1)
    index = value * (len(swatch) - 1)
    low = np.floor(index).astype(int)
    high = np.minimum(low + 1, len(swatch) - 1)
    frac = (index - low)[:, None]
    return (swatch[low] * (1 - frac) + swatch[high] * frac).astype(np.float32)


def hair_shape(hairstyle: Hairstyle, device=None, cut: np.ndarray | None = None) -> WholeHead:
    """The hairstyle as the :class:`~flexavatar.model.hair.WholeHead` that
    :func:`~flexavatar.model.hair.shell_maps` lifts: ``cut`` [N] bool (default none) is outside
    the hull (transparent, e.g. under a collar); no parsed masks."""
    heights = torch.from_numpy(hairstyle.heights).to(device)
    outside = torch.zeros_like(heights, dtype=torch.bool) if cut is None else torch.from_numpy(cut).to(device)
    return WholeHead(heights=heights, rim=torch.zeros_like(heights), outside_hull=outside, parts=None,
                     back_rgb=torch.zeros(3, device=device))  # fmt: skip

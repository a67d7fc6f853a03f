"""Expression creases baked into an avatar's colours, taken out at rest and put back with the skin's motion.

An avatar's colours are lifted from its photo, so a smiling photo's nasolabial folds and a
surprised one's forehead furrows are painted on its skin: neutralised, the avatar still shows
them (a smile's creases read as a dark moustache and make a driven pucker re-track as dimples).
Creases form where an expression compresses the skin. :func:`source_creases` finds, on the face's
skin, where the source expression compresses it (the anchoring triangle's area against the
neutral mesh) and how much darker each texel is there than its surroundings (a wide UV box
blur); :func:`crease_colours` lightens those texels by that much, less the part of the source
expression's motion that each frame's skin repeats (the projection of its displacement onto the
source's): none at the neutral rest, all of it at the source expression (``--keep-expression``
and refinement see the photo's colours unchanged), the creases deepening as the avatar smiles again.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from flexavatar.model.field import blur_on_chart, triangle_areas

#: Area-scale compression (1 - sqrt(area ratio)) at which a texel counts fully as creased: a
#: smile compresses the nasolabial skin by 15-30 %, raised brows the forehead by up to 50 %.
CREASE_FULL_COMPRESSION = 0.1
#: Box-blur window (texels; two passes) of the compression mask: a fold sits at the edge of the
#: compressed skin, not only on it.
MASK_WINDOW = 5
#: Box-blur window (texels; two passes, ~5 cm on the face at 128²) of the local colour a crease
#: is measured against: wider than a fold, so the fold's shadow is not its own reference.
SURROUND_WINDOW = 13
#: Skin the source expression moved less than this (metres) gives no direction to project a
#: frame's motion on: its crease fades out from here to half of it (the colours there stay the
#: photo's), so that at the source expression every texel is exactly as painted.
MIN_SOURCE_OFFSET_M = 1e-3


#: Skin this close (metres, on the neutral template) to the eyelids never creases here
#: (:func:`crease_skin`): the brows,
#: the lids' own folds, lashes and a pair of sunglasses are darker than their surroundings too,
#: and a smile's or a frown's compression reaches them (sunglasses.png's lenses greyed, blonde.png's
#: brows faded). Crow's feet and under-eye bags stay.
EYE_MARGIN_M = 0.02


#: The lips (texels that rolling them in, mouthRollLower + mouthRollUpper, moves farther than this,
#: metres) never crease here either: a pout or an "O" compresses them, and their colour is
#: pigment, not a fold's shadow (lightened, 15-f13-anc-ph.jpg's pouting lips lost their colour at
#: rest and got it back whenever the driver pursed its lips: WolfgangLanger_Pexels.mp4 x 15-f13
#: pucker r 0.77 -> -0.02; 0.77 with the lips left alone).
LIP_ROLL_M = 0.005


def crease_skin(atlas, neutral: torch.Tensor, lips_rolled: torch.Tensor, face_skin: torch.Tensor,
                eyelids: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """[N] bool the texels that may crease: ``face_skin`` [N] farther than :data:`EYE_MARGIN_M`
    from every ``eyelids`` [N] texel on the ``neutral`` [1,V,3] mesh, off the lips (moved farther
    than :data:`LIP_ROLL_M` in ``lips_rolled`` [1,V,3], the mesh with its lips rolled in)."""
    from scipy.spatial import cKDTree

    points = atlas.surface_points(neutral)[0]
    lids = cKDTree(points[eyelids].detach().cpu().numpy())
    near = torch.from_numpy(np.isfinite(lids.query(points.detach().cpu().numpy(), distance_upper_bound=EYE_MARGIN_M)[0]))
    near = near.to(face_skin.device)
    lips = (atlas.surface_points(lips_rolled)[0] - points).norm(dim=-1) > LIP_ROLL_M
    return face_skin & ~near & ~lips


@dataclass
class Creases:
    """lightening [N,3]: what :func:`crease_colours` adds to each texel's colour at the neutral
    rest (>= 0, 0 off the creases); neutral_points [1,N,3] metres: the texels on the neutral mesh;
    source_offsets [N,3] metres: each texel's displacement under the source expression."""

    lightening: torch.Tensor
    neutral_points: torch.Tensor
    source_offsets: torch.Tensor


class LastCreases:
    """The last avatar's :class:`Creases`, kept while the tensors they were found from are the
    same objects, unmodified (stills and previews deform one avatar again and again without a
    deform cache; finding its creases was a third of a 256² still, 12 of 45 ms)."""

    def __init__(self):
        # ((weak reference to a tensor, its version) ..., Creases), swapped whole; weak, so that
        # a training step's avatar (and its autograd graph) is not kept alive until the next one
        self._last: tuple | None = None

    def get(self, tensors: tuple[torch.Tensor, ...], find) -> Creases:
        """The creases found from ``tensors`` (``find()`` when they are not the last ones)."""
        last = self._last
        if last is not None and len(last[0]) == len(tensors) and all(
            ref() is tensor and version == tensor._version for (ref, version), tensor in zip(last[0], tensors)
        ):
            return last[1]
        creases = find()
        self._last = (tuple((weakref.ref(tensor), tensor._version) for tensor in tensors), creases)
        return creases


def source_creases(atlas, colours: torch.Tensor, neutral: torch.Tensor, source: torch.Tensor, skin: torch.Tensor) -> Creases:
    """The creases an avatar's source expression baked into its colours.

    colours [N,3] in [0,1]: the avatar's static texel colours; neutral [1,V,3], source [1,V,3]
    metres: its mesh at the neutral and at the source expression; skin [N] bool: the texels that
    may crease (:func:`crease_skin`)."""
    skin_map = atlas.scatter(skin.to(colours)[None, :, None])  # [1,1,R,R]
    ratio = (triangle_areas(atlas, source) / triangle_areas(atlas, neutral).clamp_min(1e-12)).sqrt()  # [1,N]
    compression = ((1.0 - ratio) / CREASE_FULL_COMPRESSION).clamp(0.0, 1.0) * skin.to(colours)
    mask = blur_on_chart(atlas.scatter(compression[..., None].to(colours)), MASK_WINDOW, skin_map)
    mask = atlas.gather((2.0 * mask).clamp(max=1.0) * skin_map)[0]  # [N,1]
    chart = atlas.mask[None, None].to(colours)
    surround = atlas.gather(blur_on_chart(atlas.scatter(colours[None]), SURROUND_WINDOW, chart))[0]  # [N,3]
    neutral_points = atlas.surface_points(neutral)
    source_offsets = (atlas.surface_points(source) - neutral_points)[0]
    moved = (2.0 * source_offsets.norm(dim=-1, keepdim=True) / MIN_SOURCE_OFFSET_M - 1.0).clamp(0.0, 1.0)
    lightening = mask * moved * (surround - colours).clamp(min=0.0)
    return Creases(lightening=lightening, neutral_points=neutral_points, source_offsets=source_offsets)


def crease_colours(colours: torch.Tensor, creases: Creases, points: torch.Tensor) -> torch.Tensor:
    """colours [B,N,3] of frames whose texels lie at ``points`` [B,N,3] metres (the atlas's
    surface points of their meshes) -> [B,N,3]: each texel lightened by its crease's
    ``lightening`` times one minus how much of the source expression's motion the frame repeats
    there (its displacement from the neutral mesh projected on the source's, in [0,1])."""
    offsets = points - creases.neutral_points.to(points)
    source = creases.source_offsets.to(offsets)
    repeated = (offsets * source[None]).sum(-1) / (source * source).sum(-1).clamp_min((MIN_SOURCE_OFFSET_M / 2) ** 2)
    return colours + creases.lightening.to(colours)[None] * (1.0 - repeated.clamp(0.0, 1.0))[..., None].to(colours)

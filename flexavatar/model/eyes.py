"""Eyeball colours: an eye the gaze can turn.

A portrait shows an eye as a slit a few pixels high, and the network paints the whole front of
the eyeball with it: a dark blob, with skin-coloured sclera where the photo showed lid. Turned
by the gaze (:mod:`flexavatar.head.gaze`), such an eyeball shows its skin-coloured side and
reads as a closing eye. Each eyeball is painted instead (:func:`eyeball_colours`): a white
sclera, an iris disc in the photo's own iris colour, a pupil; a shutting lid fades the eyeball to
the skin around it, so nothing dark shows between the lid's Gaussians.
"""

from __future__ import annotations

import torch

from flexavatar.head.gaze import neutral_eyeball_centres

#: Angular radius (degrees, from the eyeball's centre about its forward axis) of the painted iris
#: and pupil. ICT's iris mesh spans ~35° (90% of its texels); a human iris ~12 mm across on a
#: ~24 mm eyeball spans ~30°.
IRIS_DEG = 32.0
PUPIL_DEG = 12.0
#: The iris colour is the mean of the darkest this fraction of the avatar's own texels inside the
#: iris disc (where the photo showed the eye)...
IRIS_DARKEST = 0.3
#: ...and the pupil this fraction of it.
PUPIL_SHADE = 0.3
#: The sclera: a white whose luma is this multiple of the skin's around the eye, within
#: SCLERA_LUMA (a photo's sclera is brighter than the skin by the skin's albedo, unknown here),
#: tinted by SCLERA_SKIN_TINT of the skin's own hue (neutral on a black-and-white photo).
SCLERA_OVER_SKIN = 1.3
SCLERA_LUMA = (0.55, 0.9)
SCLERA_SKIN_TINT = 0.15
#: An eye is painted only where the skin around its lid is at least this fraction of the face's
#: median luma: sunglasses cover the lids and the skin around them (0.39 on a held-out photo with
#: sunglasses, 0.8-1.7 on 11 photos without), and a painted eye showed through their lenses.
EYE_VISIBLE_RATIO = 0.6
_LUMA = (0.299, 0.587, 0.114)


def eyeball_geometry(atlas, head, neutral: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each eye's eyeball texels (sclera and iris charts) [2,N] bool and every texel's angle from
    its eyeball's forward axis [N] degrees (the median direction of its iris texels from the
    eyeball's centre; 180 off the eyeballs), on ``neutral`` [1,V,3] m."""
    points = atlas.surface_points(neutral)[0].double()  # [N,3]
    centres = neutral_eyeball_centres(head, neutral)[0]  # [2,3]
    eyes, angle = [], torch.full((points.shape[0],), 180.0, dtype=torch.float64, device=points.device)
    for side, centre in zip(("left", "right"), centres):
        eye = atlas.region_mask(f"sclera_{side}", f"iris_{side}")
        directions = torch.nn.functional.normalize(points - centre, dim=-1)
        axis = torch.nn.functional.normalize(directions[atlas.region_mask(f"iris_{side}")].median(0).values, dim=0)
        angle = torch.where(eye, torch.rad2deg(torch.acos((directions @ axis).clamp(-1.0, 1.0))), angle)
        eyes.append(eye)
    return torch.stack(eyes), angle.float()


def eyeball_colours(colours: torch.Tensor, eyes: torch.Tensor, angle: torch.Tensor, skin: torch.Tensor,
                    face: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """[N,3] texel ``colours`` with each eyeball's texels (``eyes`` [2,N], ``angle`` [N],
    :func:`eyeball_geometry`) painted: pupil, iris (:data:`IRIS_DARKEST` of the eyeball's own
    colours in the disc), sclera (from the ``skin`` [2,3] around each eye, :data:`SCLERA_OVER_SKIN`).
    An eye whose surrounding skin is darker than :data:`EYE_VISIBLE_RATIO` of the ``face`` [N]
    bool texels' median keeps its own colours (sunglasses)."""
    luma_weights = torch.tensor(_LUMA, dtype=colours.dtype, device=colours.device)
    luma = colours @ luma_weights
    face_luma = luma[face].median()
    out = colours
    for eye, skin_colour in zip(eyes, skin):  # the two eyes
        skin_luma = skin_colour @ luma_weights
        if skin_luma < EYE_VISIBLE_RATIO * face_luma:  # the photo does not show this eye
            continue
        disc = eye & (angle < IRIS_DEG)
        darkest = disc & (luma <= torch.quantile(luma[disc], IRIS_DARKEST))
        iris = colours[darkest].mean(0)
        hue = skin_colour / skin_luma.clamp_min(1e-3)
        tint = (1.0 - SCLERA_SKIN_TINT) + SCLERA_SKIN_TINT * hue
        sclera = (tint * (SCLERA_OVER_SKIN * skin_luma).clamp(*SCLERA_LUMA)).clamp(0.0, 1.0)
        painted = torch.where((angle < IRIS_DEG)[:, None], iris, sclera)
        painted = torch.where((angle < PUPIL_DEG)[:, None], PUPIL_SHADE * iris, painted)
        out = torch.where(eye[:, None], painted, out)
    return out


def shut_eyeball_colours(colours: torch.Tensor, shut: torch.Tensor, eyes: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
    """[B,N,3] ``colours`` with each eyeball (``eyes`` [2,N]) going to the ``skin`` [2,3] around
    it as its lid shuts (``shut`` [B,2] in [0,1])."""
    for eye, (eyeball, skin_colour) in enumerate(zip(eyes, skin)):
        weight = (shut[:, eye, None, None] * eyeball[None, :, None].to(colours))  # [B,N,1]
        colours = colours + weight * (skin_colour - colours)
    return colours

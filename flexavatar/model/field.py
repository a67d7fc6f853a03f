"""Gaussian field: per-texel attribute maps + a deformed mesh -> Gaussians for the renderer."""

from __future__ import annotations

import math

import torch

from flexavatar.rotations import matrix_to_quat, quat_to_matrix

#: Channels of the static attribute maps and of the deformer's dynamic deltas, in order.
ATTRIBUTE_LAYOUT: dict[str, int] = {"offset": 3, "colour": 3, "opacity": 1, "scale": 3, "rotation": 4}
ATTRIBUTE_SLICES: dict[str, slice] = {}
_start = 0
for _name, _width in ATTRIBUTE_LAYOUT.items():
    ATTRIBUTE_SLICES[_name] = slice(_start, _start + _width)
    _start += _width
NUM_ATTRIBUTES = _start  # 14


def texel_spacing(atlas, vertices: torch.Tensor) -> torch.Tensor:
    """Distance between neighbouring texels on the surface, [N] metres.

    From the position map of ``vertices`` [1,V,3]: mean distance to the valid right/down/left/up
    neighbours in the same chart (a jump > 3x the chart median is a seam and is ignored).
    """
    pos = atlas.position_map(vertices)[0]  # [3,R,R]
    mask = atlas.mask
    dists, valid = [], []
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        shifted = torch.roll(pos, (dy, dx), (1, 2))
        shifted_mask = torch.roll(mask, (dy, dx), (0, 1))
        dists.append((pos - shifted).norm(dim=0))
        valid.append(mask & shifted_mask)
    dist = torch.stack(dists)  # [4,R,R]
    ok = torch.stack(valid)
    per_texel = dist.reshape(4, -1)[:, atlas.texel_index].T  # [N,4]
    ok = ok.reshape(4, -1)[:, atlas.texel_index].T
    region_median = torch.zeros(int(atlas.region.max()) + 1, dtype=dist.dtype, device=dist.device)
    for region in range(len(region_median)):  # 8 charts: a loop over charts, not texels
        sel = (atlas.region == region)[:, None] & ok
        if sel.any():
            region_median[region] = per_texel[sel].median()
    median = region_median[atlas.region][:, None]
    ok = ok & (per_texel < 3 * median)
    spacing = (per_texel * ok).sum(1) / ok.sum(1).clamp_min(1)
    return torch.where(ok.any(1), spacing, median[:, 0]).clamp(2e-4, 2e-2)


#: Largest factor by which a stretched surface widens its Gaussians (:func:`surface_stretch`).
MAX_STRETCH = 4.0


#: A texel is on an eyelid when a full blink moves it more than this (metres, template head;
#: :func:`lid_closure`).
EYELID_MOVE_M = 0.001


#: :func:`shut_lid_colours`: a lid starts taking its shut colours at this blink weight and has
#: them all from :data:`SHUT_LID_FULL` on.
SHUT_LID_START = 0.25
SHUT_LID_FULL = 0.75
#: :func:`lid_closure`: the upper lid's margin, where a shut eye shows its lash line, is where a
#: full blink moves the lid by more than this fraction of its largest motion (6 texels per eye).
#: MediaPipe read single_face.jpg's avatar's full blink as 0.62 / 0.55 at 0.7 (4 texels), 0.70 /
#: 0.64 at 0.65, 0.75 / 0.65 at 0.6 (0.74 / 0.65 with the photo's own lid colours: the ring).
LID_MARGIN_FRACTION = 0.6
#: ...and the lid's texels take their shut colours in full only where the blink moves them by
#: more than this fraction; less toward the crease, so the recoloured lid has no edge.
LID_FEATHER_FRACTION = 0.3
_LUMA = (0.299, 0.587, 0.114)


def lid_closure(atlas, neutral: torch.Tensor, blink: torch.Tensor) -> torch.Tensor:
    """[2,N] how far each eye's full blink (``blink`` [2,V,3] metres, one mesh per eye) moves each
    texel from ``neutral`` [1,V,3], as a fraction of that eye's largest motion; 0 off the lid
    (moved under :data:`EYELID_MOVE_M`)."""
    points = atlas.surface_points(torch.cat([neutral, blink]))
    move = (points[1:] - points[:1]).norm(dim=-1)  # [2,N] metres
    return torch.where(move > EYELID_MOVE_M, move / move.amax(1, keepdim=True), torch.zeros_like(move))


#: :func:`lid_borders`: the skin around a lid is the texels off it within this distance of it
#: (metres, template head).
LID_BORDER_M = 0.006


def lid_borders(atlas, neutral: torch.Tensor, closure: torch.Tensor) -> torch.Tensor:
    """[2,N] bool: per eye, the texels off both lids within :data:`LID_BORDER_M` of that eye's lid
    (``closure`` [2,N], :func:`lid_closure`) on ``neutral`` [1,V,3]: the skin around it."""
    points = atlas.surface_points(neutral)[0]  # [N,3]
    off_lids = ~(closure > 0).any(0)
    borders = []
    for eye in closure > 0:
        lid = points[eye]
        near = off_lids & ((points - lid.mean(0)).norm(dim=-1) < (lid - lid.mean(0)).norm(dim=-1).max() + LID_BORDER_M)
        close = torch.cdist(points[near], lid).amin(1) < LID_BORDER_M
        border = torch.zeros_like(eye)
        border[near.nonzero()[:, 0]] = close
        borders.append(border)
    return torch.stack(borders)


def lid_skin(colours: torch.Tensor, borders: torch.Tensor) -> torch.Tensor:
    """[2,3] the skin around each eye's lid: the per-channel median of the brighter half of the
    texel ``colours`` [N,3] in its ``borders`` [2,N] (:func:`lid_borders`)."""
    luma = colours @ torch.tensor(_LUMA, dtype=colours.dtype, device=colours.device)
    skins = []
    for border in borders:  # the two eyes
        border_colours, border_luma = colours[border], luma[border]
        skins.append(border_colours[border_luma >= border_luma.median()].median(0).values)
    return torch.stack(skins)


def shut_fraction(blinks: torch.Tensor) -> torch.Tensor:
    """[B,2] ICT eyeBlink_L / _R weights -> how far each eye's lid has taken its shut colours, in
    [0,1] (:data:`SHUT_LID_START` to :data:`SHUT_LID_FULL`)."""
    return ((blinks - SHUT_LID_START) / (SHUT_LID_FULL - SHUT_LID_START)).clamp(0.0, 1.0)


def shut_lid_targets(colours: torch.Tensor, closure: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
    """[N,3] the colour each eyelid texel takes when its eye is shut (0 off the lids), from the
    avatar's texel ``colours`` [N,3] and the lids' ``closure`` [2,N] (:func:`lid_closure`).

    Per eye: the ``skin`` [2,3] around the lid (:func:`lid_skin`; the lid's own brighter half,
    eye shadow on a made-up eye, showed as a patch); the margin (:data:`LID_MARGIN_FRACTION`)
    takes the median of the lid's darker quarter, a lash line (with skin alone MediaPipe read the astronaut's shut eyes
    as blink 0.32 / 0.16, against 0.70 / 0.61 with the photo's own lid colours)."""
    luma = colours @ torch.tensor(_LUMA, dtype=colours.dtype, device=colours.device)
    target = torch.zeros_like(colours)
    for eye, eye_skin in zip(closure, skin):  # the two eyes
        lid = eye > 0
        lid_colours, lid_luma = colours[lid], luma[lid]
        lash = lid_colours[lid_luma <= torch.quantile(lid_luma, 0.25)].median(0).values
        margin = eye > LID_MARGIN_FRACTION
        target = torch.where((lid & ~margin)[:, None], eye_skin, target)
        target = torch.where(margin[:, None], lash, target)
    return target


def shut_lid_colours(colours: torch.Tensor, blinks: torch.Tensor, targets: torch.Tensor, closure: torch.Tensor) -> torch.Tensor:
    """[B,N,3] texel ``colours`` with each eyelid's texels (``closure`` [2,N], :func:`lid_closure`)
    going to their shut colours (``targets`` [N,3], :func:`shut_lid_targets`) as the eye shuts
    (``blinks`` [B,2] ICT eyeBlink_L / _R weights, :data:`SHUT_LID_START` to
    :data:`SHUT_LID_FULL`), feathered toward the crease (:data:`LID_FEATHER_FRACTION`).

    A photo shows an open eye: its lid texels hold the lashes and shadow around it, and on a
    narrowed eye some of the eye itself. A blink stretches them over the eye, where they showed
    as a dark ring around a pale patch (single_face.jpg's avatar; a driver holding her eyes shut
    showed it for seconds)."""
    shut = shut_fraction(blinks)  # [B,2]
    feather = (closure / LID_FEATHER_FRACTION).clamp(0.0, 1.0).to(colours.dtype)  # [2,N]
    weight = (shut[:, :, None] * feather[None]).amax(1)[..., None]  # [B,N,1]
    return colours + weight * (targets[None] - colours)


def blur_on_chart(uv_map: torch.Tensor, window: int, chart: torch.Tensor) -> torch.Tensor:
    """[B,C,R,R] UV maps low-passed by two ``window``-texel box passes (each a row then a column
    pass), normalised by ``chart`` [B or 1,1,R,R] in [0,1] so that nothing off it leaks in."""

    def box(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.avg_pool2d(x, (1, window), 1, (0, window // 2), count_include_pad=False)
        return torch.nn.functional.avg_pool2d(x, (window, 1), 1, (window // 2, 0), count_include_pad=False)

    return box(box(uv_map * chart)) / box(box(chart)).clamp_min(1e-6)


def triangle_areas(atlas, vertices: torch.Tensor) -> torch.Tensor:
    """[B,N] the area (m²) of each texel's anchoring triangle in ``vertices`` [B,V,3]."""
    corners = atlas._corners(vertices)
    return torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0]).norm(dim=-1)


def surface_stretch(atlas, vertices: torch.Tensor, neutral: torch.Tensor, texels: torch.Tensor | None = None) -> torch.Tensor:
    """[B,N] how much each texel's surface is stretched in ``vertices`` [B,V,3] relative to
    ``neutral`` [1,V,3]: sqrt of the anchoring triangle's area ratio, in [1, MAX_STRETCH]; 1
    outside ``texels`` [N] bool (default: everywhere).

    A closing eyelid stretches its few texels over the whole eye: Gaussians sized for the open
    lid leave gaps through which the eyeball shows, and the closed eye re-tracks as open. (Over
    the whole face it also widened a smile's Gaussians: the live smile r 0.83 -> 0.68.)"""

    stretch = (triangle_areas(atlas, vertices) / triangle_areas(atlas, neutral).clamp_min(1e-12)).sqrt().clamp(1.0, MAX_STRETCH)
    return stretch if texels is None else torch.where(texels, stretch, torch.ones_like(stretch))


def gaussians_from_attributes(
    atlas,
    vertices: torch.Tensor,
    attributes: torch.Tensor,
    spacing: torch.Tensor,
    scale_tangent: float,
    scale_normal: float,
    offset_unit_m: float,
    init_opacity: float,
    stretch: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Gaussians anchored on the mesh.

    vertices [B,V,3] metres (deformed mesh); attributes [B,N,14] per texel (static + dynamic,
    :data:`ATTRIBUTE_LAYOUT`; colour absolute in [0,1], the rest raw deltas that are 0 for the
    template); spacing [N] metres; stretch [B,N] (optional, :func:`surface_stretch`) widens the
    tangent scales where the surface is stretched. Returns means [B,N,3] m, quats [B,N,4] wxyz,
    scales [B,N,3] m, opacities [B,N], colors [B,N,3].
    """
    points, frames = atlas.surface_and_frames(vertices)
    get = {name: attributes[..., sl] for name, sl in ATTRIBUTE_SLICES.items()}
    means = points + (frames @ (get["offset"] * offset_unit_m)[..., None])[..., 0]
    base = torch.tensor([scale_tangent, scale_tangent, scale_normal], device=spacing.device, dtype=spacing.dtype)
    scales = spacing[:, None] * base * torch.exp(get["scale"].clamp(-6.0, 4.0))
    if stretch is not None:
        scales = scales * torch.stack([stretch, stretch, torch.ones_like(stretch)], -1)
    opacity_logit = math.log(init_opacity / (1 - init_opacity))
    opacities = torch.sigmoid(opacity_logit + get["opacity"][..., 0])
    identity_quat = torch.tensor([1.0, 0.0, 0.0, 0.0], device=attributes.device, dtype=attributes.dtype)
    local = quat_to_matrix(identity_quat + get["rotation"])
    quats = matrix_to_quat(frames @ local)
    colors = get["colour"].clamp(0.0, 1.0)
    return {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors}

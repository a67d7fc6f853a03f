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


#: A texel is on an eyelid when a full blink moves it more than this (metres, template head).
EYELID_MOVE_M = 0.001


def eyelid_texels(atlas, neutral: torch.Tensor, blink: torch.Tensor) -> torch.Tensor:
    """[N] bool: texels a blink moves (> :data:`EYELID_MOVE_M`); neutral [1,V,3], blink [B,V,3]
    metres (the head with each eye's full blink)."""
    points = atlas.surface_points(torch.cat([neutral, blink]))
    return (points[1:] - points[:1]).norm(dim=-1).amax(0) > EYELID_MOVE_M


def surface_stretch(atlas, vertices: torch.Tensor, neutral: torch.Tensor, texels: torch.Tensor | None = None) -> torch.Tensor:
    """[B,N] how much each texel's surface is stretched in ``vertices`` [B,V,3] relative to
    ``neutral`` [1,V,3]: sqrt of the anchoring triangle's area ratio, in [1, MAX_STRETCH]; 1
    outside ``texels`` [N] bool (default: everywhere).

    A closing eyelid stretches its few texels over the whole eye: Gaussians sized for the open
    lid leave gaps through which the eyeball shows, and the closed eye re-tracks as open. (Over
    the whole face it also widened a smile's Gaussians: the live smile r 0.83 -> 0.68.)"""

    def areas(mesh: torch.Tensor) -> torch.Tensor:
        corners = atlas._corners(mesh)
        return torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0]).norm(dim=-1)

    stretch = (areas(vertices) / areas(neutral).clamp_min(1e-12)).sqrt().clamp(1.0, MAX_STRETCH)
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

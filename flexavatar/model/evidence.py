"""UV evidence: input pixels lifted onto the UV atlas through the fitted mesh.

For each view, every texel's surface point is projected with the fitted camera. It takes the
pixel's colour when (a) it is in the image and on the person mask, (b) it passes a depth
test against a coarse z-buffer of all texels of that view, (c) its surface faces the camera.
Views are fused with weight cos(view angle)² so grazing views count little. Texels no view
sees are filled from their own chart (push-pull over a mip pyramid), falling back to a
prior colour per region when a whole chart is unseen (teeth behind closed lips). The result
is what an untrained model paints on the template, and what the network refines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flexavatar.head.atlas import REGION_NAMES

#: Colour of a region no input view sees (linear RGB in [0,1]).
REGION_PRIOR_RGB = {
    "face": (0.72, 0.55, 0.46),
    "back_head": (0.22, 0.16, 0.12),  # hair
    "gums_tongue": (0.62, 0.28, 0.28),
    "teeth": (0.9, 0.87, 0.8),
    "sclera_left": (0.9, 0.88, 0.86),
    "iris_left": (0.25, 0.17, 0.12),
    "sclera_right": (0.9, 0.88, 0.86),
    "iris_right": (0.25, 0.17, 0.12),
}

ZBUFFER_CELL_PX = 4  # z-buffer cell size: ~4 texels per cell at the default sizes, so no holes
DEPTH_TOLERANCE_M = 0.01


def lift_views(
    atlas,
    vertices: torch.Tensor,
    images: torch.Tensor,
    masks: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view texel colours and weights.

    atlas: :class:`~flexavatar.head.atlas.UVAtlas`; vertices [V,Vtx,3] metres (mesh of each view);
    images [V,3,S,S] in [0,1]; masks [V,1,S,S] in [0,1]; viewmats [V,4,4]; Ks [V,3,3] (pixels).
    Returns colours [V,N,3] and weights [V,N] (0 where the view does not see the texel).
    """
    num_views, _, height, width = images.shape
    points, frames = atlas.surface_and_frames(vertices)  # [V,N,3], [V,N,3,3]
    normals = frames[..., 2]
    rotation, translation = viewmats[:, :3, :3], viewmats[:, :3, 3]
    cam = points @ rotation.transpose(1, 2) + translation[:, None]  # [V,N,3]
    depth = cam[..., 2]
    pix = (cam @ Ks.transpose(1, 2))[..., :2] / depth.clamp_min(1e-6)[..., None]  # [V,N,2]
    in_image = (depth > 1e-3) & (pix[..., 0] >= 0) & (pix[..., 0] < width) & (pix[..., 1] >= 0) & (pix[..., 1] < height)

    # coarse z-buffer of texel points: min depth per cell, then a tolerance test
    cells_x, cells_y = -(-width // ZBUFFER_CELL_PX), -(-height // ZBUFFER_CELL_PX)
    cell = (pix[..., 1] // ZBUFFER_CELL_PX).clamp(0, cells_y - 1).long() * cells_x + (
        pix[..., 0] // ZBUFFER_CELL_PX
    ).clamp(0, cells_x - 1).long()
    masked_depth = torch.where(in_image, depth, torch.full_like(depth, float("inf")))
    zbuffer = torch.full((num_views, cells_x * cells_y), float("inf"), device=depth.device, dtype=depth.dtype)
    zbuffer = zbuffer.scatter_reduce(1, cell, masked_depth, reduce="amin")
    visible = in_image & (depth <= zbuffer.gather(1, cell) + DEPTH_TOLERANCE_M)

    # facing: cosine between the normal and the direction to the camera centre
    centres = -(rotation.transpose(1, 2) @ translation[..., None])[..., 0]  # [V,3]
    to_camera = F.normalize(centres[:, None] - points, dim=-1)
    cosine = (normals * to_camera).sum(-1).clamp_min(0.0)

    grid = torch.stack([pix[..., 0] / width * 2 - 1, pix[..., 1] / height * 2 - 1], -1)[:, :, None]  # [V,N,1,2]
    sampled = F.grid_sample(torch.cat([images, masks], 1), grid, mode="bilinear", align_corners=False)
    sampled = sampled[..., 0].transpose(1, 2)  # [V,N,4]
    weights = cosine.square() * sampled[..., 3] * visible.to(cosine.dtype)
    return sampled[..., :3], weights


def push_pull_fill(values: torch.Tensor, weights: torch.Tensor, levels: int = 7) -> torch.Tensor:
    """Fill holes of a weighted map from coarser levels of a weighted mip pyramid.

    values [B,C,H,W], weights [B,1,H,W] >= 0. Returns [B,C,H,W]: the value where the weight
    is ~1, the coarser estimate blended in where it is lower.
    """
    if levels == 0 or min(values.shape[-2:]) < 2:
        return values
    weights = weights.clamp(0, 1)
    coarse_w = F.avg_pool2d(weights, 2)
    coarse_v = F.avg_pool2d(values * weights, 2) / coarse_w.clamp_min(1e-8)
    coarse_filled = push_pull_fill(coarse_v, (coarse_w * 4).clamp(max=1), levels - 1)
    up = F.interpolate(coarse_filled, scale_factor=2, mode="bilinear", align_corners=False)
    return values * weights + up * (1 - weights)


def fuse_evidence(atlas, colours: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Fuse per-view texel colours into one evidence map.

    colours [V,N,3], weights [V,N] from :func:`lift_views`. Returns [4,R,R]: RGB (holes filled
    within each chart) and coverage in [0,1] (0 off the atlas and where no view saw the texel).
    """
    total = weights.sum(0)  # [N]
    fused = (colours * weights[..., None]).sum(0) / total.clamp_min(1e-8)[:, None]
    coverage = total.clamp(max=1.0)
    num_regions = len(REGION_NAMES)
    # one channel stack per region so a chart fills only from itself
    region_onehot = F.one_hot(atlas.region, num_regions).to(fused.dtype)  # [N,G]
    region_cov = atlas.scatter((coverage[:, None] * region_onehot)[None])[0]  # [G,R,R]
    rgb_map = atlas.scatter(fused[None])[0]  # [3,R,R]
    filled = push_pull_fill(rgb_map[None].expand(num_regions, -1, -1, -1), region_cov[:, None])  # [G,3,R,R]
    per_texel = atlas.gather(filled)  # [G,N,3]
    colour = per_texel[atlas.region, torch.arange(atlas.num_texels, device=fused.device)]  # [N,3]
    # a chart nobody saw at all keeps its prior colour
    prior = torch.tensor([REGION_PRIOR_RGB[n] for n in REGION_NAMES], dtype=fused.dtype, device=fused.device)
    seen = torch.zeros(num_regions, device=fused.device).index_add_(0, atlas.region, coverage) > 0.5
    colour = torch.where(seen[atlas.region][:, None], colour, prior[atlas.region])
    colour = torch.where(coverage[:, None] > 0, coverage[:, None] * fused + (1 - coverage[:, None]) * colour, colour)
    return atlas.scatter(torch.cat([colour, coverage[:, None]], 1)[None])[0]


def uv_evidence(atlas, vertices, images, masks, viewmats, Ks) -> torch.Tensor:
    """Lift and fuse in one call: arguments as :func:`lift_views`; returns [4,R,R]."""
    colours, weights = lift_views(atlas, vertices, images, masks, viewmats, Ks)
    return fuse_evidence(atlas, colours, weights)

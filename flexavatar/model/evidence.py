"""UV evidence: input pixels lifted onto the UV atlas through the fitted mesh.

For each view, every texel's surface point is projected with the fitted camera. It takes the
pixel's colour when (a) it is in the image and on the person mask, (b) it passes a depth
test against a coarse z-buffer of all texels of that view, (c) its surface faces the camera,
(d) outside the mouth's own charts, it does not land inside the photo's mouth opening (the
inner-lip polygon, when given: the lips of a fitted open mouth reach into it).
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
    # the mouth interior as a photo shows it: in the shadow of the lips and cheeks
    "gums_tongue": (0.32, 0.12, 0.12),
    "teeth": (0.82, 0.78, 0.7),
    "sclera_left": (0.9, 0.88, 0.86),
    "iris_left": (0.25, 0.17, 0.12),
    "sclera_right": (0.9, 0.88, 0.86),
    "iris_right": (0.25, 0.17, 0.12),
}

ZBUFFER_CELL_PX = 4  # z-buffer cell size: ~4 texels per cell at the default sizes, so no holes
DEPTH_TOLERANCE_M = 0.01
#: The mouth interior's depth tolerance: teeth and tongue sit ~5 mm behind closed lips, so with
#: the general 1 cm they "saw" the lips' pixels and a closed-mouth photo gave a flesh-coloured
#: mouth interior instead of the dark prior.
MOUTH_DEPTH_TOLERANCE_M = 0.002
MOUTH_REGIONS = ("gums_tongue", "teeth")
#: A mouth chart takes its colours from the photos only where they show this fraction of it
#: (an open mouth); a few texels at the lip line are not an open mouth.
MOUTH_MIN_SEEN_FRACTION = 0.05
MIRROR_BELOW_COVERAGE_INV = 20.0  # a texel borrows from its mirror below 1/20 coverage
BACK_FILL_WINDOW = 9  # texels: how far the back-of-head chart's own fill reaches from what was seen


def project_texels(
    points: torch.Tensor,
    normals: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    tolerance: float | torch.Tensor = DEPTH_TOLERANCE_M,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each texel lands in each view and whether that view sees it.

    points, normals [V,N,3] (metres, head space); viewmats [V,4,4]; Ks [V,3,3] (pixels);
    tolerance: depth tolerance of the z-buffer test, metres (a float or per texel [N]).
    Returns pix [V,N,2] pixels, visible [V,N] bool (in the image and in front in a coarse
    z-buffer of all texels) and cosine [V,N] >= 0 between the normal and the direction to the camera.
    """
    num_views = points.shape[0]
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
    visible = in_image & (depth <= zbuffer.gather(1, cell) + tolerance)

    # facing: cosine between the normal and the direction to the camera centre
    centres = -(rotation.transpose(1, 2) @ translation[..., None])[..., 0]  # [V,3]
    to_camera = F.normalize(centres[:, None] - points, dim=-1)
    cosine = (normals * to_camera).sum(-1).clamp_min(0.0)
    return pix, visible, cosine


def inside_polygons(points: torch.Tensor, polygons: torch.Tensor) -> torch.Tensor:
    """[V,N] bool: which of points [V,N,2] lie inside their view's closed polygon [V,P,2]
    (even-odd rule, vectorised over points and edges)."""
    start, end = polygons[:, None], polygons.roll(-1, dims=1)[:, None]  # [V,1,P,2]
    x, y = points[..., 0:1], points[..., 1:2]  # [V,N,1]
    straddles = (start[..., 1] > y) != (end[..., 1] > y)  # [V,N,P]
    rise = end[..., 1] - start[..., 1]
    crossing_x = start[..., 0] + (y - start[..., 1]) * (end[..., 0] - start[..., 0]) / torch.where(rise == 0, 1.0, rise)
    return ((straddles & (x < crossing_x)).sum(-1) % 2) == 1


def lift_views(
    atlas,
    vertices: torch.Tensor,
    images: torch.Tensor,
    masks: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    heights: torch.Tensor | None = None,
    mouth_openings: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view texel colours and weights.

    atlas: :class:`~flexavatar.head.atlas.UVAtlas`; vertices [V,Vtx,3] metres (mesh of each view);
    images [V,C,S,S] in [0,1] (RGB, or any channels lifted the same way); masks
    [V,1,S,S] in [0,1]; viewmats [V,4,4]; Ks [V,3,3] (pixels); heights [N] metres: each texel's
    point is that far out along its normal (the hair shell, :mod:`flexavatar.model.hair`).
    mouth_openings [V,P,2] pixels (optional): each view's inner-lip polygon
    (:attr:`~flexavatar.tracking.crop.HeadCrop.mouth_opening`); texels outside the mouth's own
    charts that land inside it take no colour from that view (:data:`MOUTH_REGIONS`: fitted to an
    open mouth, the lips reach into the opening and took teeth or the dark interior as theirs);
    they are filled from the lips around them. (A dark inner-lip colour there instead made shut
    lips re-track as parted: eval --motion's lips_open, mean over 23 rows, 0.27 -> 0.44.)
    Returns values [V,N,C], weights [V,N] (0 where the view does not see the texel or it is
    off the mask) and seen [V,N] (cosine to the camera: > 0 where the surface faces the view).
    """
    height, width = images.shape[-2:]
    points, frames = atlas.surface_and_frames(vertices)  # [V,N,3], [V,N,3,3]
    normals = frames[..., 2]
    if heights is not None:
        points = points + normals * heights[None, :, None]
    mouth = atlas.region_mask(*MOUTH_REGIONS)
    tolerance = torch.where(mouth, MOUTH_DEPTH_TOLERANCE_M, DEPTH_TOLERANCE_M).to(points.dtype)
    pix, visible, cosine = project_texels(points, normals, viewmats, Ks, width, height, tolerance)
    grid = torch.stack([pix[..., 0] / width * 2 - 1, pix[..., 1] / height * 2 - 1], -1)[:, :, None]  # [V,N,1,2]
    sampled = F.grid_sample(torch.cat([images, masks], 1), grid, mode="bilinear", align_corners=False)
    sampled = sampled[..., 0].transpose(1, 2)  # [V,N,C+1]
    weights = cosine.square() * sampled[..., -1] * visible.to(cosine.dtype)
    if mouth_openings is not None:
        in_opening = inside_polygons(pix, mouth_openings.to(pix)) & ~mouth[None]
        weights = torch.where(in_opening, 0.0, weights)
    seen = cosine  # facing the camera, occluded or not: what faces away is what a mirror completes
    return sampled[..., :-1], weights, seen


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


def mirror_fill(
    values: torch.Tensor, coverage: torch.Tensor, mirror: torch.Tensor, seen: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right completion: where no view sees a texel, its mirror texel's value fills in.

    values [N,C], coverage [N] in [0,1], mirror [N] index of each texel's mirror image (itself
    where it has none); seen [N] in [0,1] how well any view sees the surface there (default:
    ``coverage``). Returns values [N,C] and coverage [N] after the fill.
    """
    seen = coverage if seen is None else seen
    # only texels (nearly) no view sees borrow: a face and its lighting are not exactly symmetric
    borrowed = (1 - MIRROR_BELOW_COVERAGE_INV * seen).clamp(0, 1) * coverage[mirror]
    total = coverage + borrowed
    blended = (values * coverage[:, None] + values[mirror] * borrowed[:, None]) / total.clamp_min(1e-8)[:, None]
    return torch.where(total[:, None] > 0, blended, values), total.clamp(max=1.0)


def fuse_evidence(
    atlas,
    colours: torch.Tensor,
    weights: torch.Tensor,
    mirror: torch.Tensor | None = None,
    back_rgb: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fuse per-view texel colours into one evidence map.

    colours [V,N,3], weights [V,N] from :func:`lift_views`. mirror [N] (optional): each texel's
    left-right mirror (:func:`~flexavatar.head.atlas.mirror_texels`): the far side of a turned
    face takes the near side's colours. back_rgb [3] or [N,3] (optional): the colour of the unseen back
    of the head (the visible hair's, :mod:`flexavatar.model.hair`): what no view sees of the
    back-of-head chart takes it, never a smear of the face or ears. Returns [4,R,R]: RGB (holes
    filled within each chart) and coverage in [0,1] (0 off the atlas and where no view, nor the
    mirror, saw the texel). seen [V,N] (optional, from :func:`lift_views`): only texels no
    view sees at all borrow from their mirror (not those merely off the mask).
    """
    total = weights.sum(0)  # [N]
    fused = (colours * weights[..., None]).sum(0) / total.clamp_min(1e-8)[:, None]
    coverage = total.clamp(max=1.0)
    facing = coverage if seen is None else seen.sum(0).clamp(max=1.0)  # [N]
    if mirror is not None:
        fused, coverage = mirror_fill(fused, coverage, mirror, facing)
    fill_weight = coverage
    num_regions = len(REGION_NAMES)
    # one channel stack per region so a chart fills only from itself
    region_onehot = F.one_hot(atlas.region, num_regions).to(fused.dtype)  # [N,G]
    region_cov = atlas.scatter((fill_weight[:, None] * region_onehot)[None])[0]  # [G,R,R]
    rgb_map = atlas.scatter(fused[None])[0]  # [3,R,R]
    filled = push_pull_fill(rgb_map[None].expand(num_regions, -1, -1, -1), region_cov[:, None])  # [G,3,R,R]
    per_texel = atlas.gather(filled)  # [G,N,3]
    colour = per_texel[atlas.region, torch.arange(atlas.num_texels, device=fused.device)]  # [N,3]
    # a chart nobody saw at all keeps its prior colour
    prior = torch.tensor([REGION_PRIOR_RGB[n] for n in REGION_NAMES], dtype=fused.dtype, device=fused.device)
    chart_cover = torch.zeros(num_regions, device=fused.device).index_add_(0, atlas.region, coverage)
    chart_seen = chart_cover > 0.5
    # a closed mouth keeps the dark interior prior: its charts count as seen only when open
    chart_size = torch.bincount(atlas.region, minlength=num_regions).to(chart_cover)
    mouth_charts = torch.tensor([n in MOUTH_REGIONS for n in REGION_NAMES], device=fused.device)
    chart_seen = torch.where(mouth_charts, chart_cover >= MOUTH_MIN_SEEN_FRACTION * chart_size, chart_seen)
    coverage = torch.where(mouth_charts[atlas.region] & ~chart_seen[atlas.region], 0.0, coverage)
    colour = torch.where(chart_seen[atlas.region][:, None], colour, prior[atlas.region])
    if back_rgb is not None:
        # near seen texels (ears, side hair) the chart's own fill; far from any, the hair colour
        cover_map = atlas.scatter(facing[None, :, None])[0]
        nearby = atlas.gather(F.avg_pool2d(cover_map[None], BACK_FILL_WINDOW, 1, BACK_FILL_WINDOW // 2))[0, :, 0]
        nearby = (nearby * 3).clamp(0, 1)[:, None]
        back = (atlas.region == REGION_NAMES.index("back_head"))[:, None]
        far_fill = nearby * colour + (1 - nearby) * back_rgb.to(colour).expand_as(colour)
        colour = torch.where(back, far_fill, colour)
    colour = torch.where(coverage[:, None] > 0, coverage[:, None] * fused + (1 - coverage[:, None]) * colour, colour)
    return atlas.scatter(torch.cat([colour, coverage[:, None]], 1)[None])[0]


def uv_evidence(
    atlas, vertices, images, masks, viewmats, Ks, heights=None, mirror=None, back_rgb=None, mouth_openings=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lift and fuse in one call: arguments as :func:`lift_views` and :func:`fuse_evidence`.

    Returns the evidence [4,R,R] and facing [N] in [0,1]: the cosine between each texel's normal
    and the direction to the view that faces it most squarely (occluded or not; 0 where the
    surface faces away from every view: what no input shows).
    """
    colours, weights, seen = lift_views(atlas, vertices, images, masks, viewmats, Ks, heights, mouth_openings)
    return fuse_evidence(atlas, colours, weights, mirror, back_rgb, seen), seen.amax(0)

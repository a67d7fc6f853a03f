"""Whole head beyond the bald template: hair height map carved from the head silhouettes.

Every texel of the back-of-head chart (scalp, ears, neck) gets a height: its Gaussian sits that
far along the surface normal. The height is carved from the head silhouette (person mask minus
clothes, :mod:`flexavatar.tracking.parsing`) of every input view, as a visual hull along the
normals: walking out from the surface point, the texel's ray stays inside the hull until it
leaves the silhouette of some view. A view constrains a texel well when its normal is across
the view ray (the silhouette rim); where no view does (the back of the head in a front photo)
the height is interpolated over the chart from the constrained texels (push-pull), never
above the hull. Texels of the face and back-of-head charts whose surface point falls outside
a view's head silhouette (a template skull wider than the person's) move inward along their
normals until every view has them on the head (MAX_INSET_M at most); past that, below the
chin (a neck over a collar), and where the texel faces the view it is off in (the front of a
template ear beyond the person's: along its normal it would only sink behind the ear), they
are outside the hull and become transparent.

Lifted hair Gaussians are strand-shaped: longer along the hair's flow (away from the crown,
down the back and sides) than across it, so hair reads as strands rather than round blobs.

Everything is anchored on the mesh, so the hair moves rigidly with the head (and the neck's
Gaussians with the neck), while the face keeps its expression-driven Gaussians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flexavatar.head.atlas import REGION_INDEX
from flexavatar.model.evidence import project_texels, push_pull_fill
from flexavatar.model.field import ATTRIBUTE_SLICES, NUM_ATTRIBUTES
from flexavatar.tracking.parsing import PersonParts, split_person_mask

#: Longest hair the carving looks for, metres along the normal (shoulder-length hair beside the neck).
MAX_HEIGHT_M = 0.15
#: Samples along each normal ray.
HEIGHT_STEPS = 40
#: A view constrains a texel's height when sin² of the angle between normal and view ray is above this.
RIM_SIN2 = 0.6
#: Heights stop this far inside the silhouette: two of a lifted Gaussian's sigmas along the normal
#: (SHELL_MAX_SIGMA_M), so the rendered edge (alpha 0.5) lands on the silhouette, not beyond it.
SHELL_MARGIN_M = 0.008
#: A texel seen this squarely (cosine) on skin carries no hair.
BARE_COSINE = 0.4
#: The hair shell's in-plane size grows like the sphere it lies on: radius of that sphere (m).
SHELL_RADIUS_M = 0.08
#: Extra log in-plane scale of a lifted texel (x1.5): the template's spacing leaves gaps on a shell.
SHELL_WIDEN_LOG = 0.25
#: Thickness along the normal: a lifted Gaussian is this fraction of its height thick (no gaps),
#: up to SHELL_MAX_SIGMA_M (a thicker Gaussian reads as fog, not hair).
SHELL_THICKNESS = 0.15
SHELL_MAX_SIGMA_M = 0.004
#: Hair grows behind this plane of the neutral head (z, metres: about the ear canals) or above
#: the brows: not on the front of the neck or under the chin.
HAIR_FRONT_Z_M = 0.0
#: A surface texel off the head in some view (a template skull wider than the person's) is moved
#: inward along its normal until every view has it on the head, at most this far (metres); further
#: than that (a neck below the collar) it is outside the hull and transparent.
MAX_INSET_M = 0.04
#: ...but a texel off the head in a view whose ray it faces more squarely than this (cosine) is cut,
#: not moved: along its normal it moves away from that camera, not towards the silhouette.
INSET_MAX_COSINE = 0.7
#: A lifted texel's centre must lie this box (px) in from every view's silhouette edge: heights
#: interpolated or blurred up to the edge make blobs past it (rim texels sit SHELL_MARGIN_M in).
LIFT_ERODE = 7
INSET_STEPS = 16
#: A kept surface texel needs this fraction of the atlas texels in its SPECK_WINDOW x SPECK_WINDOW
#: UV neighbourhood kept too, else it is cut: the head mask's ragged edge at a collar leaves
#: single texels of the neck standing among cut ones, and each renders as a dark dot floating
#: beside the neck (astronaut.png: 3 in every reenactment frame). One pass: repeated, it eats
#: into a collar band the head mask does hold (astronaut.png head PSNR 19.79 -> 18.82 dB, one
#: pass 19.55).
SPECK_WINDOW = 5
MIN_KEPT_FRACTION = 0.25
#: Opacity logit added where a texel lies outside the visual hull (sigmoid(logit(0.99) - 12) < 0.001).
OUTSIDE_HULL_LOGIT = -12.0
#: A view whose head silhouette covers less than this fraction of the crop constrains nothing.
MIN_HEAD_FRACTION = 0.02
#: Fewer hair pixels than this (all views) and the back of the head is taken to be skin.
MIN_HAIR_PIXELS = 400
#: Strand texture of the unseen hair (:func:`strand_texture`): cycles per turn around the head of
#: its sinusoids (a lock every 10-30 mm on a head of 0.55 m circumference: the shell's Gaussians
#: are ~5 mm apart, so finer strands would alias into noise), the box (px) whose mean the visible
#: hair's strand contrast is measured against, the bounds of that contrast, the phases' seed.
STRAND_CYCLES = (19, 29, 41, 53)
STRAND_BLUR_PX = 7
STRAND_CONTRAST_RANGE = (0.04, 0.3)
STRAND_SEED = 13
#: Lifted hair Gaussians are this much longer along the strands and thinner across (about the
#: same area): hair reads as strands, not round blobs, in which MediaPipe found faces on the back
#: of the head (7 of 105 back-quarter frames of five heads; 0 now). More (2.0 / 0.6) frayed the
#: silhouette: single_face.mp4's held-out frames lost 0.5 dB and IoU 0.012. Strands run away
#: from a crown this far (m) behind the top of the head.
STRAND_ALONG = 1.3
STRAND_ACROSS = 0.8
CROWN_BACK_M = 0.03
#: Without hair hanging below the lips beside the face, the back of the neck carries no hair from
#: the upper lip's height down and its unseen colour is skin (a short cut's nape), blended over
#: this far (metres): not a mullet of hair colour to the collar.
NAPE_BLEND_M = 0.015
#: MultiPIE-68 landmarks (of the fitted mesh) that place the seeds of the mask split.
CHIN, BROWS, UPPER_LIP, LOWER_EYELIDS = 8, (19, 24), 51, (40, 47)
#: The skin seed spans the nose and inner cheeks only (hair may fall over the outer cheeks).
CHEEK_HALF_WIDTH_M = 0.045


@dataclass
class WholeHead:
    """Per-texel whole-head geometry and the parsed masks it was carved from.

    heights [N] metres along the normal: hair (> 0) on the back-of-head chart; < 0 where the
    template's surface is off the head in a view and moves inward onto it (a narrower skull, on
    either chart); rim [N] in [0,1] how well a silhouette constrained each height; outside_hull [N]
    bool: the texel stays off some view's head silhouette even moved inward (transparent); flow
    [N] radians (optional, :func:`hair_flow`): the direction hair runs at each texel, in its tangent frame;
    parts: the skin / hair / clothes split of each view; back_rgb [N,3] (or [3]): the colour the
    unseen back of the head takes (the median hair colour with the visible hair's strand
    texture, :func:`strand_texture`; skin for a head with too little hair to measure).
    """

    heights: torch.Tensor
    rim: torch.Tensor
    outside_hull: torch.Tensor
    parts: PersonParts
    back_rgb: torch.Tensor
    flow: torch.Tensor | None = None


def _splat(pix: torch.Tensor, keep: torch.Tensor, size: int, grow: int) -> torch.Tensor:
    """0/1 map [V,1,S,S] of the pixels hit by points pix [V,N,2] where keep [V,N], dilated by ``grow`` px."""
    num_views = pix.shape[0]
    col = pix[..., 0].floor().long().clamp(0, size - 1)
    row = pix[..., 1].floor().long().clamp(0, size - 1)
    flat = torch.zeros(num_views, size * size, device=pix.device)
    flat.scatter_reduce_(1, row * size + col, keep.float(), reduce="amax")
    out = flat.view(num_views, 1, size, size)
    return F.max_pool2d(out, 2 * grow + 1, 1, grow) if grow else out


def _project(points: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """points [V,M,3] metres -> pixels [V,M,2] of each view."""
    cam = points @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]
    return (cam @ Ks.transpose(1, 2))[..., :2] / cam[..., 2:3].clamp_min(1e-6)


def _off_silhouette_per_view(pix: torch.Tensor, silhouettes: torch.Tensor) -> torch.Tensor:
    """[V,N] bool: points at pix [V,N,2] fall off silhouettes [V,1,S,S] in that view (outside the
    crop nothing is known: such a point is kept)."""
    size = silhouettes.shape[-1]
    grid = (pix / size * 2 - 1)[:, :, None] * size / (size + 2)
    on = F.grid_sample(F.pad(silhouettes, (1, 1, 1, 1), value=1.0), grid, align_corners=False)
    return on[:, 0, :, 0] < 0.5


def _off_silhouette(pix: torch.Tensor, silhouettes: torch.Tensor) -> torch.Tensor:
    """[N] bool: points at pix [V,N,2] fall off silhouettes [V,1,S,S] in some view."""
    return _off_silhouette_per_view(pix, silhouettes).any(0)


def inset_depths(points: torch.Tensor, normals: torch.Tensor, silhouettes: torch.Tensor, viewmats, Ks) -> torch.Tensor:
    """How far inward each texel's point must move along its normal to be on the head in every view.

    points, normals [V,N,3] metres (each view's fitted mesh); silhouettes [V,1,S,S] (eroded head
    masks). Returns depths [N] metres >= 0 (0: already on the head), +inf where even MAX_INSET_M
    inward is off the head in some view. The mesh moves with each view's expression, so the
    depth is measured in each view along its own points and normals; a texel needs the deepest.
    """
    num_views, num_texels, _ = points.shape
    steps = torch.linspace(0.0, MAX_INSET_M, INSET_STEPS, device=points.device, dtype=points.dtype)
    ray = points[:, :, None] - normals[:, :, None] * steps[None, None, :, None]  # [V,N,K,3]
    pix = _project(ray.reshape(num_views, -1, 3), viewmats, Ks)  # [V,N*K,2]
    size = silhouettes.shape[-1]
    grid = (pix / size * 2 - 1)[:, :, None] * size / (size + 2)
    on = F.grid_sample(F.pad(silhouettes, (1, 1, 1, 1), value=1.0), grid, align_corners=False)
    on_all = (on[:, 0, :, 0].view(num_views, num_texels, INSET_STEPS) >= 0.5).all(0)  # [N,K]
    first = torch.where(on_all, steps, torch.full_like(steps, float("inf"))).amin(-1)
    return first


def parsing_seeds(atlas, canonical, landmarks, neutral_landmarks, pix, visible, cosine, masks):
    """Seeds of :func:`~flexavatar.tracking.parsing.split_person_mask` from the fitted mesh.

    canonical [N,3] texel points on the neutral template (metres); landmarks [V,68,2] the
    fitted mesh's MultiPIE-68 landmarks in pixels, neutral_landmarks [68,3] the same on the
    neutral mesh; pix [V,N,2], visible [V,N], cosine [V,N] from
    :func:`~flexavatar.model.evidence.project_texels`; masks [V,1,S,S].
    Returns skin_seed, hair_seed [V,1,S,S], hang_rows [V], face and neck [V,1,S,S] (the face's
    and the head's silhouettes): the arguments of ``split_person_mask`` after images and masks.
    """
    size = masks.shape[-1]
    face = atlas.region == REGION_INDEX["face"]
    y = canonical[:, 1]
    lip_y = neutral_landmarks[UPPER_LIP, 1]
    eyelid_y = neutral_landmarks[list(LOWER_EYELIDS), 1].mean()
    cheeks = face & (y > lip_y + 0.005) & (y < eyelid_y - 0.005) & (canonical[:, 0].abs() < CHEEK_HALF_WIDTH_M)
    solid = (masks > 0.5).float()
    skin_seed = _splat(pix, visible & (cosine > 0.5) & cheeks[None], size, 1) * solid
    face_cover = _splat(pix, visible & face[None], size, 3)
    head_cover = _splat(pix, visible, size, 3)
    rows = torch.arange(size, device=masks.device, dtype=pix.dtype)[None, None, :, None]
    brow_rows = landmarks[:, list(BROWS), 1].mean(1)  # [V]
    hair_seed = (rows < brow_rows[:, None, None, None]).float() * (1 - face_cover) * solid
    return skin_seed, hair_seed, landmarks[:, UPPER_LIP, 1], face_cover, head_cover


def carve_heights(
    points: torch.Tensor,
    normals: torch.Tensor,
    head_masks: torch.Tensor,
    hair_masks: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visual hull along the normals.

    points, normals [V,N,3] (metres, each view's fitted mesh); head_masks, hair_masks
    [V,1,S,S] in [0,1]. Returns hull height [N] metres (min over views of how far the normal
    ray stays inside the silhouette; 0 where the silhouette's edge there is skin, not hair: an
    ear, a neck) and rim [N] in [0,1] (how squarely the view that set it saw the ray from the side).
    """
    num_views, num_texels, _ = points.shape
    size = head_masks.shape[-1]
    steps = torch.linspace(0.0, MAX_HEIGHT_M, HEIGHT_STEPS, device=points.device, dtype=points.dtype)
    ray = points[:, :, None] + normals[:, :, None] * steps[None, None, :, None]  # [V,N,K,3]
    cam = ray @ viewmats[:, None, :3, :3].transpose(-1, -2) + viewmats[:, None, None, :3, 3]
    pix = (cam @ Ks[:, None].transpose(-1, -2))[..., :2] / cam[..., 2:3].clamp_min(1e-6)
    grid = (pix / size * 2 - 1).reshape(num_views, num_texels * HEIGHT_STEPS, 1, 2)
    # outside the crop nothing is known: a surface point there is kept (the neck runs off the
    # bottom edge), but no hair is grown past the edge, and such an exit constrains nothing
    padded = F.pad(torch.cat([head_masks, hair_masks], 1), (1, 1, 1, 1), value=1.0)
    scale = size / (size + 2)
    sampled = F.grid_sample(padded, grid * scale, mode="bilinear", align_corners=False)
    inside = (sampled[:, 0].view(num_views, num_texels, HEIGHT_STEPS) > 0.5).float()
    hair = sampled[:, 1].view(num_views, num_texels, HEIGHT_STEPS)
    pix = pix.view(num_views, num_texels, HEIGHT_STEPS, 2)
    in_image = ((pix >= 0) & (pix < size)).all(-1).float()
    run = torch.cumprod(inside * in_image, dim=-1)  # 1 until the ray first leaves the silhouette
    exits = run[..., -1] < 1
    first_out = run.sum(-1).long().clamp(max=HEIGHT_STEPS - 1)
    by_silhouette = exits & (in_image.gather(-1, first_out[..., None])[..., 0] > 0)
    step = MAX_HEIGHT_M / (HEIGHT_STEPS - 1)
    # the last sample inside, less a Gaussian's reach, so the shell's edge stays inside
    height = ((run.sum(-1) - 1) * step - SHELL_MARGIN_M).clamp_min(0)  # [V,N]
    last_inside = (run.sum(-1).long() - 1).clamp(min=0)
    skin_edge = by_silhouette & (hair.gather(-1, last_inside[..., None])[..., 0] < 0.5)
    height = torch.where(skin_edge, torch.zeros_like(height), height)
    height = torch.where(exits, height, torch.full_like(height, MAX_HEIGHT_M))
    centres = -(viewmats[:, :3, :3].transpose(1, 2) @ viewmats[:, :3, 3:])[..., 0]  # [V,3]
    view_dir = F.normalize(points - centres[:, None], dim=-1)
    sin2 = 1 - (normals * view_dir).sum(-1).square()
    hull, which = height.min(0)
    rim = torch.where(by_silhouette, sin2, torch.zeros_like(sin2)).gather(0, which[None])[0]
    return hull, rim


def fill_heights(atlas, hull: torch.Tensor, rim: torch.Tensor, chart: torch.Tensor) -> torch.Tensor:
    """Heights [N] over ``chart`` [N] bool: rim-constrained texels keep their hull height, the rest
    is interpolated over the chart (push-pull), capped by the hull; 0 off the chart."""
    weight = ((rim - RIM_SIN2) / (1 - RIM_SIN2)).clamp(0, 1) * chart
    height_map = atlas.scatter((hull * chart)[None, :, None])[0]  # [1,R,R]
    weight_map = atlas.scatter(weight[None, :, None])[0]
    filled = push_pull_fill(height_map[None], weight_map[None])[0]
    # a light blur inside the chart: neighbouring strands, not a staircase
    chart_map = atlas.scatter(chart.float()[None, :, None])[0]
    blurred = F.avg_pool2d((filled * chart_map)[None], 3, 1, 1) / F.avg_pool2d(chart_map[None], 3, 1, 1).clamp_min(1e-6)
    heights = atlas.gather(blurred)[0, :, 0]
    return torch.minimum(heights, hull) * chart


def whole_head(atlas, landmark_ids, neutral, vertices, images, masks, viewmats, Ks) -> WholeHead:
    """Parse the person masks and carve the hair heights: see the module docstring.

    atlas: UVAtlas; landmark_ids [68] the ICT vertex of each MultiPIE-68 landmark; neutral
    [1,Vtx,3] the neutral mesh of this identity and vertices [V,Vtx,3] each view's fitted mesh
    (metres); images [V,3,S,S] in [0,1]; masks [V,1,S,S] person masks; viewmats [V,4,4]; Ks [V,3,3].
    """
    points, frames = atlas.surface_and_frames(vertices)
    normals = frames[..., 2]
    size = images.shape[-1]
    pix, visible, cosine = project_texels(points, normals, viewmats, Ks, size, size)
    landmarks = _project(vertices[:, landmark_ids], viewmats, Ks)
    canonical = atlas.surface_points(neutral)[0]
    seeds = parsing_seeds(atlas, canonical, landmarks, neutral[0, landmark_ids], pix, visible, cosine, masks)
    lip_rows, face_cover = seeds[2], seeds[3]
    parts = split_person_mask(images, masks, *seeds)
    # a view without a usable head silhouette (no person mask) constrains nothing
    usable = parts.head.flatten(1).mean(1) > MIN_HEAD_FRACTION
    silhouettes = torch.where(usable[:, None, None, None], parts.head, torch.ones_like(parts.head))
    hull, rim = carve_heights(points, normals, silhouettes, parts.hair, viewmats, Ks)
    # a surface point is cut when it is off the head in some view (one pixel in from the
    # silhouette's edge: the shell of Gaussians reaches a little beyond its centres)
    eroded = -F.max_pool2d(-silhouettes, 3, 1, 1)
    off_per_view = _off_silhouette_per_view(pix, eroded)  # [V,N]
    outside = off_per_view.any(0)
    grid = (pix / size * 2 - 1)[:, :, None]
    # where a view sees the surface itself as skin (face, neck, ears), there is no hair on it
    skin = F.grid_sample(parts.skin, grid, mode="bilinear", align_corners=False)[:, 0, :, 0]  # [V,N]
    bare = ((skin > 0.5) & visible & (cosine > BARE_COSINE)).any(0)
    hull = torch.where(bare, torch.zeros_like(hull), hull)
    rim = torch.where(bare, torch.ones_like(rim), rim)
    brow_y = neutral[0, landmark_ids[list(BROWS)], 1].mean()
    front = (canonical[:, 2] > HAIR_FRONT_Z_M) & (canonical[:, 1] < brow_y)
    chart = (atlas.region == REGION_INDEX["back_head"]) & ~front
    heights = fill_heights(atlas, hull, rim, chart)
    # below the chin hair is only where a silhouette shows it, never interpolated into a collar;
    # without long hair (none hangs beside the face), not below the nape either (a short cut)
    chin_y = neutral[0, landmark_ids[CHIN], 1]
    neck = canonical[:, 1] < chin_y
    nape_y = neutral[0, landmark_ids[UPPER_LIP], 1]
    long_hair = hangs_below_lips(parts, lip_rows, face_cover)
    unhaired = neck & (rim < RIM_SIN2) if long_hair else canonical[:, 1] < nape_y
    heights = torch.where(unhaired, torch.zeros_like(heights), heights)
    # a surface point off the head moves inward onto it (a narrower skull than the template's:
    # no hole beside the ear); below the chin (a neck, a collar) and where it stays off, it is cut
    carved = (atlas.region == REGION_INDEX["back_head"]) | (atlas.region == REGION_INDEX["face"])
    depth = inset_depths(points, normals, eroded, viewmats, Ks)
    # ...but not a surface that faces the view it is off in (the front of a template ear beyond
    # the person's): along its normal it only sinks away from the camera, up to MAX_INSET_M, and
    # perspective alone brings it onto the head, 2-4 cm behind the ear, where it shows through the
    # hair as skin-coloured specks
    faces_off = (off_per_view & (cosine > INSET_MAX_COSINE)).any(0)
    inset = outside & carved & ~neck & torch.isfinite(depth) & ~faces_off
    heights = torch.where(inset, -depth.nan_to_num(posinf=0.0), heights)
    outside = outside & ~inset
    # a lifted texel whose centre some view shows off the head, or at its edge (heights
    # interpolated or blurred past the hull, a neck texel lifted beside a collar), is cut too
    lifted = _project(points + normals * heights[None, :, None], viewmats, Ks)
    inner = -F.max_pool2d(-silhouettes, LIFT_ERODE, 1, LIFT_ERODE // 2)
    outside = outside | (_off_silhouette(lifted, inner) & (heights > 0))
    # every surface texel is cut where a view shows it off the head (the front of the neck over a
    # shirt too, which carries no hair and so is not on the hair chart); a kept texel among cut ones
    # (the mask's edge at the collar) is cut as well: alone it renders as a floating dot
    outside = outside & carved
    outside = outside | (lone_texels(atlas, ~outside) & carved)
    return WholeHead(heights=heights, rim=rim * chart, outside_hull=outside, parts=parts,
                     back_rgb=back_of_head_rgb(images, parts, canonical, None if long_hair else nape_y),
                     flow=hair_flow(atlas, neutral))  # fmt: skip


def lone_texels(atlas, kept: torch.Tensor) -> torch.Tensor:
    """[N] bool: kept texels (``kept`` [N] bool) whose UV neighbourhood (:data:`SPECK_WINDOW`
    texels square) holds fewer than :data:`MIN_KEPT_FRACTION` kept ones among its atlas texels
    (a chart's edge, where the atlas ends, is not a cut)."""
    kept_map = atlas.scatter(kept.float()[None, :, None])  # [1,1,R,R]
    valid_map = atlas.scatter(torch.ones_like(kept, dtype=torch.float32)[None, :, None])

    def around(uv_map: torch.Tensor) -> torch.Tensor:  # neighbours, the texel itself left out
        return F.avg_pool2d(uv_map, SPECK_WINDOW, 1, SPECK_WINDOW // 2, count_include_pad=True) * SPECK_WINDOW**2 - uv_map

    fraction = atlas.gather(around(kept_map) / around(valid_map).clamp_min(1.0))[0, :, 0]
    return kept & (fraction < MIN_KEPT_FRACTION)


def hair_flow(atlas, neutral: torch.Tensor) -> torch.Tensor:
    """[N] radians: the direction hair runs at each texel of a neutral head [1,Vtx,3] (metres),
    as the angle from the first tangent axis of the texel's frame: away from the crown (a point
    CROWN_BACK_M behind the top of the head), along the surface: over the scalp and down the
    sides and the back."""
    points, frames = atlas.surface_and_frames(neutral)
    points, frames = points[0], frames[0]
    top = neutral[0, neutral[0, :, 1].argmax()]
    crown = top - top.new_tensor([top[0], 0.0, CROWN_BACK_M])
    away = points - crown
    return torch.atan2((away * frames[..., 1]).sum(-1), (away * frames[..., 0]).sum(-1))


def hangs_below_lips(parts: PersonParts, lip_rows: torch.Tensor, face: torch.Tensor) -> bool:
    """Whether hair hangs below the upper lip's rows [V] beside the face (outside ``face``
    [V,1,S,S], the fitted face's silhouette: a beard or a dark collar under the chin is not long
    hair) in the views: MIN_HAIR_PIXELS of it or more."""
    size = parts.hair.shape[-1]
    rows = torch.arange(size, device=parts.hair.device, dtype=parts.hair.dtype)[None, None, :, None]
    hanging = (parts.hair > 0.5) & (rows > lip_rows.to(rows.dtype)[:, None, None, None]) & (face < 0.5)
    return int(hanging.sum()) >= MIN_HAIR_PIXELS


def back_of_head_rgb(images, parts: PersonParts, canonical, nape_y=None) -> torch.Tensor:
    """[N,3] colour of the unseen back of the head: the visible hair's (:func:`back_colour`)
    with its strand texture; below ``nape_y`` (metres, canonical y [N]; None: nowhere: long
    hair covers the nape) the neck's skin colour, blended over NAPE_BLEND_M."""
    hair = back_colour(images, parts)[None] * strand_texture(canonical, hair_contrast(images, parts))[:, None]
    skin_rgb = None if nape_y is None else solid_median(images, parts.skin)
    if skin_rgb is None:
        return hair
    nape = ((nape_y - canonical[:, 1]) / NAPE_BLEND_M).clamp(0, 1)[:, None]  # 0 above, 1 a blend below
    return hair * (1 - nape) + skin_rgb[None] * nape


def back_colour(images: torch.Tensor, parts: PersonParts) -> torch.Tensor:
    """[3] colour of the back of the head: the mean colour of the solid hair pixels of all views
    (the median per channel: highlights and strands of background do not tint it); of the skin
    when fewer than MIN_HAIR_PIXELS are hair."""
    for part in (parts.hair, parts.skin):
        colour = solid_median(images, part)
        if colour is not None:
            return colour
    return images.new_tensor([0.22, 0.16, 0.12])


def solid_median(images: torch.Tensor, part: torch.Tensor) -> torch.Tensor | None:
    """[3] per-channel median colour of images [V,3,S,S] where part [V,1,S,S] is solid (> 0.9);
    None when fewer than MIN_HAIR_PIXELS are."""
    solid = part.reshape(-1) > 0.9
    if int(solid.sum()) < MIN_HAIR_PIXELS:
        return None
    return images.permute(0, 2, 3, 1).reshape(-1, 3)[solid].median(0).values


def hair_contrast(images: torch.Tensor, parts: PersonParts) -> torch.Tensor:
    """Relative strand contrast of the visible hair (scalar tensor): the standard deviation of the
    luminance of solid hair pixels less its local mean (a STRAND_BLUR_PX box: shading and the
    hair's outline removed), over the mean luminance; STRAND_CONTRAST_RANGE bounds it (little
    hair seen: the lower end)."""
    luminance = images.mean(1, keepdim=True)  # [V,1,S,S]
    solid = (parts.hair > 0.9).to(images.dtype)
    k = STRAND_BLUR_PX
    weight = F.avg_pool2d(solid, k, 1, k // 2, count_include_pad=False)
    local = F.avg_pool2d(luminance * solid, k, 1, k // 2, count_include_pad=False) / weight.clamp_min(1e-6)
    inner = (solid > 0) & (weight > 0.9)  # away from the hair's edge: no background in the mean
    low, high = STRAND_CONTRAST_RANGE
    if int(inner.sum()) < MIN_HAIR_PIXELS:
        return images.new_tensor(low)
    detail = (luminance - local)[inner]
    return (detail.std() / luminance[inner].mean().clamp_min(0.05)).clamp(low, high)


def strand_texture(canonical: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """[N] luminance factor (mean 1) of hair strands over the head, for what no view sees.

    canonical [N,3] texel points on the neutral head (metres). Strands run down the head: the
    factor varies around it (sums of sinusoids of the azimuth, STRAND_CYCLES per turn, fixed
    phases; locks converge at the crown), with a standard deviation of ``contrast``, the visible
    hair's (:func:`hair_contrast`): the back of the head has that hair's texture, not a flat colour.
    """
    generator = torch.Generator().manual_seed(STRAND_SEED)
    cycles = torch.tensor(STRAND_CYCLES, dtype=canonical.dtype)
    phases = torch.rand(len(STRAND_CYCLES), generator=generator, dtype=canonical.dtype) * 2 * torch.pi
    cycles, phases = cycles.to(canonical.device), phases.to(canonical.device)
    azimuth = torch.atan2(canonical[:, 0], -canonical[:, 2])  # [N], 0 at the back of the head
    strands = torch.sin(azimuth[:, None] * cycles + phases).sum(-1) / (len(STRAND_CYCLES) / 2) ** 0.5
    return (1 + contrast * strands).clamp_min(0.2)


def shell_maps(atlas, whole: WholeHead, spacing: torch.Tensor, scale_normal: float, offset_unit_m: float) -> torch.Tensor:
    """Base attribute maps [14,R,R] that put each texel's Gaussian on the hair shell.

    Offset along the normal = height; in-plane scale grows by (1 + height / SHELL_RADIUS_M)
    (the shell's texels spread apart as it grows) and the normal scale to SHELL_THICKNESS of the
    height, so a lifted shell has no holes; lifted texels are STRAND_ALONG longer along the
    hair's flow (``whole.flow``, when given) and STRAND_ACROSS thinner across it, turned to it;
    texels outside the hull are made transparent.
    spacing [N] metres (the template's texel spacing); scale_normal: the config's normal sigma
    as a fraction of the spacing.
    """
    heights = whole.heights
    values = torch.zeros(atlas.num_texels, NUM_ATTRIBUTES, device=heights.device, dtype=heights.dtype)
    values[:, ATTRIBUTE_SLICES["offset"].start + 2] = heights / offset_unit_m
    scale = ATTRIBUTE_SLICES["scale"]
    # lifted texels spread apart like a sphere's and get a little wider still: an opaque shell
    lifted = (heights / SHELL_MARGIN_M).clamp(0, 1)
    values[:, scale.start : scale.start + 2] = (torch.log1p(heights / SHELL_RADIUS_M) + lifted * SHELL_WIDEN_LOG)[:, None]
    normal_sigma = spacing * scale_normal
    thickness = (SHELL_THICKNESS * heights).clamp(max=SHELL_MAX_SIGMA_M)
    values[:, scale.start + 2] = torch.log(torch.maximum(normal_sigma, thickness) / normal_sigma)
    if whole.flow is not None:
        # lifted hair: Gaussians long along the strands and thin across them, turned to the flow
        values[:, scale.start] += lifted * math.log(STRAND_ALONG)
        values[:, scale.start + 1] += lifted * math.log(STRAND_ACROSS)
        rotation = ATTRIBUTE_SLICES["rotation"].start
        turn = torch.where(heights > 0, whole.flow, torch.zeros_like(whole.flow))  # the face keeps its frame
        values[:, rotation] = torch.cos(turn / 2) - 1  # a turn about the normal, as a delta from identity
        values[:, rotation + 3] = torch.sin(turn / 2)
    values[:, ATTRIBUTE_SLICES["opacity"].start] = OUTSIDE_HULL_LOGIT * whole.outside_hull.to(heights.dtype)
    return atlas.scatter(values[None])[0]

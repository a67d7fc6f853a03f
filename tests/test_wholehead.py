"""Whole-head avatars: mask split, hair carving, completion, refinement (issue 13).

On the public photos, with the shipped checkpoint: the rendered silhouette at the source view
matches the head part of the person mask, a turntable shows a face at the front and none at
the back, and the back views carry no colour noise, with and without refinement. Refinement
never makes held-out frames of single_face.mp4 worse and makes the source view better.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flexavatar.eval.wholehead import (
    PUBLIC_PHOTOS,
    evaluate_photo,
    fit_photo,
    head_parts,
    turntable_check,
    unseen_skin_speckle,
)
from flexavatar.head.atlas import REGION_INDEX, mirror_texels
from flexavatar.model import hair
from flexavatar.model.field import ATTRIBUTE_SLICES
from flexavatar.model.hair import (
    CHIN,
    MAX_HEIGHT_M,
    MAX_INSET_M,
    NAPE_BLEND_M,
    STRAND_ACROSS,
    STRAND_ALONG,
    STRAND_CONTRAST_RANGE,  # fmt: skip
    UPPER_LIP,
    hair_contrast,
    lone_texels,
)
from flexavatar.model.network import FACING_GROW, smooth_where_unseen
from flexavatar.video import iter_frames

REFINE_SECONDS = 10.0  # the app's refinement budget


@pytest.fixture(scope="module")
def photo_rows(shipped_model, shared_media):
    """evaluate_photo of every public photo, feed-forward and refined: {(photo, seconds): row}."""
    rows = {}
    for name in PUBLIC_PHOTOS:
        for seconds in (0.0, REFINE_SECONDS):
            rows[name, seconds] = evaluate_photo(shipped_model, str(shared_media / name), seconds)
    return rows


# ------------------------------------------------------------------------------ geometry, parsing
def test_mirror_map_is_an_involution_across_x(untrained_model):
    model = untrained_model
    canonical = model.atlas.surface_points(model.head.vertices())[0]
    mirror = mirror_texels(model.atlas, canonical)
    face = model.atlas.region == REGION_INDEX["face"]
    paired = face & (mirror != torch.arange(len(mirror)))
    assert paired[face].float().mean() > 0.9  # nearly every face texel has a partner
    error = (canonical[mirror[paired]] * torch.tensor([-1.0, 1.0, 1.0]) - canonical[paired]).norm(dim=-1)
    assert error.median() < 0.003  # metres: the partner sits at the mirror image
    assert (mirror[mirror[paired]] == torch.arange(len(mirror))[paired]).float().mean() > 0.8
    left_eye = model.atlas.region == REGION_INDEX["iris_left"]
    assert (model.atlas.region[mirror[left_eye]] == REGION_INDEX["iris_right"]).float().mean() > 0.9


@pytest.mark.parametrize("name", ["single_face.jpg", "0-f15-hao-ph.jpg"])
def test_mask_split_keeps_clothes_off_the_head(shipped_model, shared_media, name):
    """single_face.jpg: short black hair over a black shirt; 0-f15-hao-ph.jpg: long hair to the
    shoulders over a white top. The shirt must be clothes, the long hair must be hair."""
    model = shipped_model
    fit = fit_photo(model, str(shared_media / name))
    with torch.no_grad():
        parts = head_parts(model, fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
    size = fit["crops"].shape[-1]
    total = parts.skin + parts.hair + parts.clothes
    assert torch.allclose(total, fit["masks"], atol=1e-5)
    bottom = slice(size - size // 10, size)  # the last tenth of the crop: shoulders
    top = (fit["masks"][0, 0, : size // 4] > 0.5)  # the top of the head: hair for both
    assert parts.hair[0, 0, : size // 4][top].mean() > 0.6
    if name == "single_face.jpg":
        corners = parts.clothes[0, 0, bottom][:, list(range(size // 8)) + list(range(size - size // 8, size))]
        assert corners.mean() > 0.8  # the black shirt at the shoulders is clothes, not hair
    else:
        sides = parts.hair[0, 0, size // 2 : size - size // 8][:, list(range(size // 5)) + list(range(size - size // 5, size))]
        solid = (fit["masks"][0, 0, size // 2 : size - size // 8][:, list(range(size // 5)) + list(range(size - size // 5, size))] > 0.5)
        assert sides[solid].mean() > 0.6  # the long hair beside the neck is hair


def test_hair_grows_beyond_the_template_where_the_photo_shows_it(shipped_model, shared_media):
    model = shipped_model
    fit = fit_photo(model, str(shared_media / "0-f15-hao-ph.jpg"))
    with torch.no_grad():
        shape = model.whole_head(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
    back = model.atlas.region == REGION_INDEX["back_head"]
    canonical = model.atlas.surface_points(model.head.vertices(fit["identity"][None]))[0]
    sides = back & (canonical[:, 0].abs() > 0.06) & (canonical[:, 1] > 0)  # beside the ears
    behind = back & (canonical[:, 2] < -0.05) & (canonical[:, 1] > 0)  # the back of the skull
    assert (shape.heights[~back] <= 0).all()  # the face keeps its Gaussians (moved inward at most)
    assert 0.005 < float(shape.heights[sides].median()) < MAX_HEIGHT_M  # long hair, not a skull cap
    assert 0.005 < float(shape.heights[behind].median()) < MAX_HEIGHT_M  # interpolated where unseen
    assert torch.isfinite(shape.heights).all()


def test_a_narrow_skull_moves_inward_instead_of_leaving_a_hole(shipped_model, shared_media):
    """face_noface.mov frame 10: short hair on a head narrower than ICT's, so the side of the
    template's skull lies off the photo's head mask. It moves inward onto it (negative heights)
    instead of turning transparent (the profile showed a see-through hole beside the ear: 877 of
    these 1879 texels were cut before, 59 now)."""
    model = shipped_model
    frame = list(iter_frames(shared_media / "face_noface.mov", max_frames=11))[10]
    fit = fit_photo(model, frame)
    with torch.no_grad():
        shape = model.whole_head(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
    neutral = model.head.vertices(fit["identity"][None])
    canonical = model.atlas.surface_points(neutral)[0]
    chin_y = neutral[0, model.head.landmarks_multipie68[CHIN], 1]
    side = model.atlas.region_mask("face", "back_head") & (canonical[:, 0].abs() > 0.05) & (canonical[:, 1] > 0)
    assert canonical[:, 1][side].min() > chin_y
    assert shape.outside_hull[side].float().mean() < 0.06  # kept ...
    assert (shape.heights[side] < 0).float().mean() > 0.2  # ... moved inward
    assert shape.heights.min() >= -MAX_INSET_M - 1e-6


def test_a_template_ear_beyond_the_head_is_cut_not_sunk_behind_it(shipped_model, shared_media):
    """face_noface.mov frame 10: the front of ICT's ear lies beyond the photo's head mask and faces
    the camera. Moved inward along its normal it only sank away from the camera, until perspective
    brought it onto the head 2-4 cm behind the ear, where it showed through the hair of the
    turntable's side views as skin-coloured specks (side specks 0.20 per mille before, 0.01 now;
    the source view is unchanged)."""
    model = shipped_model
    frame = list(iter_frames(shared_media / "face_noface.mov", max_frames=11))[10]
    fit = fit_photo(model, frame)
    with torch.no_grad():
        shape = model.whole_head(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
        avatar = model.encode(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
        points, frames = model.atlas.surface_and_frames(model.mesh(fit["identity"], fit["expressions"]))
    camera_centre = -fit["cameras"][0].viewmat[:3, :3].T @ fit["cameras"][0].viewmat[:3, 3]
    towards_camera = torch.nn.functional.normalize(camera_centre.to(points) - points[0], dim=-1)
    facing = (frames[0, :, :, 2] * towards_camera).sum(-1)
    sunk = shape.heights < -0.005
    assert sunk.sum() > 100  # the narrow skull's sides still move inward...
    assert facing[sunk].max() <= hair.INSET_MAX_COSINE + 0.05  # ...but nothing that faces the camera
    assert turntable_check(model, avatar)["side_specks"] < 0.08


def test_lone_texels_are_specks_not_chart_edges(untrained_model):
    """A kept texel among cut ones is a speck; a kept texel whose neighbours are off the atlas (a
    chart's edge) is not; a cut texel is never one."""
    atlas = untrained_model.atlas
    kept = torch.ones(atlas.num_texels, dtype=torch.bool)
    assert not lone_texels(atlas, kept).any()  # everything kept: chart edges included
    face = torch.nonzero(atlas.region_mask("face"))[:, 0]
    kept[face] = False
    speck = int(face[len(face) // 2])
    kept[speck] = True
    lone = lone_texels(atlas, kept)
    assert lone[speck] and int(lone.sum()) == 1  # the other charts, all kept, have none


def test_no_floating_dots_beside_the_neck(shipped_model, shared_media):
    """astronaut.png: the head mask's ragged edge at the dark collar left single neck texels kept
    among cut ones; each rendered as a dark dot beside the neck in every reenactment frame (3).
    Now every kept texel of the face and back-of-head charts has kept texels around it."""
    model = shipped_model
    fit = fit_photo(model, str(shared_media / "astronaut.png"))
    with torch.no_grad():
        shape = model.whole_head(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
    carved = model.atlas.region_mask("face", "back_head")
    assert shape.outside_hull.any()  # the collar is cut ...
    with pytest.MonkeyPatch.context() as patch:  # ... leaving no kept texel nearly alone
        patch.setattr(hair, "MIN_KEPT_FRACTION", 0.1)
        assert not (lone_texels(model.atlas, ~shape.outside_hull) & carved).any()


def _canonical(model, fit) -> torch.Tensor:
    return model.atlas.surface_points(model.head.vertices(fit["identity"][None]))[0]


def _nape_y(model, fit) -> float:
    return float(model.head.vertices(fit["identity"][None])[0, model.head.landmarks_multipie68[UPPER_LIP], 1])


@pytest.mark.parametrize(("name", "long_hair"), [("single_face.jpg", False), ("0-f15-hao-ph.jpg", True)])
def test_a_short_cut_leaves_the_nape_bare(shipped_model, shared_media, name, long_hair):
    """single_face.jpg: short hair over a dark collar (whose shadowed edge beside the neck is not
    hanging hair): below the nape no hair volume and skin colour, not a mullet to the shoulders.
    0-f15-hao-ph.jpg: hair hangs to the shoulders, so the back of the neck stays hair."""
    model = shipped_model
    fit = fit_photo(model, str(shared_media / name))
    with torch.no_grad():
        shape = model.whole_head(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
    canonical = _canonical(model, fit)
    nape = ((model.atlas.region == REGION_INDEX["back_head"]) & (canonical[:, 2] < -0.03)
            & (canonical[:, 1] < _nape_y(model, fit) - NAPE_BLEND_M))  # fmt: skip
    assert nape.sum() > 100
    crops = fit["crops"].permute(0, 2, 3, 1)
    skin = crops[shape.parts.skin[:, 0] > 0.9].median(0).values
    hair = crops[shape.parts.hair[:, 0] > 0.9].median(0).values
    to_skin = (shape.back_rgb[nape] - skin).norm(dim=-1).median()
    to_hair = (shape.back_rgb[nape] - hair).norm(dim=-1).median()
    if long_hair:
        assert to_hair < to_skin
    else:
        assert to_skin < 0.02 and to_skin < to_hair
        assert (shape.heights[nape] > 0).sum() == 0


def test_back_of_head_carries_the_visible_hairs_texture(shipped_model, shared_media):
    """The unseen back takes the visible hair's median colour and its strand contrast (not a flat
    colour): 0-f15-hao-ph.jpg's straight dark hair is smoother than single_face.jpg's short hair."""
    model = shipped_model
    contrasts = {}
    for name in ("0-f15-hao-ph.jpg", "single_face.jpg"):
        fit = fit_photo(model, str(shared_media / name))
        with torch.no_grad():
            shape = model.whole_head(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
        hair = fit["crops"].permute(0, 2, 3, 1)[shape.parts.hair[:, 0] > 0.9]  # [P,3] solid hair pixels
        assert shape.back_rgb.shape == (model.atlas.num_texels, 3)
        scalp = _canonical(model, fit)[:, 1] > _nape_y(model, fit) + NAPE_BLEND_M  # above a short cut's nape
        median = shape.back_rgb[scalp].median(0).values
        assert (median - hair.median(0).values).abs().max() < 0.05  # the hair's colour
        luminance = shape.back_rgb[scalp].mean(-1)
        contrasts[name] = float(luminance.std() / luminance.mean())
        measured = float(hair_contrast(fit["crops"], shape.parts))
        assert abs(contrasts[name] - measured) < 0.2 * measured  # the hair's strand contrast
    low, high = STRAND_CONTRAST_RANGE
    assert low < contrasts["0-f15-hao-ph.jpg"] < contrasts["single_face.jpg"] < high


def test_texels_no_view_faces_take_the_evidence_colour(shipped_model, shared_media):
    """The network's colour correction is kept where the photo faces the surface and dropped
    where no view does (the back of the head): there the colour is the evidence's completion."""
    model = shipped_model
    fit = fit_photo(model, str(shared_media / "0-f15-hao-ph.jpg"))
    args = (fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
    with torch.no_grad():
        evidence, facing = model.evidence(*args)
        avatar = model.encode(*args)
    atlas = model.atlas
    colour = atlas.gather(avatar.static_maps[None])[0][:, ATTRIBUTE_SLICES["colour"]]
    lifted = atlas.gather(evidence[None])[0][:, :3]
    # texels whose whole FACING_GROW neighbourhood faces away from the photo
    faced_nearby = F.max_pool2d(atlas.scatter((facing > 0).float()[None, :, None]), FACING_GROW, 1, FACING_GROW // 2)
    unfaced = atlas.gather(faced_nearby)[0, :, 0] == 0
    assert unfaced.float().mean() > 0.05  # the back of the head, from a frontal photo (12% of the atlas)
    assert torch.allclose(colour[unfaced], lifted[unfaced], atol=1e-6)
    faced = facing > 0.5
    assert (colour[faced] - lifted[faced]).abs().mean() > 0.01  # the network still corrects what it sees


def test_smoothing_where_unseen_keeps_what_is_seen_and_stays_in_its_chart():
    """Noise on uncovered chart texels is low-passed; covered texels and texels off the chart keep
    their values, and the chart's smoothing takes nothing from across its edge."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, 32, 32, generator=generator) - 0.5
    delta = noise.clone()
    delta[..., 24:] = 5.0  # off the chart: large values that must not leak in
    chart = torch.zeros(1, 32, 32)
    chart[:, :, :24] = 1.0
    coverage = torch.zeros(1, 1, 32, 32)
    coverage[..., :8] = 1.0  # seen
    out = smooth_where_unseen(delta, coverage, chart)
    assert torch.equal(out[..., :8], delta[..., :8])
    assert torch.equal(out[..., 24:], delta[..., 24:])
    unseen = out[..., 10:22]  # uncovered, and its 5x5 support all on the chart
    assert unseen.abs().max() < 0.5 and unseen.std() < 0.5 * noise[..., 10:22].std()
    assert out[..., 22:24].abs().max() < 0.5  # the chart's edge took nothing from beyond it


def test_sides_of_an_unseen_face_are_not_speckled(shipped_model, shared_media):
    """A person the network never trained on (face_noface.mov's, frame 0): the skin the photo
    does not cover (the sides of the face a turntable shows) carries no salt-and-pepper noise.
    Before it was low-passed there this measured 0.031; the public photos 0.0034-0.0046."""
    frame = next(iter_frames(str(shared_media / "face_noface.mov"), max_frames=1))
    model = shipped_model
    fit = fit_photo(model, frame)
    with torch.no_grad():
        avatar = model.encode(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
    assert unseen_skin_speckle(model, avatar, fit) < 0.01


def test_lifted_hair_is_strand_shaped_and_runs_down_the_back(shipped_model, shared_media):
    """Lifted hair Gaussians are long along the hair's flow and thin across it, and on the back
    of the head the flow runs down."""
    model = shipped_model
    fit = fit_photo(model, str(shared_media / "0-f15-hao-ph.jpg"))
    with torch.no_grad():
        shape = model.whole_head(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
        neutral = model.head.vertices(fit["identity"][None])
        points, frames = model.atlas.surface_and_frames(neutral)
        gaussians = {k: v[0] for k, v in model.deform(model.encode(fit["crops"], fit["masks"], fit["cameras"],
                     fit["identity"], fit["expressions"]), fit["expressions"][:1]).items()}  # fmt: skip
    flow = torch.cos(shape.flow)[:, None] * frames[0, :, :, 0] + torch.sin(shape.flow)[:, None] * frames[0, :, :, 1]
    crown_y = points[0, :, 1].max()
    back = (model.atlas.region == REGION_INDEX["back_head"]) & (points[0, :, 2] < -0.05) & (points[0, :, 1] < crown_y - 0.05)
    assert back.sum() > 100
    assert flow[back, 1].mean() < -0.8  # down
    lifted = shape.heights > 0.02
    scales = gaussians["scales"][lifted]
    ratio = (scales[:, 0] / scales[:, 1]).median()
    assert ratio > 0.8 * STRAND_ALONG / STRAND_ACROSS, ratio


# ------------------------------------------------------------------------------ must-show figures
@pytest.mark.parametrize("seconds", [0.0, REFINE_SECONDS])
@pytest.mark.parametrize("name", PUBLIC_PHOTOS)
def test_public_photo_whole_head(photo_rows, name, seconds):
    row = photo_rows[name, seconds]
    assert row["iou"] >= SOURCE_IOU, row["iou"]
    assert row["faces_front"] >= 0.9, row["faces_front"]
    assert row["tv_ratio"] <= 1.5, row["tv_ratio"]


@pytest.mark.parametrize("seconds", [0.0, REFINE_SECONDS])
@pytest.mark.parametrize("name", PUBLIC_PHOTOS)
def test_public_photo_back_quarter_shows_no_face(photo_rows, name, seconds):
    assert photo_rows[name, seconds]["faces_back"] == 0.0


@pytest.mark.parametrize("elevation", [0.0, 20.0])
def test_back_quarter_shows_no_face_from_other_elevations(shipped_model, shared_media, elevation):
    """The same check from a camera 10 degrees lower and higher than the app's: one 7-frame
    back quarter is a small sample of MediaPipe's false positives on a head of hair (before
    strand-shaped hair and the unfaced-colour gate: 7 of 105 back frames at 0/10/20 degrees over
    the four public photos and an unseen face; now 0)."""
    model = shipped_model
    for name in PUBLIC_PHOTOS:
        fit = fit_photo(model, str(shared_media / name))
        with torch.no_grad():
            avatar = model.encode(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
        check = turntable_check(model, avatar, elevation_deg=elevation)
        assert check["faces_back"] == 0.0, name
        assert check["faces_front"] >= 0.9, name


@pytest.mark.parametrize("name", PUBLIC_PHOTOS)
def test_refinement_makes_the_source_view_better(photo_rows, name):
    before, after = photo_rows[name, 0.0], photo_rows[name, REFINE_SECONDS]
    assert after["head_psnr"] > before["head_psnr"]
    assert after["iou"] >= before["iou"] - 0.005


def test_refinement_never_makes_held_out_frames_worse(shipped_model, shared_media):
    """single_face.mp4: avatar from frame 0, six held-out frames 48-71 (two tracked groups)."""
    from flexavatar.eval.evaluate import GROUP, evaluate_model, target_frames
    from flexavatar.train.monocular import VideoFrames, fit_frames

    model = shipped_model
    frames = target_frames(48, 71, 6)
    video = VideoFrames(str(shared_media / "single_face.mp4"), max(frames) + 1)
    groups = [fit_frames(video, [0] + frames[i : i + GROUP], model.config.crop_size, model.config.num_identity)
              for i in range(0, len(frames), GROUP)]  # fmt: skip
    plain = evaluate_model(model, groups)
    refined = evaluate_model(model, groups, REFINE_SECONDS)
    for key in ("head_psnr", "psnr"):
        assert refined[key] >= plain[key] - 0.05, (key, plain[key], refined[key])
    assert np.isfinite(refined["iou"]) and refined["iou"] >= plain["iou"] - 0.01


#: Source-view silhouette IoU every public photo reaches (the issue's bar; measured 0.935-0.964).
SOURCE_IOU = 0.93

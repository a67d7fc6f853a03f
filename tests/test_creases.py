"""Expression creases: a smiling photo's folds are taken out of the neutral rest and come back with the smile."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flexavatar import pipeline
from flexavatar.closed_loop import render_expressions, retrack
from flexavatar.head.blendshapes import EXPRESSION_INDEX, MEDIAPIPE_BLENDSHAPE_NAMES
from flexavatar.model.creases import LastCreases, crease_colours, source_creases
from flexavatar.model.field import ATTRIBUTE_SLICES


@pytest.fixture(scope="module")
def smiling(model, shared_media):
    """single_face.jpg: a broad smile with deep nasolabial folds."""
    avatar = pipeline.create_avatar(shared_media / "single_face.jpg", model=model)
    return avatar, model.prepare_deform(avatar)


def _colours_at(model, cache, expressions: torch.Tensor) -> torch.Tensor:
    own = cache.static_texels[0, :, ATTRIBUTE_SLICES["colour"]].clamp(0.0, 1.0)
    points = model.atlas.surface_points(model.texel_mesh(cache, expressions))
    return crease_colours(own.expand(len(expressions), -1, -1), cache.creases, points)


def test_creases_lift_at_rest_on_the_face_skin_only_and_return_with_the_source_expression(model, smiling):
    """At the neutral rest the folds are lightened toward their surroundings (never darkened,
    only on the face's skin); at the source expression every texel is exactly as painted; halfway
    there, each lightening is between the two."""
    avatar, cache = smiling
    own = cache.static_texels[0, :, ATTRIBUTE_SLICES["colour"]].clamp(0.0, 1.0)
    source = avatar.source_expression[None]
    with torch.no_grad():
        rest, half, full = _colours_at(model, cache, torch.cat([torch.zeros_like(source), 0.5 * source, source]))
    lifted = (rest - own).amax(1)
    assert (rest >= own - 1e-6).all()
    assert int((lifted > 0.02).sum()) >= 100, "a broad smile's folds should be lightened at rest"
    assert float(lifted[~model.crease_skin].abs().max()) == 0.0, "only the face's skin creases (not near the eyes, not the hair)"
    assert float((full - own).abs().max()) == 0.0, "the source expression shows the photo's colours"
    creased = lifted > 0.02
    assert (half[creased] <= rest[creased] + 1e-6).all() and (half[creased] >= own[creased] - 1e-6).all()
    assert float((half - own)[creased].mean()) < 0.9 * float((rest - own)[creased].mean())


def test_a_fold_is_found_where_the_expression_compresses_the_skin(model):
    """On the template: dark texels where a smile moves the skin (by more than 4 mm) are
    lightened at rest; dark texels where it moves nothing (under 0.2 mm) are left alone."""
    head, atlas = model.head, model.atlas
    neutral = head.vertices()
    smile = torch.zeros(1, 57)
    smile[0, [EXPRESSION_INDEX["mouthSmile_L"], EXPRESSION_INDEX["mouthSmile_R"]]] = 1.0
    source = head.vertices(None, smile)
    travel = (atlas.surface_points(source) - atlas.surface_points(neutral)).norm(dim=-1)[0]  # [N] m
    colours = torch.full((atlas.num_texels, 3), 0.7)
    skin = model.crease_skin
    moved, still = skin & (travel > 4e-3), skin & (travel < 2e-4)
    colours[moved] = 0.4
    colours[still.nonzero()[:: 7, 0]] = 0.4
    creases = source_creases(atlas, colours, neutral, source, skin)
    at_rest = crease_colours(colours[None], creases, atlas.surface_points(neutral))[0]
    assert float((at_rest - colours)[still].abs().max()) == 0.0
    assert float((at_rest - colours)[moved].mean()) > 0.0


def test_without_its_folds_a_smiling_photos_rest_reads_less_smiling(model, smiling, monkeypatch):
    """Closed loop: MediaPipe re-tracking the neutral rest (source camera) reads less of the
    photo's smile (mouthSmile, mouthDimple) with the creases taken out than with them left
    painted (measured: 0.064 against 0.143)."""
    avatar, _ = smiling
    names = ["mouthSmileLeft", "mouthSmileRight", "mouthDimpleLeft", "mouthDimpleRight"]
    columns = [MEDIAPIPE_BLENDSHAPE_NAMES.index(n) - 1 for n in names]
    creased = retrack(render_expressions(model, avatar, np.zeros((1, 57))))[0][0, columns]
    found = model.creases
    monkeypatch.setattr(model, "creases", lambda *args: replace(found(*args), lightening=torch.zeros(1, 3)))
    painted = retrack(render_expressions(model, avatar, np.zeros((1, 57))))[0][0, columns]
    assert np.isfinite(creased).all() and np.isfinite(painted).all()
    assert creased.sum() < 0.6 * painted.sum(), dict(zip(names, zip(creased.round(3), painted.round(3))))


def test_the_last_avatars_creases_are_kept_until_its_tensors_change():
    """LastCreases finds again for another tensor, or the same one modified in place."""
    memo, found = LastCreases(), []

    def find():
        found.append(object())
        return found[-1]

    maps, other = torch.zeros(3), torch.zeros(3)
    first = memo.get((maps,), find)
    assert memo.get((maps,), find) is first and len(found) == 1
    maps.add_(1.0)
    assert memo.get((maps,), find) is not first and len(found) == 2
    memo.get((other,), find)
    assert len(found) == 3


def test_a_moustache_on_a_smiling_face_is_not_taken_for_a_fold(model, smiling, shared_media):
    """Dark facial hair sits where a smile compresses the skin too: a moustache painted on
    single_face.jpg (between its mouth corners and nose, MediaPipe landmarks) keeps its colour at
    rest: its texels are lightened by under a tenth of how much it darkened them (measured 0.008
    of 0.29: the lips' exclusion and the wide surround cover it)."""
    import imageio.v3 as iio
    from PIL import Image, ImageDraw, ImageFilter

    from flexavatar.tracking.detect import close_task, create_landmarker, mp_image

    photo = iio.imread(shared_media / "single_face.jpg")[..., :3]
    landmarker = create_landmarker(video=False, num_faces=1)
    try:
        found = landmarker.detect(mp_image(photo)).face_landmarks[0]
    finally:
        close_task(landmarker)
    points = [(found[i].x * photo.shape[1], found[i].y * photo.shape[0]) for i in (61, 40, 37, 0, 267, 270, 291, 322, 2, 92)]
    mask = Image.new("L", (photo.shape[1], photo.shape[0]), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    weight = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.5)), np.float32)[..., None] / 255 * 0.85
    painted = (photo * (1 - weight) + np.array([45, 30, 22], np.float32) * weight).astype(np.uint8)
    moustached = model.prepare_deform(pipeline.create_avatar(painted, model=model))
    _, plain = smiling
    colour = ATTRIBUTE_SLICES["colour"]
    darker = (plain.static_texels[0, :, colour] - moustached.static_texels[0, :, colour]).clamp(0, 1).mean(1)
    hair = darker > 0.15
    assert int(hair.sum()) >= 20, "the painted moustache should reach the avatar's colours"
    assert float(moustached.creases.lightening[hair].mean()) < 0.1 * float(darker[hair].mean())

"""Eye gaze: the eyeballs turn with the eyeLook weights, painted so the turn shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexavatar import pipeline
from flexavatar.closed_loop import render_expressions, retrack
from flexavatar.head.blendshapes import EXPRESSION_INDEX, MEDIAPIPE_BLENDSHAPE_NAMES, NUM_EXPRESSIONS
from flexavatar.head.gaze import EYE_TURN_DEG, eyeball_centres, eyeball_vertex_ids, turn_eyeballs
from flexavatar.model.eyes import IRIS_DEG, eyeball_colours
from flexavatar.model.field import ATTRIBUTE_SLICES, lid_skin

LUMA = torch.tensor([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def astronaut(model, shared_media):
    return pipeline.create_avatar(shared_media / "astronaut.png", model=model)


def _look(**weights) -> torch.Tensor:
    code = torch.zeros(1, NUM_EXPRESSIONS)
    for name, value in weights.items():
        code[0, EXPRESSION_INDEX[name]] = value
    return code


def test_eyeballs_turn_rigidly_about_their_centres(model):
    """eyeLookOut_L turns the left eyeball toward the subject's left (+x) by EYE_TURN_DEG["Out"],
    eyeLookDown_R the right one down; each eyeball keeps its shape and centre, nothing else moves,
    and a gaze of all zeros leaves the mesh as it is (the same tensor)."""
    head = model.head
    neutral = head.vertices()
    left, right = eyeball_vertex_ids(head)
    code = _look(eyeLookOut_L=1.0, eyeLookDown_R=0.5)
    turned = turn_eyeballs(head, neutral, neutral, code)
    centres = eyeball_centres([neutral[:, left], neutral[:, right]])[0]
    for ids, centre, expected in ((left, centres[0], (1.0, 0.0)), (right, centres[1], (0.0, -1.0))):
        before, after = neutral[0, ids] - centre, turned[0, ids] - centre
        torch.testing.assert_close(after.norm(dim=-1), before.norm(dim=-1), atol=1e-6, rtol=0)
        front_before, front_after = before[before[:, 2].argmax()], after[before[:, 2].argmax()]
        move = front_after - front_before
        assert move[0] * expected[0] >= 0 and move[1] * expected[1] >= 0 and move[:2].norm() > 0.003, move
    angle = torch.rad2deg(torch.acos(torch.nn.functional.cosine_similarity(
        neutral[0, left] - centres[0], turned[0, left] - centres[0], dim=-1).clamp(-1, 1)))  # fmt: skip
    assert abs(float(angle.max()) - EYE_TURN_DEG["Out"]) < 0.5
    others = torch.ones(head.num_vertices, dtype=torch.bool)
    others[left] = others[right] = False
    assert torch.equal(turned[0, others], neutral[0, others])
    assert turn_eyeballs(head, neutral, neutral, torch.zeros(1, NUM_EXPRESSIONS)) is neutral


def test_painted_eyes_have_a_white_sclera_and_a_dark_iris(model, astronaut):
    """Outside the iris disc the eyeball is brighter than the skin around the eye; inside it,
    darker; the network's own colours there (the photo's slit of an eye) are replaced."""
    with torch.no_grad():
        gaussians = model.deform(astronaut, torch.zeros(1, NUM_EXPRESSIONS))
    luma = gaussians["colors"][0] @ LUMA
    eyes, angle = model.eyeballs.any(0), model.eyeball_angle
    own = model.atlas.gather(astronaut.static_maps[None, ATTRIBUTE_SLICES["colour"]])[0].clamp(0, 1)
    skin = float((lid_skin(own, model.lid_borders) @ LUMA).mean())
    assert luma[eyes & (angle > IRIS_DEG + 5)].median() > skin + 0.05
    assert luma[eyes & (angle < IRIS_DEG - 5)].median() < skin - 0.2
    assert not torch.allclose(gaussians["colors"][0, eyes], own[eyes])


def test_shut_eyes_fade_the_eyeball_to_skin(model, astronaut):
    """A full blink takes each eyeball to the skin around its lid: no dark iris between the shut
    lid's Gaussians."""
    with torch.no_grad():
        shut = model.deform(astronaut, _look(eyeBlink_L=1.0, eyeBlink_R=1.0))["colors"][0]
        open_ = model.deform(astronaut, torch.zeros(1, NUM_EXPRESSIONS))["colors"][0]
    for eye, side in zip(model.eyeballs, ("left", "right")):
        iris = eye & (model.eyeball_angle < IRIS_DEG)
        assert (shut[iris] @ LUMA).mean() > (open_[iris] @ LUMA).mean() + 0.2, side
        assert float((shut[eye] - shut[eye].mean(0)).abs().max()) < 1e-5, side  # one colour: the skin


def test_the_driven_gaze_retracks_as_that_gaze(model, astronaut):
    """Closed loop: the astronaut looking left, right and down (ICT weight 0.8) re-tracks with
    MediaPipe's eyeLook scores of that direction up by 0.3 or more from the rest render, and the
    opposite ones not."""
    looks = {
        "eyeLookOutLeft": _look(eyeLookOut_L=0.8, eyeLookIn_R=0.8),
        "eyeLookOutRight": _look(eyeLookOut_R=0.8, eyeLookIn_L=0.8),
        "eyeLookDownLeft": _look(eyeLookDown_L=0.8, eyeLookDown_R=0.8),
    }
    opposite = {"eyeLookOutLeft": "eyeLookInLeft", "eyeLookOutRight": "eyeLookInRight", "eyeLookDownLeft": "eyeLookUpLeft"}
    codes = torch.cat([torch.zeros(1, NUM_EXPRESSIONS), *looks.values()]).numpy()
    scores, _ = retrack(render_expressions(model, astronaut, codes))
    column = {name: MEDIAPIPE_BLENDSHAPE_NAMES.index(name) - 1 for name in [*looks, *opposite.values()]}
    for row, name in enumerate(looks, start=1):
        rise = scores[row, column[name]] - scores[0, column[name]]
        assert rise > 0.3, (name, np.round(scores[[0, row], column[name]], 2))
        assert scores[row, column[opposite[name]]] < 0.1, (name, scores[row, column[opposite[name]]])


def test_eyes_behind_sunglasses_keep_their_colours(model, astronaut):
    """Where the skin around an eye is much darker than the face (sunglasses over the lids), that
    eye is not painted: a painted eye showed through the lenses. The other eye still is."""
    own = model.atlas.gather(astronaut.static_maps[None, ATTRIBUTE_SLICES["colour"]])[0].detach().clamp(0, 1)
    lens = own.clone()
    lens[model.lid_borders[0] | (model.lid_closure[0] > 0)] = torch.tensor([0.05, 0.12, 0.08])  # left eye
    painted = eyeball_colours(lens, model.eyeballs, model.eyeball_angle, lid_skin(lens, model.lid_borders), model.face_skin)
    left, right = model.eyeballs
    assert torch.equal(painted[left], lens[left])
    assert not torch.equal(painted[right], lens[right])

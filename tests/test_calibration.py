"""The motion calibration file: fitted from sweeps, saved, loaded, inverted (cross-talk and pose bias)."""

from __future__ import annotations

import json

import numpy as np

from flexavatar.calibration import (
    SCORE_NAMES,
    SCORE_PAIRS,
    SWEEP_WEIGHTS,
    fit_calibration,
    merge_pair_sweeps,
    refit,
)
from flexavatar.closed_loop import TURN_DEGREES
from flexavatar.head.blendshapes import EXPRESSION_INDEX, NUM_EXPRESSIONS
from flexavatar.motion import (
    AVATAR_RESPONSE_RANGE,
    BLINK_BASELINE_MAX_RISE,
    SCORE_DEADZONE,
    calibration_for_avatar,
    driver_score_changes,
    driving_expressions,
    ict_limits,
    ict_to_scores,
    load_calibration,
    scores_to_ict,
)

JAW, SMILE_L = SCORE_NAMES.index("jawOpen"), SCORE_NAMES.index("mouthSmileLeft")


def synthetic_sweeps(num_avatars: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Sweeps as :func:`flexavatar.calibration.sweep_responses` returns them, of avatars whose
    every score responds as 0.6 w^1.5 (+ a per-avatar offset), whose jaw raises mouthSmileLeft by
    0.3 per unit and whose smile pitches the head by 2° per unit."""
    num, k = len(SCORE_NAMES), len(SWEEP_WEIGHTS)
    responses = np.zeros((num_avatars, num, k, num))
    rotations = np.zeros((num_avatars, num, k, 3))
    for a in range(num_avatars):
        offset = 0.01 * a
        responses[a] += offset
        responses[a, np.arange(num), :, np.arange(num)] = 0.6 * SWEEP_WEIGHTS**1.5 + offset
        responses[a, JAW, :, SMILE_L] += 0.3 * SWEEP_WEIGHTS
        rotations[a, SMILE_L, :, 0] = 2.0 * SWEEP_WEIGHTS + 0.1 * a
    rotations[:, :, 0] = 0.0
    return responses, rotations


def synthetic_turns(num_avatars: int = 3) -> np.ndarray:
    """Head-turn sweeps as :func:`flexavatar.calibration.sweep_turns` returns them: the tracker
    sees 0.9x the pitch, 0.85x the yaw and all of the roll (one avatar's yaw untracked at 20°)."""
    turns = np.zeros((num_avatars, 3, len(TURN_DEGREES), 2))
    turns[..., 0] = TURN_DEGREES
    turns[..., 1] = TURN_DEGREES * np.array([0.9, 0.85, 1.0])[None, :, None]
    turns[0, 1, -1, 1] = np.nan
    return turns


def test_fit_recovers_response_crosstalk_and_pose_bias(tmp_path):
    responses, rotations = synthetic_sweeps()
    calibration = fit_calibration(responses, rotations, SWEEP_WEIGHTS, {"command": "test"}, synthetic_turns())
    assert np.allclose(calibration.turn_gain, [0.9, 0.85, 1.0])
    assert np.allclose(calibration.responses[JAW], 0.6 * SWEEP_WEIGHTS**1.5 + 0.01)  # median over avatars
    assert abs(calibration.crosstalk[SMILE_L, JAW] - 0.3) < 1e-9
    assert np.count_nonzero(calibration.crosstalk) == 1
    assert np.allclose(calibration.rotation_bias[SMILE_L, :, 0], 2.0 * SWEEP_WEIGHTS + 0.1 * (SWEEP_WEIGHTS > 0))
    # the file round-trips (what `calibrate` writes is what reenactment reads)
    loaded = load_calibration(calibration.save(tmp_path / "calibration.json"))
    for name in ("weights", "responses", "crosstalk", "rotation_bias", "turn_gain"):
        assert np.allclose(getattr(loaded, name), getattr(calibration, name), atol=1e-3), name
    # so do the saved sweeps (`calibrate --sweeps`, then `--from-sweeps`)
    np.savez(tmp_path / "sweeps.npz", responses=responses, rotations=rotations, turns=synthetic_turns(),
             weights=SWEEP_WEIGHTS, meta=json.dumps({"command": "test"}))  # fmt: skip
    refitted = refit(tmp_path / "sweeps.npz")
    assert np.allclose(refitted.rotation_bias, calibration.rotation_bias)
    assert np.allclose(refitted.turn_gain, calibration.turn_gain)


def test_solve_undoes_crosstalk():
    """The driver's jaw raises its smile score; the avatar's jaw does the same, so no smile is added."""
    calibration = fit_calibration(*synthetic_sweeps())
    weights = np.zeros((1, len(SCORE_NAMES)))
    weights[0, JAW] = 0.7
    targets = calibration.predict(weights)
    assert targets[0, SMILE_L] > 0.2  # the jaw's cross-talk
    assert calibration.inverse(targets)[0, SMILE_L] > 0.3  # score by score: a smile would be added
    solved = calibration.solve(targets)
    assert np.abs(solved - weights).max() < 0.02


def test_shipped_calibration_solves_its_own_predictions():
    """Random mixes of a few shapes: the solve reproduces their predicted scores. Not every mix
    exactly: with the pucker swept to its shape gain, its response is convex (0.01-0.06 up to
    half weight) and it leaks 0.5 into the funnel, and in ~2% of random mixes (a pucker with a
    sideways mouth and a frown) the damped fixed point settles on the other shapes instead."""
    calibration = load_calibration()
    assert calibration.meta.get("command") == "python -m flexavatar calibrate"
    assert calibration.rotation_bias is not None and calibration.crosstalk.any()
    assert calibration.turn_gain is not None and (np.abs(calibration.turn_gain - 1) <= 0.3).all()
    rng = np.random.default_rng(0)
    num = len(calibration.names)
    weights = rng.uniform(0, 1, (400, num)) * (rng.uniform(0, 1, (400, num)) < 0.15)  # a few shapes at once
    targets = calibration.predict(weights)
    error = np.abs(calibration.predict(calibration.solve(targets)) - targets)
    assert error.mean() < 0.005 and np.percentile(error, 99) < 0.02, (error.mean(), np.percentile(error, 99))
    assert (error.max(1) < 0.06).mean() >= 0.97 and error.max() < 0.15, error.max(1)


def test_pair_sweeps_give_each_side_half_the_pairs_rotation():
    num, k = len(SCORE_NAMES), len(SWEEP_WEIGHTS)
    scores = np.random.default_rng(0).uniform(0, 1, (num, k, num))
    rotations = np.zeros((num, k, 3))
    pair_rotations = np.zeros((len(SCORE_PAIRS), k, 3))
    p = [i for i, (left, _) in enumerate(SCORE_PAIRS) if SCORE_NAMES[left] == "mouthSmileLeft"][0]
    left, right = SCORE_PAIRS[p]
    pair_rotations[p, :, 0] = 2.0 * SWEEP_WEIGHTS  # a smile pitches the head; one side alone barely
    merged, turned = merge_pair_sweeps(scores, rotations, np.zeros((len(SCORE_PAIRS), k, num)), pair_rotations)
    assert np.array_equal(merged, scores)
    for side in (left, right):
        assert np.allclose(turned[side, :, 0], SWEEP_WEIGHTS)
    assert np.abs(turned[JAW]).max() == 0
    assert "jawLeft" not in [SCORE_NAMES[a] for a, _ in SCORE_PAIRS]  # opposite directions are no pair


def test_avatar_fit_scales_each_response_by_the_avatars_own():
    """An avatar whose jaw responds half as much as the calibration's median is driven harder for
    the same target; a score whose render the tracker lost keeps the median; the scale is bounded."""
    calibration = load_calibration()
    jaw, smile = calibration.names.index("jawOpen"), calibration.names.index("mouthSmileLeft")
    population = calibration.responses[:, -1] - calibration.responses[:, 0]
    spans = population.copy()
    spans[jaw] *= 0.5
    spans[smile] = np.nan
    fitted = calibration_for_avatar(calibration, spans)
    np.testing.assert_allclose(fitted.responses[jaw, -1] - fitted.responses[jaw, 0], 0.5 * population[jaw])
    np.testing.assert_allclose(fitted.responses[smile], calibration.responses[smile])
    target = np.zeros(len(calibration.names))
    target[jaw] = 0.3
    assert fitted.inverse(target)[jaw] > calibration.inverse(target)[jaw] + 0.1
    strong = calibration_for_avatar(calibration, population * 100)
    top = strong.responses[jaw, -1] - strong.responses[jaw, 0]
    np.testing.assert_allclose(top, AVATAR_RESPONSE_RANGE[1] * population[jaw])
    assert fitted.meta["avatar_ratio"][jaw] == 0.5


def test_shape_gains_drive_weak_shapes_past_full_weight():
    """ICT's pucker barely registers at weight 1: the calibration sweeps it to its shape gain (2),
    a driver's strong pucker drives it past 1, and no shape goes past its limit."""
    calibration = load_calibration()
    names, gains = calibration.names, calibration.shape_gains
    assert gains[names.index("mouthPucker")] == 2.0 and gains[names.index("jawOpen")] == 1.0
    limits = ict_limits(calibration)
    assert limits[EXPRESSION_INDEX["mouthPucker"]] == 2.0 and limits[EXPRESSION_INDEX["jawOpen"]] == 1.0
    values = np.random.default_rng(0).uniform(0, 1, (4, len(names)))
    back = ict_to_scores(scores_to_ict(values, names, np.zeros(NUM_EXPRESSIONS), gains), names, gains)
    np.testing.assert_allclose(back, values, atol=1e-9)
    driver = np.zeros((30, NUM_EXPRESSIONS))
    driver[:, EXPRESSION_INDEX["mouthPucker"]] = np.linspace(0.0, 0.9, 30)
    driver[:, EXPRESSION_INDEX["jawOpen"]] = np.linspace(0.0, 0.9, 30)
    out = driving_expressions(None, driver, relative=True, neutralise=True, calibration=calibration)
    assert out[:, EXPRESSION_INDEX["mouthPucker"]].max() > 1.2
    assert (out <= limits + 1e-6).all() and out[:, EXPRESSION_INDEX["jawOpen"]].max() <= 1.0


def test_a_rest_already_showing_the_drivers_first_frame_is_not_pushed_further():
    """The driver's pucker reads 0.3 for its first frames (a resting mouth), then 0: the neutral is
    the low percentile, so frame 0 adds 0.3 to an avatar whose rest reads 0; to one whose rest
    already reads 0.6 it adds nothing, to one at 0.45 half of it. Blinks keep their local level."""
    names = ["mouthPucker", "eyeBlinkLeft", "jawOpen"]
    scores = np.zeros((60, 3))
    scores[:15, 0] = 0.3
    scores[30:35, 1] = 0.8  # one blink
    scores[40:50, 2] = 0.5  # one jaw opening
    plain = driver_score_changes(scores, names)
    assert plain[0, 0] > 0.25 and plain[20, 0] == 0.0
    for rest, added in ((0.0, plain[0, 0]), (0.45, None), (0.6, 0.0), (0.9, 0.0)):
        changes = driver_score_changes(scores, names, rest_scores=np.array([rest, 0.5, 0.4]))
        if added is None:  # part of the way: the rest reads 0.15 above the driver's frame 0
            assert 0.05 < changes[0, 0] < plain[0, 0] - 0.05
        else:
            assert np.isclose(changes[0, 0], added)
        assert np.all(changes[:, 0] <= plain[:, 0] + 1e-9)
        np.testing.assert_allclose(changes[:, 1:], plain[:, 1:])  # frame 0 at the percentile there
    # an unmeasured rest (NaN: the render was lost) leaves the neutral alone
    np.testing.assert_allclose(driver_score_changes(scores, names, rest_scores=np.full(3, np.nan)), plain)


def test_a_rest_that_reads_puckered_is_not_driven_to_a_kiss_by_a_resting_driver(model, shared_media):
    """A rest that still re-tracks as a pucker (0-f1-su-ph.jpg's round lips read 0.69 before
    :func:`~flexavatar.closed_loop.rest_lip_release` widened them); single_face.mp4's resting mouth
    reads as a pucker of 0.3 for its first frames. Driven with the avatar's measured rest scores,
    those frames keep the rest's pucker instead of adding the driver's."""
    from dataclasses import replace

    from flexavatar import pipeline
    from flexavatar.closed_loop import avatar_calibration
    from flexavatar.tracking import track_video

    avatar = pipeline.create_avatar(shared_media / "0-f1-su-ph.jpg", model=model)
    calibration = avatar_calibration(model, avatar)
    pucker = calibration.names.index("mouthPucker")
    rest_scores = calibration.rest_scores.copy()
    rest_scores[pucker] = 0.69  # as its rest read before its lips were widened
    calibration = replace(calibration, rest_scores=rest_scores)
    track = track_video(shared_media / "single_face.mp4", max_frames=30)
    measured = driving_expressions(avatar, track.expressions, True, True, calibration, track.fps)
    unmeasured = driving_expressions(avatar, track.expressions, True, True, replace(calibration, rest_scores=None), track.fps)
    column = EXPRESSION_INDEX["mouthPucker"]
    assert unmeasured[:10, column].mean() > 0.3, unmeasured[:10, column]
    assert measured[:10, column].mean() < 0.5 * unmeasured[:10, column].mean(), measured[:10, column]


def test_eyes_held_shut_are_not_their_own_blink_baseline():
    """A blink's neutral level is the driver's local one, so eyes a smile narrows for seconds do
    not half-close the avatar's; but it stays within BLINK_BASELINE_MAX_RISE of the clip's: eyes
    held shut for seconds (WolfgangLanger_Pexels.mp4 cries with hers shut for 6 s) were their own
    baseline, and the avatar's stayed open."""
    names = ["eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft"]
    scores = np.full((240, 3), 0.05)
    scores[30:150, :2] = 0.8  # eyes held shut for 4 s (30 fps)
    scores[180:, :2] = 0.17  # then a smile narrows them for 2 s
    scores[180:, 2] = 0.8
    changes = driver_score_changes(scores, names, fps=30.0)
    rise = 0.8 - (0.05 + BLINK_BASELINE_MAX_RISE)
    deadzone = SCORE_DEADZONE["eyeBlinkLeft"]
    np.testing.assert_allclose(changes[45:135, :2], (rise - deadzone) / (1 - deadzone), atol=1e-6)
    np.testing.assert_allclose(changes[195:, :2], 0.0, atol=1e-6)  # the smile's narrowed eyes
    assert changes[195:, 2].min() > 0.7


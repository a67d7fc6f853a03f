"""Closed-loop measurements on one avatar: render expressions, re-track them with MediaPipe.

The motion calibration (:mod:`flexavatar.calibration`) measures many avatars once; these
measure the avatar being driven, before it is driven: how far each score moves at full weight
(:func:`avatar_response_spans`, for :func:`flexavatar.motion.calibration_for_avatar`), how far
its neutral eyes must open to re-track open (:func:`rest_eye_opening`), its brows lift to
re-track level (:func:`rest_brow_lift`) and its lips widen to re-track unpuckered
(:func:`rest_lip_release`), and the head rotation
MediaPipe sees in the clip's own expressions (:func:`measured_pose_bias`). Reenactment then
corrects the clip's expressions on the avatar itself: sampled frames rendered, re-tracked and
moved toward the driver's scores (:func:`closed_loop_expressions`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch

from flexavatar.errors import InvalidInputError
from flexavatar.framing import driving_cameras
from flexavatar.head.blendshapes import EXPRESSION_INDEX, MEDIAPIPE_BLENDSHAPE_NAMES, NUM_EXPRESSIONS
from flexavatar.model import Avatar
from flexavatar.motion import (
    LIP_CLOSED_GAP,
    LIP_OPEN_GAP,
    POSE_BIAS_SHRINK,
    MotionCalibration,
    calibration_for_avatar,
    driver_score_changes,
    face_part,
    ict_limits,
    ict_to_scores,
    load_calibration,
    scores_to_ict,
    seal_lips,
)
from flexavatar.rest import let_go_of_rest
from flexavatar.rotations import matrix_to_axis_angle
from flexavatar.tracking import detect_face
from flexavatar.tracking.correspondence import load_correspondence
from flexavatar.tracking.pose import mediapipe_to_head_pose
from flexavatar.tracking.video_track import lip_gaps as inner_lip_gaps

#: Avatars whose fitted calibration :func:`avatar_calibration` keeps (a few KB each).
FITTED_CALIBRATIONS = 16
_FITTED: OrderedDict = OrderedDict()
_FITTED_LOCK = threading.Lock()

#: :func:`rest_eye_opening`: the eyeWide weights rendered; the last is the most it opens a rest.
REST_OPENING_STEPS = np.array([0.0, 0.5, 1.0])
#: :func:`rest_brow_lift`: the brow-raise weights rendered; the last is the most it lifts a rest
#: (a lift of 0.3 is barely visible; its effect on 29 eval --motion rows is in the README, Motion).
REST_BROW_STEPS = np.array([0.0, 0.15, 0.3])
#: ...and only brows that re-track more lowered than the calibration avatars' by more than this
#: (browDown at rest, eyes opened; re-encoding the photo as JPEG q97 moved that excess by at most
#: 0.014 on 9 photos): the astronaut's, 0.005 above, stay; single_face.jpg's, 0.17 / 0.10, lift.
REST_BROW_MARGIN = 0.015
#: :func:`rest_lip_release`: the lip-stretch weights rendered; the last is the most it widens a rest...
REST_LIP_STEPS = np.array([0.0, 0.25, 0.5])
#: ...and only lips that re-track more puckered than the calibration avatars' by more than this
#: (11 photos' avatars at rest: 0.00-0.03 on five, 0.07-0.69 on the six that stretch).
REST_LIP_MARGIN = 0.05
#: Expressions of a clip rendered and re-tracked to measure the avatar's own expression pose bias
#: (:func:`measured_pose_bias`) and to correct its expressions (:func:`closed_loop_expressions`).
POSE_BIAS_SAMPLES = 16
#: :func:`closed_loop_expressions`: rounds of render, re-track and correct. The first round steps
#: along the avatar's fitted response; later ones along the secant through the last two readings
#: where they moved (a pucker's reading can drop from 0.69 to 0.03 within one step: along the
#: fitted curve the second round overshot too, and pucker r fell from 0.99 to 0.85 and 0.53).
CORRECTION_ROUNDS = 2
#: Each response-curve step moves a weight by this fraction of what that curve says closes the
#: gap (it is a scaled population curve; the full step overshoots)...
CORRECTION_DAMPING = 0.7
#: ...and by at most this much per round (calibration weight units). At 0.3, eval --motion's
#: held-out photos x single_face.mp4 re-tracked with 2.2° APD (0.6-0.7° without correction).
CORRECTION_MAX_STEP = 0.15
#: A shape is raised only where the driver shows its score (target at least this): 0-f1-su-ph.jpg's
#: avatar re-tracks a pucker of 0.67 at rest from its photo's O-shaped lips and loses it when it
#: smiles; raising its pucker to keep that reading made it kiss through the driver's smile
#: (single_face.mp4: AED 0.055 -> 0.084). Lowering is always allowed.
CORRECTION_SHOWN = 0.05
#: The face parts corrected (:func:`flexavatar.motion.face_part`): blinks and gaze have their own
#: handling (the blink baseline, :func:`flexavatar.motion.end_gaze_with_blinks`)...
CORRECTION_PARTS = ("mouth", "brows")
#: ...of which these are raised as well as lowered. A brow under hair barely re-tracks: raising it
#: until it did lifted the held-out boy's brows to full weight, and MediaPipe read the head as
#: pitched by 3° more (APD 0.6° -> 2.2° on single_face.mp4).
CORRECTION_RAISED_PARTS = ("mouth",)
#: Never corrected: the jaw's calibration already tracks the driver (jaw r 0.89-0.95 on
#: examples/driving.mp4; corrected per sample it fell to 0.78-0.89) and mouthClose is the lip seal's.
CORRECTION_EXCLUDED = ("jawOpen", "mouthClose")


def render_expressions(model, avatar: Avatar, codes: np.ndarray, chunk: int = 8) -> np.ndarray:
    """[F,57] ICT expressions -> [F,S,S,3] uint8 renders of ``avatar`` from its source camera,
    its head still (``chunk`` frames per render call)."""
    codes = torch.from_numpy(np.asarray(codes, np.float32))
    frames = []
    with torch.no_grad():
        for start in range(0, len(codes), chunk):
            part = codes[start : start + chunk].to(model.device)
            rgb, _ = model.render(avatar, [avatar.source_camera] * len(part), part)
            frames.append((rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())
    return np.concatenate(frames)


def retrack(frames: np.ndarray, with_lip_gaps: bool = False):
    """[F,H,W,3] uint8 renders -> MediaPipe scores [F,S] (its 52 minus ``_neutral``) and head
    rotations [F,3,3] (OpenCV camera frame, :func:`~flexavatar.tracking.pose.mediapipe_to_head_pose`),
    each frame tracked on its own (IMAGE mode); NaN where no face is found. ``with_lip_gaps``: also
    the inner-lip gaps [F] (:func:`~flexavatar.tracking.video_track.lip_gaps`; NaN where lost)."""
    scores = np.full((len(frames), len(MEDIAPIPE_BLENDSHAPE_NAMES) - 1), np.nan)
    rotations = np.full((len(frames), 3, 3), np.nan)
    gaps = np.full(len(frames), np.nan)
    correspondence = load_correspondence()
    for i, frame in enumerate(frames):  # one landmarker call per frame
        try:
            found = detect_face(frame, with_mask=False)
        except InvalidInputError:
            continue
        scores[i] = found.blendshapes[1:]
        rotations[i] = mediapipe_to_head_pose(found.transform, correspondence)[0]
        gaps[i] = inner_lip_gaps(found.landmarks)
    return (scores, rotations, gaps) if with_lip_gaps else (scores, rotations)


def avatar_response_spans(model, avatar: Avatar, calibration: MotionCalibration, rest: np.ndarray | None = None,
                          with_rest_scores: bool = False):  # fmt: skip
    """[S] how far each score moves when ``avatar`` shows that score's shape(s) at calibration
    weight 1 (times its shape gain) on its neutral ``rest`` [57] (default zeros; its eyes held
    open, :func:`rest_eye_opening`, brows lifted, :func:`rest_brow_lift`, and lips widened,
    :func:`rest_lip_release`, let go of in the blinks, frowns and puckers as driving does,
    :func:`~flexavatar.rest.let_go_of_rest`): the re-tracked score
    minus the rest render's, from the avatar's own source camera (NaN where a render is not
    tracked). ``with_rest_scores``: (spans, the rest render's scores [S]). S + 1 renders and
    re-trackings (~2-3 s on 2 CPU cores)."""
    names = calibration.names
    rest = np.zeros(NUM_EXPRESSIONS) if rest is None else np.asarray(rest, np.float64)
    values = np.concatenate([np.zeros((1, len(names))), np.eye(len(names))])
    codes = np.maximum(scores_to_ict(values, names, np.zeros(NUM_EXPRESSIONS), calibration.shape_gains), rest)
    codes = let_go_of_rest(codes, rest)
    scores, _ = retrack(render_expressions(model, avatar, codes))
    columns = [MEDIAPIPE_BLENDSHAPE_NAMES.index(n) - 1 for n in names]
    spans = scores[1 + np.arange(len(names)), columns] - scores[0, columns]
    return (spans, scores[0, columns]) if with_rest_scores else spans


def _rest_lift(model, avatar: Avatar, calibration: MotionCalibration, base: np.ndarray, sides, steps: np.ndarray,
               margin: float = 0.0) -> np.ndarray:  # fmt: skip
    """[57] ICT weights on top of ``base`` [57]: for each side ``(shapes, score)``, the smallest
    weight of ``shapes`` (raised together, from ``steps``, interpolated) at which ``avatar``
    re-tracks ``score`` no higher than the calibration avatars do at rest (its response at weight
    0), at most the last step; 0 where it already reads within ``margin`` of that. len(steps)
    renders, all sides together."""
    offset = np.zeros(NUM_EXPRESSIONS)
    if any(score not in calibration.names for _, score in sides):
        return offset
    codes = np.repeat(np.asarray(base, np.float64)[None], len(steps), axis=0)
    for shapes, _ in sides:
        for shape in shapes:
            codes[:, EXPRESSION_INDEX[shape]] += steps
    scores, _ = retrack(render_expressions(model, avatar, codes))
    for shapes, score in sides:
        seen = scores[:, MEDIAPIPE_BLENDSHAPE_NAMES.index(score) - 1]
        target = calibration.responses[calibration.names.index(score), 0]
        if np.isnan(seen).any() or seen[0] <= target + margin:
            continue
        # the smallest lift that re-tracks at the target (readings fall as the shapes rise)
        reached = np.flatnonzero(seen <= target)
        if len(reached):
            k = reached[0]
            lift = np.interp(target, [seen[k], seen[k - 1]], [steps[k], steps[k - 1]])
        else:
            lift = steps[-1]
        for shape in shapes:
            offset[EXPRESSION_INDEX[shape]] = float(lift)
    return offset


def rest_eye_opening(model, avatar: Avatar, calibration: MotionCalibration) -> np.ndarray:
    """[57] ICT weights (eyeWide of each eye, else 0) that open ``avatar``'s neutral eyes until
    they re-track no more closed than the calibration avatars' neutral eyes (its blink response at
    weight 0), at most the last of :data:`REST_OPENING_STEPS`. A smiling photo's eyes stay narrow in its colours
    after the expression is removed: single_face.jpg's avatar re-tracks a blink of 0.39 at rest
    (the astronaut's 0.07), so its blinks barely register and whatever else moves its lids reads as
    one. :data:`REST_OPENING_STEPS` renders of both eyes opened together, interpolated per eye."""
    sides = [(["eyeWide_L"], "eyeBlinkLeft"), (["eyeWide_R"], "eyeBlinkRight")]
    return _rest_lift(model, avatar, calibration, np.zeros(NUM_EXPRESSIONS), sides, REST_OPENING_STEPS)


def rest_brow_lift(model, avatar: Avatar, calibration: MotionCalibration, base: np.ndarray) -> np.ndarray:
    """[57] ICT weights (browInnerUp and browOuterUp of each side, else 0) that lift ``avatar``'s
    neutral brows on its rest ``base`` [57] (the eyes opened) until they re-track no more lowered
    than the calibration avatars' do (their browDown at weight 0), at most the last of
    :data:`REST_BROW_STEPS`. A smiling photo's squint stays in its colours: single_face.jpg's
    avatar re-tracks browDown 0.19 / 0.14 at rest (the calibration's 0.03), and its smile adds
    0.27 more; lifted by 0.2 it reads 0.05 at rest and 0.24 smiling. :func:`~flexavatar.rest.lower_lifted_brows`
    lets go as the brows lower. :data:`REST_BROW_STEPS` renders, interpolated per side."""
    sides = [(["browInnerUp_L", "browOuterUp_L"], "browDownLeft"), (["browInnerUp_R", "browOuterUp_R"], "browDownRight")]
    return _rest_lift(model, avatar, calibration, base, sides, REST_BROW_STEPS, REST_BROW_MARGIN)


def rest_lip_release(model, avatar: Avatar, calibration: MotionCalibration, base: np.ndarray) -> np.ndarray:
    """[57] ICT weights (mouthStretch of both sides, else 0) that widen ``avatar``'s neutral lips on
    its rest ``base`` [57] until they re-track no more puckered than the calibration avatars' do
    (their pucker at weight 0), at most the last of :data:`REST_LIP_STEPS`. A photo's rounded lips
    (an "O" of surprise, a pout) stay in its colours after the expression is removed:
    0-f1-su-ph.jpg's avatar re-tracks a pucker of 0.69 at rest and loses it as soon as it talks;
    stretched by 0.5 it reads 0.08, and the stretch itself reads 0.00.
    :func:`~flexavatar.rest.release_widened_lips` lets go as the lips pucker.
    :data:`REST_LIP_STEPS` renders."""
    sides = [(["mouthStretch_L", "mouthStretch_R"], "mouthPucker")]
    return _rest_lift(model, avatar, calibration, base, sides, REST_LIP_STEPS, REST_LIP_MARGIN)


def sample_frames(expressions: np.ndarray, rest: np.ndarray, samples: int) -> np.ndarray:
    """[K] indices of up to ``samples`` frames of ``expressions`` [T,57] that stand for the clip:
    frame 0 (relative motion is seen from it), then farthest-point sampling in expression space
    from the rest [57] and the frames chosen so far (each distinct expression of the clip is one)."""
    expressions = np.asarray(expressions, np.float64)
    distance = np.linalg.norm(expressions - rest, axis=1)  # [T] to the nearest sample so far
    chosen: list[int] = []
    if len(expressions) and np.abs(expressions[0] - rest).max() > 1e-6:
        chosen.append(0)
        distance = np.minimum(distance, np.linalg.norm(expressions - expressions[0], axis=1))
    while len(chosen) < min(samples, len(expressions)) and distance.max() > 1e-6:
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(expressions - expressions[chosen[-1]], axis=1))
    return np.array(chosen, dtype=np.int64)


def blend_samples(expressions: np.ndarray, sample_codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Every frame of ``expressions`` [T,57] takes the inverse-square-distance blend of the
    ``values`` [K,...] of its 3 nearest ``sample_codes`` [K,57] (expression space) -> [T,...]."""
    between = np.linalg.norm(np.asarray(expressions, np.float64)[:, None] - sample_codes[None], axis=2)  # [T,K]
    nearest = np.argsort(between, axis=1)[:, :3]
    weights = 1.0 / np.maximum(np.take_along_axis(between, nearest, 1), 1e-6) ** 2
    weights = weights.reshape(*weights.shape, *([1] * (values.ndim - 1)))
    return (values[nearest] * weights).sum(1) / weights.sum(1)


def _rest_relative_rotations(rotations: np.ndarray) -> np.ndarray:
    """[K,3,3] re-tracked rotations, the rest first -> [K,3] axis-angle relative to the rest
    (zeros where lost; all zeros when the rest itself is)."""
    if np.isnan(rotations[0]).any():  # the rest itself is lost: nothing to measure against
        return np.zeros((len(rotations), 3))
    seen = matrix_to_axis_angle(np.nan_to_num(rotations @ np.swapaxes(rotations[0], -1, -2)))
    seen[np.isnan(rotations).any((1, 2))] = 0.0
    return seen


def measured_pose_bias(model, avatar: Avatar, expressions: np.ndarray, rest: np.ndarray,
                       samples: int = POSE_BIAS_SAMPLES) -> np.ndarray:  # fmt: skip
    """[T,3] axis-angle (radians, camera frame): the head rotation MediaPipe sees in ``avatar``
    showing each of ``expressions`` [T,57] with its head still, relative to its ``rest`` [57].
    Measured in closed loop, not predicted: the rest and up to ``samples`` of the frames
    (:func:`sample_frames`) are rendered from the source camera and re-tracked; every frame takes
    the blend of its 3 nearest samples' rotations (:func:`blend_samples`). The per-shape medians
    (:func:`flexavatar.motion.expression_pose_bias`) add up shapes that do not add up:
    single_face.mp4's smile with its lip drop re-tracks pitched by -2.6° on one avatar where the
    medians sum to +1.3°. Samples MediaPipe loses count as no rotation."""
    expressions = np.asarray(expressions, np.float64)
    rest = np.asarray(rest, np.float64)
    sample_codes = np.concatenate([rest[None], expressions[sample_frames(expressions, rest, samples)]])
    _, rotations = retrack(render_expressions(model, avatar, sample_codes))
    return blend_samples(expressions, sample_codes, _rest_relative_rotations(rotations))


def driver_targets(driver: np.ndarray, calibration: MotionCalibration, relative: bool, fps: float) -> np.ndarray:
    """[T,57] the driver's tracking (MediaPipe scores by ICT name) -> [T,S] the scores the avatar's
    renders should re-track at (calibration names): relative, each score's change from the avatar's
    rest (:func:`flexavatar.motion.driver_score_changes`, what driving adds); absolute, the
    driver's scores."""
    scores = ict_to_scores(driver, calibration.names)
    return driver_score_changes(scores, calibration.names, fps, calibration.rest_scores) if relative else scores


def closed_loop_expressions(model, avatar: Avatar, expressions: np.ndarray, rest: np.ndarray, targets: np.ndarray,
                            calibration: MotionCalibration, relative: bool = True, lip_gaps: np.ndarray | None = None,
                            samples: int = POSE_BIAS_SAMPLES, rounds: int = CORRECTION_ROUNDS) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Correct a clip's expressions on this avatar in closed loop; also measure its pose bias.

    expressions [T,57] (:func:`flexavatar.motion.driving_expressions`), rest [57] the avatar's
    rest, targets [T,S] (:func:`driver_targets`). The calibration maps scores to weights through
    curves fitted to many avatars and scaled to this one; this avatar's renders still re-track
    off the driver where its photo's colours and its shapes' interplay differ (the astronaut's
    raised brows over-read by 0.16, single_face.mp4's own avatar puckers at 0.69 for the driver's
    0.31). The rest and up to ``samples`` frames (:func:`sample_frames`) are rendered and
    re-tracked ``rounds`` times (:data:`CORRECTION_ROUNDS`); each round moves each mouth and brow
    weight (:data:`CORRECTION_PARTS`, less :data:`CORRECTION_EXCLUDED`) toward its score's target,
    at most :data:`CORRECTION_MAX_STEP`; up only in :data:`CORRECTION_RAISED_PARTS`, where the
    driver shows the score (:data:`CORRECTION_SHOWN`) and, where the driver's lips are shut
    (``lip_gaps`` [T], :data:`~flexavatar.motion.LIP_CLOSED_GAP`), not where the raise parts the
    avatar's (it is undone: single_face.mp4's closed-lip pucker parted the astronaut's lips to a
    gap of 0.04). Every frame takes the blend of its 3 nearest samples' corrections
    (:func:`blend_samples`); the lip seal is applied again.

    Returns the corrected expressions [T,57] float32 and the rotation [T,3] (axis-angle, radians,
    camera frame) for the cameras to take out: :data:`~flexavatar.motion.POSE_BIAS_SHRINK` of the
    head rotation MediaPipe sees in the uncorrected expressions (as :func:`measured_pose_bias`),
    plus all of what the correction changes of it (it is the correction's, not the driver's).
    3 x 17 renders and re-trackings (~2-3 s on 2 CPU cores): the last for the pose of the final step."""
    expressions = np.asarray(expressions, np.float64)
    rest = np.asarray(rest, np.float64)
    chosen = sample_frames(expressions, rest, samples)
    if not len(chosen) or rounds < 1:  # a still driver: the rest throughout
        return expressions.astype(np.float32), np.zeros((len(expressions), 3))
    names, gains = calibration.names, calibration.shape_gains
    columns = [MEDIAPIPE_BLENDSHAPE_NAMES.index(n) - 1 for n in names]
    parts = np.array([face_part(n) for n in names])
    steerable = np.isin(parts, CORRECTION_PARTS) & calibration.informative & ~np.isin(names, CORRECTION_EXCLUDED)
    wanted = targets[chosen]  # [K,S]
    may_raise = (wanted >= CORRECTION_SHOWN) & np.isin(parts, CORRECTION_RAISED_PARTS)[None]
    # where the driver's lips are shut, a raise that parts the avatar's is undone and not retried
    shut = np.zeros(len(chosen), bool) if lip_gaps is None else np.asarray(lip_gaps)[chosen] < LIP_CLOSED_GAP
    original, corrected = expressions[chosen], expressions[chosen].copy()
    raised = np.zeros_like(corrected)  # [K,57] what the rounds have raised so far
    limits = ict_limits(calibration)
    first_gaps = previous = first_rotations = rotations = measured = None
    for _ in range(rounds):
        codes = np.concatenate([rest[None], corrected])
        scores, seen_rotations, gaps = retrack(render_expressions(model, avatar, codes), with_lip_gaps=True)
        scores = scores[:, columns]
        if np.isnan(scores[0]).any():  # the rest is lost: nothing to measure against
            break
        rotations, measured = seen_rotations, corrected.copy()  # of the last round whose rest was tracked
        first_rotations = rotations if first_rotations is None else first_rotations
        gaps = np.nan_to_num(gaps[1:])
        first_gaps = gaps if first_gaps is None else first_gaps
        parted = shut & (gaps > np.maximum(LIP_OPEN_GAP, first_gaps))
        corrected[parted] -= raised[parted]
        raised[parted] = 0.0
        may_raise[parted] = False
        seen = scores[1:] - scores[0] if relative else scores[1:]
        miss = np.where(np.isnan(seen), 0.0, seen - wanted)  # [K,S]
        weights = np.clip(ict_to_scores(corrected, names, gains), 0.0, 1.0)
        step = calibration.inverse(calibration.response(weights) - CORRECTION_DAMPING * miss) - weights
        if previous is not None:  # the secant through the last two readings, where they moved
            moved, changed = weights - previous[0], seen - previous[1]
            usable = (np.abs(moved) > 1e-3) & (np.abs(changed) > 0.02) & (moved * changed > 0)
            step = np.where(usable, -miss * moved / np.where(usable, changed, 1.0), step)
        previous = (weights, seen)
        step = np.clip(step, -CORRECTION_MAX_STEP, CORRECTION_MAX_STEP)
        step = np.where(steerable & ((step < 0) | may_raise), step, 0.0)
        # a sample just put back to an earlier mouth: its mouth readings are not of that mouth
        step[np.ix_(parted, parts == "mouth")] = 0.0
        before = corrected
        corrected = np.clip(corrected + scores_to_ict(step, names, np.zeros(NUM_EXPRESSIONS), gains), 0.0, limits)
        raised += np.maximum(corrected - before, 0.0)
    if rotations is not None and not np.array_equal(corrected, measured):
        # the last round's step was never seen: the pose the cameras take out is that of what is
        # rendered (single_face.jpg x single_face.mp4: the step pitched the smiles by a further 0.6 deg)
        final_rotations = retrack(render_expressions(model, avatar, np.concatenate([rest[None], corrected])))[1]
        rotations = final_rotations if not np.isnan(final_rotations[0]).any() else rotations
    sample_codes = np.concatenate([rest[None], original])
    change = np.concatenate([np.zeros((1, NUM_EXPRESSIONS)), corrected - original])
    out = np.clip(expressions + blend_samples(expressions, sample_codes, change), 0.0, limits).astype(np.float32)
    out = out if lip_gaps is None else seal_lips(out, lip_gaps)
    if rotations is None:  # the rest was never tracked: no bias to measure
        return out, np.zeros((len(expressions), 3))
    plain_bias, last_bias = _rest_relative_rotations(first_rotations), _rest_relative_rotations(rotations)
    bias = POSE_BIAS_SHRINK * plain_bias + (last_bias - plain_bias)
    return out, blend_samples(expressions, sample_codes, bias)


#: Head turns (degrees about each camera axis) of the pose-gain sweep (:func:`sweep_turns`):
#: MediaPipe sees an avatar's head turns smaller than they are (yaw ~0.87x), so the cameras turn
#: it further.
TURN_DEGREES = np.array([-20.0, -10.0, 10.0, 20.0])
TURN_GAIN_RANGE = (0.7, 1.3)


def sweep_turns(model, avatar: Avatar, degrees: np.ndarray = TURN_DEGREES) -> np.ndarray:
    """[3,D,2] how MediaPipe sees the neutral ``avatar`` turned about its head centre: for each
    camera axis (x pitch, y yaw, z roll) and each angle in ``degrees``, the commanded and the
    re-tracked rotation about that axis (degrees, relative to the unturned render; NaN if untracked)."""
    source = avatar.source_camera
    head_centre = model.head.head_centre().double().cpu().numpy()
    turns = np.zeros((3 * len(degrees), 3))
    for axis in range(3):
        turns[axis * len(degrees) : (axis + 1) * len(degrees), axis] = np.radians(degrees)
    turns = np.concatenate([np.zeros((1, 3)), turns])
    still = matrix_to_axis_angle(np.repeat(source.viewmat[:3, :3].double().cpu().numpy()[None], len(turns), 0))
    translations = np.repeat(source.viewmat[:3, 3].double().cpu().numpy()[None], len(turns), 0)
    # a still driver and a "bias" of minus the turn: the head turns by exactly ``turns`` about its centre
    cameras = driving_cameras(avatar, head_centre, still, translations, True, source.width, rotation_bias=-turns)
    with torch.no_grad():
        rgb, _ = model.render(avatar, cameras, torch.zeros(1, NUM_EXPRESSIONS, device=model.device))
    _, rotations = retrack((rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())
    seen = np.degrees(matrix_to_axis_angle(np.nan_to_num(rotations @ np.swapaxes(rotations[0], -1, -2))))
    seen[np.isnan(rotations).any((1, 2))] = np.nan
    out = np.zeros((3, len(degrees), 2))
    for axis in range(3):
        rows = slice(1 + axis * len(degrees), 1 + (axis + 1) * len(degrees))
        out[axis, :, 0], out[axis, :, 1] = degrees, seen[rows, axis]
    return out


def turn_gain(turns: np.ndarray, by_direction: bool = False) -> np.ndarray:
    """[3] re-tracked / commanded rotation per camera axis (x pitch, y yaw, z roll) from
    :func:`sweep_turns` results [A,3,D,2] of A avatars (least squares through 0, avatars and both
    turn directions pooled), within :data:`TURN_GAIN_RANGE`; ``by_direction``: [3,2], the turns
    in the negative and in the positive direction of each axis apart.

    Pooled over the calibration avatars, one gain per axis measured better than one per
    direction. Per avatar the directions differ: MediaPipe saw a 20° turn up (pitch -20°) at its
    size (1.0-1.12x on 4 of 5 calibration avatars) and a turn down at 0.75-0.94x, so the pooled
    pitch gain of 0.82 over-pitched a driver looking up by a quarter (WolfgangLanger_Pexels.mp4:
    the avatars pitched -12° to -14° where she pitched -10°)."""
    gains = np.ones((3, 2 if by_direction else 1))
    for axis in range(3):
        commanded, seen = turns[:, axis, :, 0].ravel(), turns[:, axis, :, 1].ravel()
        sides = (commanded < 0, commanded > 0) if by_direction else (commanded != 0,)
        for side, on_side in enumerate(sides):
            ok = ~np.isnan(seen) & on_side
            if ok.sum() >= 2:
                gains[axis, side] = (commanded[ok] * seen[ok]).sum() / (commanded[ok] ** 2).sum()
    gains = np.clip(gains, *TURN_GAIN_RANGE)
    return gains if by_direction else gains[:, 0]


def avatar_calibration(model, avatar: Avatar, calibration=None) -> MotionCalibration:
    """The motion calibration to drive ``avatar`` with: a :class:`MotionCalibration` is used as
    is; a file (None: the shipped one) is loaded and fitted to the avatar's own responses
    (:func:`avatar_response_spans`, :func:`flexavatar.motion.calibration_for_avatar`) and head
    turns (:func:`sweep_turns`, :func:`turn_gain` per direction). The fit is kept for the last
    :data:`FITTED_CALIBRATIONS` avatars (by content, network and calibration file): driving one
    avatar again (another clip, the live tab after a reenactment) skips its 68 renders."""
    if isinstance(calibration, MotionCalibration):
        return calibration
    loaded = load_calibration(calibration)  # cached by path and modification time
    key = (avatar.checksum(), model.model_id(), id(loaded))
    with _FITTED_LOCK:
        if key in _FITTED:
            _FITTED.move_to_end(key)
            return _FITTED[key][1]
    opening = rest_eye_opening(model, avatar, loaded)
    rest = opening + rest_brow_lift(model, avatar, loaded, opening)
    rest = rest + rest_lip_release(model, avatar, loaded, rest)
    spans, rest_scores = avatar_response_spans(model, avatar, loaded, rest, with_rest_scores=True)
    gains = turn_gain(sweep_turns(model, avatar)[None], by_direction=True)  # this avatar's own, per direction
    fitted = replace(calibration_for_avatar(loaded, spans), rest_offset=rest, rest_scores=rest_scores, turn_gain=gains)
    with _FITTED_LOCK:
        _FITTED[key] = (loaded, fitted)  # the loaded one is held too: its id stays its own
        while len(_FITTED) > FITTED_CALIBRATIONS:
            _FITTED.popitem(last=False)
    return fitted


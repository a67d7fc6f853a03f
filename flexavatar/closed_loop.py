"""Closed-loop measurements on one avatar: render expressions, re-track them with MediaPipe.

The motion calibration (:mod:`flexavatar.calibration`) measures many avatars once; these
measure the avatar being driven, before it is driven: how far each score moves at full weight
(:func:`avatar_response_spans`, for :func:`flexavatar.motion.calibration_for_avatar`), how far
its neutral eyes must open to re-track open (:func:`rest_eye_opening`), and the head rotation
MediaPipe sees in the clip's own expressions (:func:`measured_pose_bias`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch

from flexavatar.errors import InvalidInputError
from flexavatar.head.blendshapes import EXPRESSION_INDEX, MEDIAPIPE_BLENDSHAPE_NAMES, NUM_EXPRESSIONS
from flexavatar.model import Avatar
from flexavatar.motion import (
    MotionCalibration,
    calibration_for_avatar,
    close_opened_eyes,
    load_calibration,
    scores_to_ict,
)
from flexavatar.rotations import matrix_to_axis_angle
from flexavatar.tracking import detect_face
from flexavatar.tracking.correspondence import load_correspondence
from flexavatar.tracking.pose import mediapipe_to_head_pose

#: Avatars whose fitted calibration :func:`avatar_calibration` keeps (a few KB each).
FITTED_CALIBRATIONS = 16
_FITTED: OrderedDict = OrderedDict()
_FITTED_LOCK = threading.Lock()

#: :func:`rest_eye_opening`: the eyeWide weights rendered; the last is the most it opens a rest.
REST_OPENING_STEPS = np.array([0.0, 0.5, 1.0])
#: Expressions of a clip rendered and re-tracked to measure the avatar's own expression pose bias
#: (:func:`measured_pose_bias`).
POSE_BIAS_SAMPLES = 16


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


def retrack(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[F,H,W,3] uint8 renders -> MediaPipe scores [F,S] (its 52 minus ``_neutral``) and head
    rotations [F,3,3] (OpenCV camera frame, :func:`~flexavatar.tracking.pose.mediapipe_to_head_pose`),
    each frame tracked on its own (IMAGE mode); NaN where no face is found."""
    scores = np.full((len(frames), len(MEDIAPIPE_BLENDSHAPE_NAMES) - 1), np.nan)
    rotations = np.full((len(frames), 3, 3), np.nan)
    correspondence = load_correspondence()
    for i, frame in enumerate(frames):  # one landmarker call per frame
        try:
            found = detect_face(frame, with_mask=False)
        except InvalidInputError:
            continue
        scores[i] = found.blendshapes[1:]
        rotations[i] = mediapipe_to_head_pose(found.transform, correspondence)[0]
    return scores, rotations


def avatar_response_spans(model, avatar: Avatar, calibration: MotionCalibration, rest: np.ndarray | None = None) -> np.ndarray:
    """[S] how far each score moves when ``avatar`` shows that score's shape(s) at calibration
    weight 1 (times its shape gain) on its neutral ``rest`` [57] (default zeros; its eyes held
    open, :func:`rest_eye_opening`, let go of in the blinks as driving does): the re-tracked score
    minus the rest render's, from the avatar's own source camera (NaN where a render is not
    tracked). S + 1 renders and re-trackings (~2-3 s on 2 CPU cores)."""
    names = calibration.names
    rest = np.zeros(NUM_EXPRESSIONS) if rest is None else np.asarray(rest, np.float64)
    values = np.concatenate([np.zeros((1, len(names))), np.eye(len(names))])
    codes = np.maximum(scores_to_ict(values, names, np.zeros(NUM_EXPRESSIONS), calibration.shape_gains), rest)
    codes = close_opened_eyes(codes, rest)
    scores, _ = retrack(render_expressions(model, avatar, codes))
    columns = [MEDIAPIPE_BLENDSHAPE_NAMES.index(n) - 1 for n in names]
    return scores[1 + np.arange(len(names)), columns] - scores[0, columns]


def rest_eye_opening(model, avatar: Avatar, calibration: MotionCalibration) -> np.ndarray:
    """[57] ICT weights (eyeWide of each eye, else 0) that open ``avatar``'s neutral eyes until
    they re-track no more closed than the calibration avatars' neutral eyes (its blink response at
    weight 0), at most the last of :data:`REST_OPENING_STEPS`. A smiling photo's eyes stay narrow in its colours
    after the expression is removed: single_face.jpg's avatar re-tracks a blink of 0.39 at rest
    (the astronaut's 0.07), so its blinks barely register and whatever else moves its lids reads as
    one. :data:`REST_OPENING_STEPS` renders of both eyes opened together, interpolated per eye."""
    offset = np.zeros(NUM_EXPRESSIONS)
    sides = [("L", "eyeBlinkLeft"), ("R", "eyeBlinkRight")]
    if any(name not in calibration.names for _, name in sides):
        return offset
    codes = np.zeros((len(REST_OPENING_STEPS), NUM_EXPRESSIONS))
    for side, _ in sides:
        codes[:, EXPRESSION_INDEX[f"eyeWide_{side}"]] = REST_OPENING_STEPS
    scores, _ = retrack(render_expressions(model, avatar, codes))
    for side, name in sides:
        seen = scores[:, MEDIAPIPE_BLENDSHAPE_NAMES.index(name) - 1]
        target = calibration.responses[calibration.names.index(name), 0]
        if np.isnan(seen).any() or seen[0] <= target:
            continue
        # the smallest opening that re-tracks at the target (readings fall as the lids open)
        reached = np.flatnonzero(seen <= target)
        if len(reached):
            k = reached[0]
            opening = np.interp(target, [seen[k], seen[k - 1]], [REST_OPENING_STEPS[k], REST_OPENING_STEPS[k - 1]])
        else:
            opening = REST_OPENING_STEPS[-1]
        offset[EXPRESSION_INDEX[f"eyeWide_{side}"]] = float(opening)
    return offset


def measured_pose_bias(model, avatar: Avatar, expressions: np.ndarray, rest: np.ndarray,
                       samples: int = POSE_BIAS_SAMPLES) -> np.ndarray:  # fmt: skip
    """[T,3] axis-angle (radians, camera frame): the head rotation MediaPipe sees in ``avatar``
    showing each of ``expressions`` [T,57] with its head still, relative to its ``rest`` [57].
    Measured in closed loop, not predicted: the rest and up to ``samples`` of the frames (farthest
    apart in expression, so each distinct expression of the clip is one) are rendered from the
    source camera and re-tracked; every frame takes the inverse-square-distance blend of its 3
    nearest samples' rotations. The per-shape medians
    (:func:`flexavatar.motion.expression_pose_bias`) add up shapes that do not add up:
    single_face.mp4's smile with its lip drop re-tracks pitched by -2.6° on one avatar where the
    medians sum to +1.3°. Samples MediaPipe loses count as no rotation."""
    expressions = np.asarray(expressions, np.float64)
    rest = np.asarray(rest, np.float64)
    chosen: list[int] = []  # farthest-point sampling, starting from the rest
    distance = np.linalg.norm(expressions - rest, axis=1)  # [T] to the nearest sample so far
    while len(chosen) < min(samples, len(expressions)) and distance.max() > 1e-6:
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(expressions - expressions[chosen[-1]], axis=1))
    sample_codes = np.concatenate([rest[None], expressions[chosen]])
    _, rotations = retrack(render_expressions(model, avatar, sample_codes))
    if np.isnan(rotations[0]).any():  # the rest itself is lost: nothing to measure against
        return np.zeros((len(expressions), 3))
    seen = matrix_to_axis_angle(np.nan_to_num(rotations @ np.swapaxes(rotations[0], -1, -2)))
    seen[np.isnan(rotations).any((1, 2))] = 0.0
    # every frame: inverse-square-distance blend of its 3 nearest samples (the rest included)
    between = np.linalg.norm(expressions[:, None] - sample_codes[None], axis=2)  # [T,K]
    nearest = np.argsort(between, axis=1)[:, :3]
    weights = 1.0 / np.maximum(np.take_along_axis(between, nearest, 1), 1e-6) ** 2
    return (seen[nearest] * weights[..., None]).sum(1) / weights.sum(1, keepdims=True)


def avatar_calibration(model, avatar: Avatar, calibration=None) -> MotionCalibration:
    """The motion calibration to drive ``avatar`` with: a :class:`MotionCalibration` is used as
    is; a file (None: the shipped one) is loaded and fitted to the avatar's own responses
    (:func:`avatar_response_spans`, :func:`flexavatar.motion.calibration_for_avatar`). The fit is
    kept for the last :data:`FITTED_CALIBRATIONS` avatars (by content, network and calibration
    file): driving one avatar again (another clip, the live tab after a reenactment) skips its
    52 renders."""
    if isinstance(calibration, MotionCalibration):
        return calibration
    loaded = load_calibration(calibration)  # cached by path and modification time
    key = (avatar.checksum(), model.model_id(), id(loaded))
    with _FITTED_LOCK:
        if key in _FITTED:
            _FITTED.move_to_end(key)
            return _FITTED[key][1]
    opening = rest_eye_opening(model, avatar, loaded)
    fitted = calibration_for_avatar(loaded, avatar_response_spans(model, avatar, loaded, opening))
    fitted = replace(fitted, rest_offset=opening)
    with _FITTED_LOCK:
        _FITTED[key] = (loaded, fitted)  # the loaded one is held too: its id stays its own
        while len(_FITTED) > FITTED_CALIBRATIONS:
            _FITTED.popitem(last=False)
    return fitted


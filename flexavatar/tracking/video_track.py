"""Track a driving video: per-frame ICT expression, head pose and head crop box.

Frames stream from :func:`flexavatar.video.iter_frames` (one in memory at a time) through a
VIDEO-mode MediaPipe FaceLandmarker that looks for several faces (:func:`~flexavatar.tracking.detect.video_landmarker`:
so MediaPipe applies no causal filter of its own and nothing lags; the smoothing below is
zero-phase). Of the faces in a frame, the one followed is the largest at first, then the one
near where it was last seen (:func:`followed_face`).
Per frame: blendshapes -> 57 ICT weights; facial transformation matrix -> head pose in
OpenCV camera space (:func:`flexavatar.tracking.pose.mediapipe_to_head_pose`: x_cam = R
x_head + t, metres, for MediaPipe's assumed camera: focal ``VideoTrack.focal_px``, principal
point at the frame centre); landmarks -> crop box (:func:`flexavatar.tracking.crop.crop_boxes_from_landmarks`,
the framing of :func:`~flexavatar.tracking.crop.crop_head`).

Frames without a face are flagged (``has_face`` False, ``confidence`` 0) and filled by linear
interpolation between the nearest reliable frames (gaps at the start/end hold the first/last
reliable value). Frames where the face is found but the tracking is not to be trusted get
``confidence`` 0 and are filled the same way: a head turned past profile, and *excursions*
(:func:`excursion_frames`): a hand over the face makes MediaPipe snap to a different pose and
size and snap back when the hand leaves, so a short stretch entered and left by such jumps,
with the head back where it was, is interpolated over instead of followed. Then a zero-phase One Euro filter smooths
expressions (lighter: :data:`EXPRESSION_SMOOTHING`), pose and crop boxes.
Rotations are filtered as axis-angle *relative to the first tracked frame's rotation*: a
frontal head is ~180 deg about x in OpenCV axes, where raw axis-angle vectors wrap.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from flexavatar.errors import InvalidInputError
from flexavatar.head.blendshapes import mediapipe_to_ict
from flexavatar.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    relative_rotvecs,
    rotation_angle_deg,
    unwrap_rotvecs,
)
from flexavatar.tracking.correspondence import load_correspondence
from flexavatar.tracking.crop import crop_boxes_from_landmarks
from flexavatar.tracking.detect import (
    MIN_FACE_PX,
    blendshape_scores,
    landmark_box,
    landmarks_to_pixels,
    mp_image,
    video_landmarker,
)
from flexavatar.tracking.filters import smooth_sequence
from flexavatar.tracking.pose import mediapipe_focal_px, mediapipe_to_head_pose
from flexavatar.video import VideoInfo, iter_frames, probe_video

#: Channel scales before One Euro filtering, so one ``beta`` fits all: 1 unit ~ a full
#: expression weight, ~11 degrees of rotation, 10 cm of translation, 20% of the crop side.
ROTATION_UNIT_RAD = 0.2
TRANSLATION_UNIT_M = 0.1
CROP_UNIT_FRACTION = 0.2
#: One Euro speed coefficients: expressions (speech moves the jaw at 3-6 Hz: let it through)
#: and pose / crop boxes (rigid motion: smoother). At 4 a syllable's jaw (open and shut within
#: 3-4 frames) was smeared over the next frames: eval --motion jawOpen r on examples/driving.mp4
#: 0.79-0.88 over 5 avatars; at 30 0.90-0.93 (a still face is smoothed as before: same cutoff).
EXPRESSION_BETA = 30.0
POSE_BETA = 0.5
#: How far (face widths per frame) the followed face's centre may move between frames (:func:`followed_face`).
FOLLOW_GATE = 0.5
#: Runs of detections shorter than this, in a video that has longer ones, are false positives.
MIN_FACE_RUN = 3
#: A frame-to-frame change beyond these is a tracking snap, not head motion: rotation (degrees),
#: landmark-box width (log ratio, ~12%).
JUMP_DEG = 10.0
JUMP_LOG_WIDTH = 0.12
#: Excursions longer than this (seconds) are followed: the head really went somewhere else.
MAX_EXCURSION_S = 4.0
#: Frames below this confidence (turned past ~85 deg) are interpolated over, not followed.
MIN_RELIABLE_CONFIDENCE = 0.1
PROGRESS_EVERY = 5
#: Expressions are smoothed at this fraction of the requested strength (pose at all of it):
#: speech opens the jaw 3-6 times a second, which stronger smoothing flattens (closed loop on
#: examples/driving.mp4: jawOpen r 0.79 -> 0.88 at strength 0.2 instead of 0.5).
EXPRESSION_SMOOTHING = 0.4


@dataclass
class VideoTrack:
    """Per-frame tracking of a video (T = frames tracked; all arrays numpy).

    expressions: [T,57] float32 ICT weights in [0,1] (smoothed). blendshapes: [T,52] float32
        raw MediaPipe scores (0 where no face). rotations: [T,3] float32 axis-angle (radians)
        and translations: [T,3] float32 metres of the ICT head in the OpenCV camera of the
        frame (x_cam = R x_head + t; camera looks down +z, y down), consecutive axis-angle
        vectors unwrapped (no 2 pi jumps; the angle may exceed pi). confidence: [T] float32 in
        [0,1] (0 = no face, or a face not to be trusted: interpolated). has_face: [T] bool. crop_boxes: [T,3] float32 (x0, y0, side)
        in source pixels, the crop_head framing (smoothed).
    fps, frame_count (= T), num_source_frames (before max_frames), truncated (T < source),
    width, height (frame size), focal_px (the camera the pose refers to; principal point at
    the frame centre), warnings, name. face_boxes: [T,4] float32 (x0, y0, x1, y1) source px,
    the box of the 478 landmarks (unsmoothed; interpolated where no face). lip_gaps: [T] float32
    :func:`lip_gaps` of each frame (unsmoothed; interpolated where no face).
    """

    expressions: np.ndarray
    blendshapes: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    confidence: np.ndarray
    has_face: np.ndarray
    crop_boxes: np.ndarray
    fps: float
    frame_count: int
    num_source_frames: int
    truncated: bool
    width: int
    height: int
    focal_px: float
    warnings: list[str] = field(default_factory=list)
    name: str = "video"
    face_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    lip_gaps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def rotation_matrices(self) -> np.ndarray:
        """[T,3,3] float64 rotations of :attr:`rotations`."""
        return axis_angle_to_matrix(self.rotations)


#: MediaPipe landmarks: inner lips (upper, lower) at the middle, forehead top and chin.
INNER_LIP_LANDMARKS = (13, 14)
FACE_HEIGHT_LANDMARKS = (10, 152)


def lip_gaps(landmarks: np.ndarray) -> np.ndarray:
    """[...,478,2+] landmarks (pixels) -> [...] the gap between the inner lips at the middle, as a
    fraction of the face height (closed lips ~0.005, speech 0.02-0.05, a wide-open mouth > 0.1)."""
    gap = np.linalg.norm(landmarks[..., INNER_LIP_LANDMARKS[0], :2] - landmarks[..., INNER_LIP_LANDMARKS[1], :2], axis=-1)
    height = np.linalg.norm(landmarks[..., FACE_HEIGHT_LANDMARKS[0], :2] - landmarks[..., FACE_HEIGHT_LANDMARKS[1], :2], axis=-1)
    return gap / np.maximum(height, 1e-6)


def followed_face(boxes: list[tuple[float, float, float, float]], last_box, frames_since: int, fps: float) -> int | None:
    """Index of the face to follow among a frame's landmark ``boxes`` [(x0, y0, x1, y1)] pixels,
    or None when the followed face is not among them.

    ``last_box``: where the followed face was last seen, ``frames_since`` frames ago (None: none
    followed yet). The nearest face counts when its centre is within :data:`FOLLOW_GATE` of that
    face's width per frame since; a face seen farther away is someone else (a detector that
    misses the followed face in a crowd still finds others). With none followed yet, or none for
    a second, the largest face is taken."""
    boxes_array = np.asarray(boxes, np.float64).reshape(-1, 4)
    if last_box is None or frames_since > fps:
        return int(np.argmax(np.prod(boxes_array[:, 2:] - boxes_array[:, :2], axis=1)))
    last = np.asarray(last_box, np.float64)
    distances = np.linalg.norm((boxes_array[:, :2] + boxes_array[:, 2:]) / 2 - (last[:2] + last[2:]) / 2, axis=1)
    nearest = int(np.argmin(distances))
    return nearest if distances[nearest] <= FOLLOW_GATE * (last[2] - last[0]) * max(frames_since, 1) else None


def fill_gaps(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear interpolation of rows [T,C] where ``valid`` [T] is False, between the nearest
    valid rows; leading/trailing gaps hold the first/last valid row. Needs one valid row."""
    values = np.asarray(values, dtype=np.float64)
    known = np.flatnonzero(valid)
    frames = np.arange(len(values))
    after = np.clip(np.searchsorted(known, frames), 0, len(known) - 1)  # first known >= t
    before = np.clip(after - (known[after] > frames), 0, len(known) - 1)  # last known <= t
    lo, hi = known[before], known[after]
    span = np.maximum(hi - lo, 1)
    weight = np.where(hi > lo, (frames - lo) / span, 0.0)[:, None]
    return values[lo] * (1 - weight) + values[hi] * weight


def drop_short_runs(flags: np.ndarray, min_run: int) -> np.ndarray:
    """[T] bool with runs of True shorter than ``min_run`` cleared, unless no run is that long
    (a very short video keeps what it has)."""
    flags = np.asarray(flags, dtype=bool)
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = ends - starts
    if len(lengths) == 0 or lengths.max() < min_run:
        return flags.copy()
    run_id = np.cumsum(edges[:-1] == 1) - 1  # index of the run each frame belongs to
    return flags & (lengths[np.clip(run_id, 0, None)] >= min_run)


def excursion_frames(rotations: np.ndarray, widths: np.ndarray, fps: float) -> np.ndarray:
    """[T] bool: frames inside tracking excursions (see the module docstring).

    rotations [T,3,3] and widths [T] px of consecutive tracked frames. A jump is a step above
    :data:`JUMP_DEG` or :data:`JUMP_LOG_WIDTH`; the stretches between jumps are segments. The
    segment whose pose most frames share (mid-segment poses agreeing) is trusted; walking away
    from it, a segment is trusted when it starts
    where the last trusted one ended (the head came back) or lasts :data:`MAX_EXCURSION_S` or
    more (the head really went there); the others are excursions.
    """
    count = len(widths)
    flags = np.zeros(count, dtype=bool)
    if count < 3:
        return flags
    log_width = np.log(np.maximum(np.asarray(widths, np.float64), 1.0))

    def agree(a: int, b: int) -> bool:
        return bool(rotation_angle_deg(rotations[a], rotations[b]) <= JUMP_DEG
                    and abs(log_width[a] - log_width[b]) <= JUMP_LOG_WIDTH)  # fmt: skip

    turn = rotation_angle_deg(rotations[1:], rotations[:-1])
    jumps = (turn > JUMP_DEG) | (np.abs(np.diff(log_width)) > JUMP_LOG_WIDTH)  # jumps[i]: between i and i+1
    starts = np.concatenate([[0], np.flatnonzero(jumps) + 1])
    ends = np.concatenate([starts[1:], [count]])  # segment k is frames [starts[k], ends[k])
    lengths = ends - starts
    long_enough = lengths >= MAX_EXCURSION_S * fps
    # the anchor: the segment whose pose most frames share (the covered stretch may be the longest)
    middles = (starts + ends) // 2
    support = [sum(lengths[j] for j in range(len(starts)) if agree(middles[j], middles[k])) for k in range(len(starts))]
    anchor = int(np.lexsort((lengths, support))[-1])
    edge = ends[anchor] - 1  # last trusted frame, walking right
    for k in range(anchor + 1, len(starts)):  # few segments: jumps are rare
        if long_enough[k] or agree(starts[k], edge):
            edge = ends[k] - 1
        else:
            flags[starts[k] : ends[k]] = True
    edge = starts[anchor]  # first trusted frame, walking left
    for k in range(anchor - 1, -1, -1):
        if long_enough[k] or agree(ends[k] - 1, edge):
            edge = starts[k]
        else:
            flags[starts[k] : ends[k]] = True
    return flags


def _face_confidence(face_width_px: float, rotation: np.ndarray) -> float:
    """Heuristic confidence (MediaPipe's tasks API exposes no per-face score): 1 for a face at
    least 2x :data:`MIN_FACE_PX` wide turned < 45 deg from the camera, falling to 0 at
    ``MIN_FACE_PX / 2`` px or 90 deg (landmarks beyond that are guesses)."""
    size = np.clip((face_width_px - MIN_FACE_PX / 2) / (1.5 * MIN_FACE_PX), 0.0, 1.0)
    facing = -rotation[2, 2]  # head +z (out of the face) against the camera's viewing axis
    angle = math.degrees(math.acos(float(np.clip(facing, -1.0, 1.0))))
    turn = np.clip((90.0 - angle) / 45.0, 0.0, 1.0)
    return float(size * turn)


def track_video(
    path: str | os.PathLike | VideoInfo,
    max_frames: int | None = None,
    smoothing: float = 0.5,
    resolution: int = 256,
    progress: Callable[[str, float], None] | None = None,
) -> VideoTrack:
    """Track the face of the video at ``path``, a file or its :class:`VideoInfo` (see the module docstring).

    max_frames: stop after this many frames (``truncated`` says whether it cut).
    smoothing: One Euro strength in [0,1], 0 = off. resolution: kept for API symmetry with
    :func:`crop_head` (crop boxes are in source pixels, valid at any crop resolution).
    progress: ``progress(stage, fraction)`` every few frames.
    Raises :class:`InvalidInputError` for unreadable videos and videos without any face.
    """
    del resolution  # boxes are resolution-independent; the argument documents intent
    info = probe_video(path)  # a VideoInfo is passed through: a request probes its video once
    name = info.path.name
    num_source = int(info.frame_count)
    expected = num_source if max_frames is None else min(num_source, max_frames)
    fps = float(info.fps) if info.fps and info.fps > 0 else 30.0
    corr = load_correspondence()

    blendshapes, transforms, landmark_sets, widths, has_face = [], [], [], [], []
    width = height = 0
    last_box, last_seen, most_faces, last_timestamp = None, -1, 1, -1
    with video_landmarker() as landmarker, contextlib.closing(iter_frames(info, max_frames)) as frames:
        for index, frame in enumerate(frames):
            height, width = frame.shape[:2]
            # VIDEO mode needs strictly increasing timestamps (ms).
            timestamp = max(int(round(index * 1000.0 / fps)), last_timestamp + 1)
            last_timestamp = timestamp
            result = landmarker.detect_for_video(mp_image(frame), timestamp)
            faces = [landmarks_to_pixels(face, width, height) for face in result.face_landmarks]
            boxes = [landmark_box(face) for face in faces]
            most_faces = max(most_faces, len(faces))
            chosen = followed_face(boxes, last_box, index - last_seen, fps) if faces else None
            has_face.append(chosen is not None)
            if chosen is not None:
                landmarks = faces[chosen]
                last_box, last_seen = boxes[chosen], index
                landmark_sets.append(landmarks)
                blendshapes.append(blendshape_scores(result.face_blendshapes[chosen]))
                transforms.append(
                    np.asarray(result.facial_transformation_matrixes[chosen], np.float64).reshape(4, 4)
                )
                widths.append(float(np.ptp(landmarks[:, 0])))
            if progress is not None and index % PROGRESS_EVERY == 0:
                progress("tracking", min(index / max(expected, 1), 1.0))

    num_frames = len(has_face)
    has_face_array = np.array(has_face, dtype=bool)
    keep = drop_short_runs(has_face_array, MIN_FACE_RUN)[has_face_array]  # per detection
    has_face_array = drop_short_runs(has_face_array, MIN_FACE_RUN)
    blendshapes, transforms, landmark_sets, widths = (
        [item for item, k in zip(items, keep, strict=True) if k]
        for items in (blendshapes, transforms, landmark_sets, widths)
    )
    if num_frames == 0:
        raise InvalidInputError(f"No frames could be read from {name}; upload an MP4, MOV or WebM video.")
    if not has_face_array.any():
        raise InvalidInputError(
            f"No face found in {name}: none of its {num_frames} frames shows a face. "
            "Upload a video of one person's face, frontal-ish and well lit."
        )

    tracked = np.flatnonzero(has_face_array)
    raw_blendshapes = np.zeros((num_frames, 52), np.float64)
    raw_blendshapes[tracked] = np.stack(blendshapes)
    rotations_tracked, translations_tracked = mediapipe_to_head_pose(np.stack(transforms), corr)
    crop_tracked = crop_boxes_from_landmarks(np.stack(landmark_sets))
    confidence = np.zeros(num_frames, np.float64)
    confidence[tracked] = [_face_confidence(w, r) for w, r in zip(widths, rotations_tracked, strict=True)]
    confidence[tracked[excursion_frames(rotations_tracked, np.asarray(widths), fps)]] = 0.0
    reliable = has_face_array & (confidence >= MIN_RELIABLE_CONFIDENCE)
    if not reliable.any():  # nothing better to go on: follow what was found
        reliable = has_face_array

    def scatter(values: np.ndarray) -> np.ndarray:
        full = np.zeros((num_frames, values.shape[-1]), np.float64)
        full[tracked] = values
        return fill_gaps(full, reliable)

    reference = rotations_tracked[int(np.argmax(reliable[tracked]))]
    relative = unwrap_rotvecs(relative_rotvecs(rotations_tracked, reference))  # small, continuous
    expression_full = scatter(mediapipe_to_ict(raw_blendshapes[tracked]))
    relative_full = scatter(relative)
    translation_full = scatter(translations_tracked)
    crop_full = scatter(crop_tracked)
    landmarks_tracked = np.stack(landmark_sets)[..., :2]
    face_boxes = scatter(np.concatenate([landmarks_tracked.min(1), landmarks_tracked.max(1)], axis=1))
    gaps = scatter(lip_gaps(landmarks_tracked)[:, None])[:, 0]

    # One filter over all channels, each scaled to comparable units.
    crop_unit = CROP_UNIT_FRACTION * max(float(np.median(crop_tracked[:, 2])), 1.0)
    channels = np.concatenate(
        [
            expression_full,
            relative_full / ROTATION_UNIT_RAD,
            translation_full / TRANSLATION_UNIT_M,
            crop_full / crop_unit,
        ],
        axis=1,
    )
    n_expr = expression_full.shape[1]
    smoothed = np.concatenate([
        smooth_sequence(channels[:, :n_expr], fps, smoothing * EXPRESSION_SMOOTHING, beta=EXPRESSION_BETA),
        smooth_sequence(channels[:, n_expr:], fps, smoothing, beta=POSE_BETA),
    ], axis=1)  # fmt: skip
    expressions = np.clip(smoothed[:, :n_expr], 0.0, 1.0)
    relative_smooth = smoothed[:, n_expr : n_expr + 3] * ROTATION_UNIT_RAD
    translations = smoothed[:, n_expr + 3 : n_expr + 6] * TRANSLATION_UNIT_M
    crop_boxes = smoothed[:, n_expr + 6 :] * crop_unit
    rotations = unwrap_rotvecs(matrix_to_axis_angle(reference @ axis_angle_to_matrix(relative_smooth)))

    warnings: list[str] = []
    if most_faces > 1:
        warnings.append(f"{name}: up to {most_faces} faces in a frame; following the one that was largest where a face was first found")
    missing = num_frames - len(tracked)
    if missing:
        warnings.append(
            f"no face in {missing} of {num_frames} frames of {name}; those frames are interpolated"
        )
    unreliable = int((has_face_array & ~reliable).sum())
    if unreliable:
        warnings.append(
            f"{name}: tracking unreliable in {unreliable} of {num_frames} frames (face covered or turned "
            "away); pose and expression are interpolated there"
        )
    truncated = max_frames is not None and num_frames >= max_frames and num_source > num_frames
    if truncated:
        warnings.append(f"{name}: tracked the first {num_frames} of {num_source} frames")
    if progress is not None:
        progress("tracking", 1.0)
    return VideoTrack(
        expressions=expressions.astype(np.float32),
        blendshapes=raw_blendshapes.astype(np.float32),
        rotations=rotations.astype(np.float32),
        translations=translations.astype(np.float32),
        confidence=confidence.astype(np.float32),
        has_face=has_face_array,
        crop_boxes=crop_boxes.astype(np.float32),
        fps=fps,
        frame_count=num_frames,
        num_source_frames=num_source,
        truncated=truncated,
        width=int(width),
        height=int(height),
        focal_px=mediapipe_focal_px(height),
        warnings=warnings,
        name=name,
        face_boxes=face_boxes.astype(np.float32),
        lip_gaps=gaps.astype(np.float32),
    )

"""Live driving: one camera frame in, one rendered avatar frame out, as fast as they come.

A :class:`LiveSession` belongs to one viewer (one browser tab, one CLI window). Per frame it
tracks the face with its own VIDEO-mode MediaPipe landmarker (tracking between frames is
faster than detecting each one), smooths expression and head pose causally (a One Euro
filter: a lag-free backward pass is impossible live), takes the motion relative to the
*neutral* frame (the first frame with a face, or the first after :meth:`LiveSession.reset_neutral`)
and renders the avatar with it, through the same relative-motion functions as ``reenact``.

Frames are dropped, never queued: a frame older than the last one processed, or one that
arrives while the session is still busy with another, returns ``None`` at once. A viewer who
falls behind therefore sees the newest frame next, not a growing backlog.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from flexavatar.closed_loop import avatar_calibration
from flexavatar.errors import InvalidInputError
from flexavatar.framing import driving_cameras
from flexavatar.head.blendshapes import NUM_EXPRESSIONS, mediapipe_to_ict
from flexavatar.model import Avatar, FlexAvatarModel
from flexavatar.motion import MotionCalibration, driving_expressions
from flexavatar.options import DEFAULTS, WHITE
from flexavatar.pipeline import _background, _to_uint8, load_model
from flexavatar.rest import rest_expression
from flexavatar.rotations import axis_angle_to_matrix, matrix_to_axis_angle, relative_rotvecs
from flexavatar.tracking.correspondence import load_correspondence
from flexavatar.tracking.detect import (
    blendshape_scores,
    close_task,
    create_landmarker,
    landmarks_to_pixels,
    mp_image,
)
from flexavatar.tracking.filters import OneEuroFilter, min_cutoff_for
from flexavatar.tracking.fit import torch_threads
from flexavatar.tracking.pose import mediapipe_to_head_pose
from flexavatar.tracking.video_track import (
    EXPRESSION_BETA,
    POSE_BETA,
    ROTATION_UNIT_RAD,
    TRANSLATION_UNIT_M,
    lip_gaps,
)

#: Extra tracking passes over a frame where the face is (re)acquired (:func:`reread_acquired`).
REACQUIRE_PASSES = 1

#: Frame rate the causal filter assumes (webcams stream at 15-30 frames/s; the Space asks for ~20).
NOMINAL_RATE_HZ = 20.0
#: Live smoothing is lighter than offline (0.5): a causal filter lags, and lag is what a viewer sees.
LIVE_SMOOTHING = 0.3
#: Frames over which :meth:`LiveSession.stats` averages the frame rate and latency.
STATS_WINDOW = 30
#: Issue 15's frame rate for the Space's /live on 2 CPU cores (bench live, tests/test_live_app.py).
TARGET_FPS = 15.0


def reread_acquired(landmarker, image, result, timestamp_ms: int):
    """The VIDEO-mode ``result`` of a frame where the face was (re)acquired -> (result, timestamp)
    after tracking the same ``image`` :data:`REACQUIRE_PASSES` more times at +1 ms each. The
    first result comes from the detector's crop, the next frames' from the tracker's, and the two
    read the same face differently (real clips: eyeSquint 0.22 -> 0.35 from frame 0 to 1);
    relative motion starts here, so keep the tracker's reading (more passes measured no different).
    Returns the last timestamp used (the next frame's must be later)."""
    for _ in range(REACQUIRE_PASSES):
        timestamp_ms += 1
        again = landmarker.detect_for_video(image, timestamp_ms)
        if len(again.face_landmarks) == 0:
            break
        result = again
    return result, timestamp_ms


@dataclass
class LiveFrame:
    """One processed camera frame.

    image: [S,S,3] uint8 rendered avatar. timestamp_ms: the camera frame's time. has_face: a
    face was tracked in it (otherwise the last pose and expression are held). expression:
    [57] ICT weights the avatar was rendered with. track_ms / render_ms: processing time of the
    two steps (wall clock, this call).
    """

    image: np.ndarray
    timestamp_ms: int
    has_face: bool
    expression: np.ndarray
    track_ms: float
    render_ms: float

    @property
    def latency_ms(self) -> float:
        return self.track_ms + self.render_ms


def check_frame(frame, name: str = "camera frame") -> np.ndarray:
    """A uint8 HxWx3 RGB array (RGBA and grey accepted), or a clear :class:`InvalidInputError`."""
    frame = np.asarray(frame) if frame is not None else None
    if frame is None or frame.dtype != np.uint8 or frame.ndim not in (2, 3) or min(frame.shape[:2]) < 16:
        shape = None if frame is None else (frame.shape, str(frame.dtype))
        raise InvalidInputError(f"{name}: expected an RGB image (uint8, at least 16x16 pixels), got {shape}. "
                                "Check that the camera is on and streaming.")  # fmt: skip
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    return np.ascontiguousarray(frame[..., :3])


class LiveSession:
    """Drive ``avatar`` from a stream of camera frames (see the module docstring).

    resolution: output side in pixels. smoothing: One Euro strength in [0,1] (0 = off).
    calibration: MediaPipe score -> ICT weight mapping (:mod:`flexavatar.motion`); default the
    shipped closed-loop one fitted to this avatar (~2 s at the start), as ``reenact`` uses.
    neutralise: start from a neutral face (the photo's expression removed), as ``reenact`` does.
    Use as a context manager, or call :meth:`close`, to free the landmarker.
    """

    def __init__(
        self,
        avatar: Avatar,
        model: FlexAvatarModel | None = None,
        resolution: int = 256,
        smoothing: float = LIVE_SMOOTHING,
        background=WHITE,
        rate_hz: float = NOMINAL_RATE_HZ,
        calibration: MotionCalibration | None = None,
        neutralise: bool = DEFAULTS.neutralise,
    ):
        self.model = model if model is not None else load_model()
        self.avatar = avatar.to(self.model.device)
        self.deform_cache = self.model.prepare_deform(self.avatar)  # what every frame shares: once per session
        self.resolution = int(resolution)
        self.background = background
        self.calibration = avatar_calibration(self.model, self.avatar, calibration)  # as reenact does
        self.neutralise = bool(neutralise)
        self.head_centre = self.model.head.head_centre().double().cpu().numpy()
        self.correspondence = load_correspondence()
        min_cutoff = min_cutoff_for(float(smoothing))
        beta = np.concatenate([np.full(NUM_EXPRESSIONS, EXPRESSION_BETA), np.full(6, POSE_BETA)])
        self.filter = None if min_cutoff is None else OneEuroFilter(rate_hz, min_cutoff_hz=min_cutoff, beta=beta)
        self.landmarker = create_landmarker(video=True, num_faces=1)
        self.lock = threading.Lock()
        # rotation [3,3], t [3], expr [57], lip gap; and the smoothed rotvec, t, expr, raw lip gap
        self.neutral: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        self.face_tracked = False  # the last frame had a face (the tracker, not the detector, reads the next)
        self.current: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        self.last_timestamp_ms = -1
        self.started = time.monotonic()
        self.frames_done = 0
        self.frames_dropped = 0
        self.recent: deque[tuple[float, float]] = deque(maxlen=STATS_WINDOW)  # (end time s, latency ms)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free the landmarker (idempotent)."""
        with self.lock:
            if self.landmarker is not None:
                close_task(self.landmarker)
                self.landmarker = None

    def reset_neutral(self) -> None:
        """Take the next frame with a face as the new neutral: the avatar returns to its rest
        expression and pose, and follows the motion from there."""
        with self.lock:
            self.neutral = self.current = None
            if self.filter is not None:
                self.filter.reset()

    # ------------------------------------------------------------------ per frame
    def process(self, frame, timestamp_ms: int | None = None) -> LiveFrame | None:
        """Track ``frame`` (uint8 HxWx3 RGB) and render the avatar; ``None`` if it was dropped.

        timestamp_ms: the frame's capture time (default: now); must increase from frame to frame,
        older frames are dropped (a frame where the face is acquired is tracked again at +1 ms).
        A frame arriving while another is processed is dropped too.
        """
        frame = check_frame(frame)
        if timestamp_ms is None:
            timestamp_ms = int((time.monotonic() - self.started) * 1000.0)
        timestamp_ms = int(timestamp_ms)
        if timestamp_ms <= self.last_timestamp_ms or not self.lock.acquire(blocking=False):
            self.frames_dropped += 1
            return None
        try:
            if self.landmarker is None:
                raise InvalidInputError("this live session is closed; start a new one")
            if timestamp_ms <= self.last_timestamp_ms:  # a newer frame won the race for the lock
                self.frames_dropped += 1
                return None
            self.last_timestamp_ms = timestamp_ms
            start = time.perf_counter()
            has_face = self._track(frame, timestamp_ms)
            tracked = time.perf_counter()
            image, expression = self._render()
            done = time.perf_counter()
        finally:
            self.lock.release()
        result = LiveFrame(image, timestamp_ms, has_face, expression, (tracked - start) * 1e3, (done - tracked) * 1e3)
        self.frames_done += 1
        self.recent.append((time.monotonic(), result.latency_ms))
        return result

    def _track(self, frame: np.ndarray, timestamp_ms: int) -> bool:
        """Update :attr:`current` from one frame; False (state held) when no face is found."""
        image = mp_image(frame)
        result = self.landmarker.detect_for_video(image, timestamp_ms)
        if not result.face_landmarks:
            self.face_tracked = False
            return False
        if not self.face_tracked:  # acquired: read it as the tracker will read the next frames
            result, self.last_timestamp_ms = reread_acquired(self.landmarker, image, result, timestamp_ms)
        self.face_tracked = True
        expression = mediapipe_to_ict(blendshape_scores(result.face_blendshapes[0])).astype(np.float64)
        gap = float(lip_gaps(landmarks_to_pixels(result.face_landmarks[0], frame.shape[1], frame.shape[0])))
        transform = np.asarray(result.facial_transformation_matrixes[0], np.float64).reshape(1, 4, 4)
        rotation, translation = mediapipe_to_head_pose(transform, self.correspondence)
        if self.neutral is None:
            self.neutral = (rotation[0], translation[0], expression, gap)
        relative = relative_rotvecs(rotation, self.neutral[0])[0]  # small for a steady head: no wrap
        channels = np.concatenate([expression, relative / ROTATION_UNIT_RAD, translation[0] / TRANSLATION_UNIT_M])
        smoothed = self.filter(channels) if self.filter is not None else channels
        self.current = (
            smoothed[NUM_EXPRESSIONS : NUM_EXPRESSIONS + 3] * ROTATION_UNIT_RAD,
            smoothed[NUM_EXPRESSIONS + 3 :] * TRANSLATION_UNIT_M,
            np.clip(smoothed[:NUM_EXPRESSIONS], 0.0, 1.0),
            gap,
        )
        return True

    def _render(self) -> tuple[np.ndarray, np.ndarray]:
        """The avatar at the current relative motion (its rest pose before any face was seen)."""
        if self.neutral is None or self.current is None:
            camera = driving_cameras(self.avatar, self.head_centre, np.zeros((1, 3)), np.zeros((1, 3)), True,
                                     self.resolution)[0]  # fmt: skip
            expression = rest_expression(self.avatar, self.neutralise, self.calibration)
        else:
            neutral_rotation, neutral_translation, neutral_expression, neutral_gap = self.neutral
            relative, translation, expression, gap = self.current
            rotations = matrix_to_axis_angle(
                np.stack([neutral_rotation, neutral_rotation @ axis_angle_to_matrix(relative)])
            )
            # MediaPipe sees an avatar's head turns smaller than they are (the calibration's turn
            # gain): the camera turns it further, as reenact does. Not the expression pose bias:
            # live, it lowered the blink r and raised the APD of a held-out avatar (README, Motion)
            camera = driving_cameras(self.avatar, self.head_centre, rotations,
                                     np.stack([neutral_translation, translation]), True, self.resolution,
                                     calibration=self.calibration)[1]  # fmt: skip
            expression = driving_expressions(self.avatar, np.stack([neutral_expression, expression]), True,
                                             self.neutralise, calibration=self.calibration,
                                             lip_gaps=np.array([neutral_gap, gap]),
                                             whole_clip=False)[1]  # fmt: skip
        code = torch.from_numpy(np.asarray(expression, np.float32))[None].to(self.model.device)
        with torch.inference_mode():
            # One frame's deform is small ops (a 32² UNet, ~10k Gaussians): a second OpenMP thread
            # costs more than it gives (2 cores: 14.5 ms on 2 threads, 9.2 ms on 1). The
            # compositing splits its tiles over the usual threads itself.
            with torch_threads(1):
                gaussians = self.model.deform(self.avatar, code, cache=self.deform_cache)
            rgb, _ = self.model.render_gaussians(gaussians, [camera], background=_background(self.background))
        return _to_uint8(rgb[0]), np.asarray(expression, np.float32)

    # ------------------------------------------------------------------ figures
    def stats(self) -> dict[str, float]:
        """frames, dropped, fps (frames done per second over the last few) and median latency_ms."""
        fps = latency = 0.0
        if len(self.recent) >= 2:
            span = self.recent[-1][0] - self.recent[0][0]
            fps = (len(self.recent) - 1) / span if span > 0 else 0.0
        if self.recent:
            latency = float(np.median([lat for _, lat in self.recent]))
        return {"frames": self.frames_done, "dropped": self.frames_dropped, "fps": fps, "latency_ms": latency,
                "seconds": time.monotonic() - self.started}  # fmt: skip



def require_display() -> None:
    """Raise :class:`InvalidInputError` unless a desktop window can open here (X11 or Wayland)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InvalidInputError("no display here ($DISPLAY is not set), so the live window cannot open. "
                                "Run it on a desktop, or use the Space's Live tab in a browser "
                                "(`python -m flexavatar bench live` measures the speed without a window).")  # fmt: skip


def run_camera_window(session: LiveSession, camera: int | str = 0, title: str = "FlexAvatar live") -> dict:
    """Drive ``session`` from a local camera (index or video path) in an OpenCV window: the
    camera on the left, the avatar on the right. Keys: ``n`` reset neutral, ``q``/Esc quit.

    Raises :class:`InvalidInputError` without a display or when the camera does not open.
    Returns the session's :meth:`LiveSession.stats` at the end.
    """
    import cv2

    require_display()
    capture = cv2.VideoCapture(camera)
    if not capture.isOpened():
        raise InvalidInputError(f"camera {camera!r} could not be opened; check that it is connected and not in use "
                                "(try --camera 1 for a second camera).")  # fmt: skip
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            result = session.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if result is not None:
                side = bgr.shape[0]
                avatar = cv2.resize(cv2.cvtColor(result.image, cv2.COLOR_RGB2BGR), (side, side))
                stats = session.stats()
                cv2.putText(avatar, f"{stats['fps']:.0f} fps  {stats['latency_ms']:.0f} ms  [n] neutral  [q] quit",
                            (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (60, 60, 60), 1, cv2.LINE_AA)  # fmt: skip
                cv2.imshow(title, np.concatenate([bgr, avatar], 1))
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27):
                break
            if key == ord("n"):
                session.reset_neutral()
    finally:
        capture.release()
        cv2.destroyAllWindows()
    return session.stats()

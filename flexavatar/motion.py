"""Driver -> avatar motion: expressions through the closed-loop calibration, head pose as cameras.

Expressions. The driver's MediaPipe scores are not ICT weights: rendering the avatar with one
ICT blendshape at weight w and re-tracking the render gives a score f(w) that is neither w
nor linear (a full ICT jawOpen re-tracks as ~0.6, a full eyeBlink as ~0.3-0.5). A
:class:`MotionCalibration` holds f per MediaPipe score, fitted in closed loop and monotone
(:mod:`flexavatar.calibration`). The file also records the cross-talk between scores (jawOpen
raises mouthLowerDown and the smile, one side's smile the other's): the driver's scores carry
it too, so the avatar's weights are solved jointly (:meth:`MotionCalibration.solve`, within the
mouth and within the brows; the eyes' terms made blinks look down) and a jaw opening adds no
smile of its own. :func:`driving_expressions` works in score space: the avatar's target score
is its rest score f(w_rest) plus the driver's change from its neutral level (relative motion)
or the driver's score (absolute), then w = f⁻¹(target). The rest expression is the source
photo's or, with ``neutralise``, neutral (w_rest = 0): a frowning photo can then smile; eyes a
smiling photo narrowed in its colours are held open (``MotionCalibration.rest_offset``,
:func:`flexavatar.closed_loop.rest_eye_opening`; :func:`flexavatar.rest.close_opened_eyes` lets go
as they blink), brows that read as lowered are lifted until they read level
(:func:`flexavatar.closed_loop.rest_brow_lift`; :func:`flexavatar.rest.lower_lifted_brows` lets go
as they frown) and lips a photo rounded are widened until they no longer read as a pucker
(:func:`flexavatar.closed_loop.rest_lip_release`; :func:`flexavatar.rest.release_widened_lips`
lets go as they pucker).

Head pose. The head is fixed in canonical space, so the driver's motion becomes a camera
(:mod:`flexavatar.framing`): rotation from the driver (relative to its first frame, on top of
the source pose), translation and depth (apparent size) damped and bounded so the head stays
framed. MediaPipe's head pose of a still ICT head changes with its
expression (a smile pitches it by 1-4°, raised brows by -1-3°): reenact renders the clip's
distinct expressions on the avatar and re-tracks them
(:func:`flexavatar.closed_loop.closed_loop_expressions`), and the cameras take half of that out
(:data:`POSE_BIAS_SHRINK`) and all that its expression correction adds;
:func:`expression_pose_bias` predicts it from the calibration's per-shape medians instead (no
rendering). Each avatar also gets its own response amplitudes
(:func:`calibration_for_avatar`) and head-turn gains per direction
(:func:`flexavatar.closed_loop.turn_gain`). Frames where tracking is unreliable (a hand over the face)
are interpolated upstream, in :func:`flexavatar.tracking.track_video`. Reenact corrects the
expressions of a whole clip once more on the avatar itself, in closed loop
(:func:`flexavatar.closed_loop.closed_loop_expressions`); live frames go without.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d, uniform_filter1d

from flexavatar.assets import SHIPPED_WEIGHTS
from flexavatar.head.blendshapes import (
    EXPRESSION_INDEX,
    MEDIAPIPE_BLENDSHAPE_NAMES,
    NUM_EXPRESSIONS,
    mediapipe_to_ict_matrix,
)
from flexavatar.model import Avatar
from flexavatar.rest import let_go_of_rest, rest_expression

CALIBRATION_FILE = "motion_calibration.json"
#: A calibrated response spanning less than this (score units) carries no information: that
#: score keeps the identity mapping.
MIN_RESPONSE_SPAN = 0.05
#: The inverse never amplifies a score change by more than this (ICT weight per score unit):
#: where the avatar barely responds, a steeper inverse would only amplify tracking noise.
MAX_GAIN = 2.5
#: ...but for blinks: before the lids' Gaussians followed their stretch, fully closed lids let the
#: eyeball show through and re-tracked as *less* closed than half-closed ones (blink r 0.69 ->
#: 0.88 on single_face.mp4 x astronaut.png at 1.5). With stretch-aware scales 2.5 measured no
#: better (blink r of 3 avatars x 2 clips: 4 up by 0.01-0.11, 3 down by 0.01-0.06), so 1.5 stays.
#: ...and for mouthPucker: ICT's pucker barely registers on most avatars (a full one re-tracks as
#: 0.01-0.14 on 4 of 9 avatars measured), while drivers' resting lips often read as pucker 0.3 that
#: drops when they smile. At 2.5 the inverse stopped at weight ~0.75, the avatar's smile cross-talk
#: (+0.04-0.08) outweighed its pucker and pucker r came out negative; at 8 (~1 / the median full
#: response) a driver's change the size of the avatar's whole range reaches the full shape.
#: With :data:`SCORE_DEADZONE`, eval --motion pucker r: single_face.mp4 x 0-f15 -0.67 -> 0.17,
#: x astronaut -0.73 -> 0.07; held-out photos x 2 clips 0.39 -> 0.89, 0.10 -> 0.84, 0.84 -> 0.97,
#: 0.78 -> 0.95; a synthetic driver (a held-out avatar resting puckered, then smiling) on 5 avatars:
#: 0.44 -> 0.81, 0.35 -> 0.45, 0.94 -> 0.97, 0.76 -> 0.87 (one whose pucker never shows: -0.65).
SCORE_MAX_GAIN = {"eyeBlinkLeft": 1.5, "eyeBlinkRight": 1.5, "mouthPucker": 8.0}
#: The driver's neutral level of each score: this percentile over the clip, never above frame 0.
#: A driver who starts puckered or frowning then relaxes moves *down* from frame 0; measured
#: from frame 0 that motion is lost on a neutral avatar (weights cannot go below 0).
DRIVER_NEUTRAL_PERCENTILE = 5.0
#: Blinks are events: their neutral level is the driver's local one (the lowest score within
#: this many seconds, smoothed), because a driver's smile or squint narrows the eyes and raises
#: the blink score for seconds; amplified by the calibration that would half-close the avatar's eyes.
BLINK_BASELINE_S = 1.0
#: ... but never more than this above the driver's neutral level (its low percentile over the
#: clip): a smile or squint raised the local level by 0.01-0.15 in every clip measured, eyes held
#: shut by 0.58-0.75 (WolfgangLanger_Pexels.mp4: a woman crying with her eyes shut for 6 s), and
#: eyes held shut were their own baseline: the avatar's stayed open.
BLINK_BASELINE_MAX_RISE = 0.2
BLINK_SCORES = ("eyeBlinkLeft", "eyeBlinkRight")
#: :func:`end_gaze_with_blinks`: near a blink (weight above BLINK_GAZE_MIN_WEIGHT, or this many
#: seconds from one: a frame at 30 fps) an eye looks down at most its local level plus
#: BLINK_GAZE_GAIN x the blink's weight. eval --motion (public rows; held-out photos x clips):
#: blink r means 0.838 -> 0.849, 0.770 -> 0.789; r_key 0.883 -> 0.887, 0.897 -> 0.906; APD 0.96 ->
#: 0.90°, 0.86 -> 0.75°; AED unchanged (0.0384 -> 0.0383, 0.0464). A margin of 2 frames, blink r
#: (public; held-out): gain 2 0.844, 0.773; gain 1.5 0.862, 0.772 (held-out r_key 0.898); gain 3
#: 0.843, 0.763.
BLINK_GAZE_GAIN = 2.0
BLINK_GAZE_MARGIN_S = 1.0 / 30.0
BLINK_GAZE_MIN_WEIGHT = 0.02
#: Changes of the driver's score (from its neutral level) below these are dropped (and the rest
#: rescaled so a full change stays full). Blinks: below 0.1 it is a squint, not a blink (matters
#: where no local baseline exists; live: 2 frames). mouthPucker: its steep inverse
#: (:data:`SCORE_MAX_GAIN`) would otherwise turn the tracker's cross-talk (a smile or an opening
#: jaw reads as pucker 0.02-0.04) into a visible pucker, which on some avatars hides their smile
#: (tests/test_motion.py's scripted smile r 0.80 without it).
SCORE_DEADZONE = {"eyeBlinkLeft": 0.1, "eyeBlinkRight": 0.1, "mouthPucker": 0.05}
#: Fraction of the expression pose bias the cameras undo. For the per-shape median
#: (:func:`expression_pose_bias`), half measured better than all of it (eval --motion, mean APD:
#: public rows 1.26° -> 1.08°, held-out photos x clips 1.26° -> 0.96°; none: 1.24°, 1.19°); for
#: the avatar's own, measured bias (:func:`flexavatar.closed_loop.measured_pose_bias`; reenact's
#: closed-loop correction measures it the same way) too: public rows APD 1.00° all, 0.96° half;
#: AED 0.0444, 0.0432 (MediaPipe's expression scores move with the pose it sees, and the driver's
#: carry its own bias). Held-out
#: rows at half: APD 1.24° (median bias) -> 0.91°, AED 0.0511 -> 0.0489, r_key 0.884 -> 0.896.
POSE_BIAS_SHRINK = 0.5
#: The ICT weight a score's shape(s) reach at calibration weight 1 (every other score: 1). ICT's
#: pucker, lower-lip drop, lip stretch and brow lowering are milder than the faces MediaPipe
#: reads: at full weight they re-track at 0.01-0.13 (median of the calibration avatars), a driver's
#: resting pucker alone reads 0.3. At weight 2 they re-track at 0.1-0.9 on 3 avatars and still
#: look like the expression (a kiss, teeth showing, a grimace, a frown). Funnel is left at 1:
#: pucker and funnel both at 2 make a snout. The calibration sweeps these shapes up to the gain,
#: so its weights stay in [0,1] and its file records the gains (``shape_gains``).
SHAPE_GAINS = {"mouthPucker": 2.0, "mouthLowerDownLeft": 2.0, "mouthLowerDownRight": 2.0,
               "mouthStretchLeft": 2.0, "mouthStretchRight": 2.0, "browDownLeft": 2.0, "browDownRight": 2.0}  # fmt: skip
#: Per avatar, each score's calibrated response is scaled by how strongly *this* avatar responds
#: (:func:`calibration_for_avatar`: its re-tracked score at full weight over the calibration's,
#: :func:`flexavatar.closed_loop.avatar_response_spans`), within these bounds. Avatars differ 3x and more (a full ICT pucker re-tracks at 0.12 on one
#: photo's avatar, 0.98 on another's): the median alone over-drives some and under-drives others.
#: eval --motion means (public rows; held-out photos x clips): r_key 0.858 -> 0.877, 0.883 ->
#: 0.884; AED 0.0432 -> 0.0417, 0.0559 -> 0.0511; APD 1.13 -> 1.24°, 1.20 -> 1.24°.
AVATAR_RESPONSE_RANGE = (1.0 / 3.0, 3.0)
#: Fixed-point iterations of :meth:`MotionCalibration.solve` (the cross-talk inversion).
SOLVE_ITERATIONS = 8

#: The driver's lips count as closed below this inner-lip gap (fraction of the face height) and
#: open above LIP_OPEN_GAP (examples/driving.mp4: shut lips 0.004-0.01, speech 0.02-0.05).
LIP_CLOSED_GAP = 0.01
LIP_OPEN_GAP = 0.02

_MP_TO_ICT = mediapipe_to_ict_matrix()  # [52,57] 0/1
_JAW_OPEN, _MOUTH_CLOSE = EXPRESSION_INDEX["jawOpen"], EXPRESSION_INDEX["mouthClose"]


@dataclass
class MotionCalibration:
    """Closed-loop response of MediaPipe's scores to ICT blendshapes (one file, JSON).

    names: the S calibrated MediaPipe score names (its 52 minus ``_neutral``).
    weights: [K] ICT weight grid in [0,1], increasing, weights[0] = 0.
    responses: [S,K] re-tracked score s when the ICT shape(s) of that score are at each weight
        and all others at 0; non-decreasing along K (monotone fit).
    crosstalk: [S,S] extra score i per unit weight of shape j (j != i, only terms that matter;
        the diagonal is 0): :meth:`predict` adds it, :meth:`solve` inverts the sum.
    meta: how it was made (avatars, grid, command).
    rotation_bias: [S,K,3] or None: the head rotation MediaPipe reports for a still head with
        score s's shape(s) at weights[k] (axis-angle, degrees, camera frame, relative to the
        neutral render); :meth:`pose_bias` sums it over shapes.
    turn_gain: [3] or None: the re-tracked / commanded head rotation about each camera axis
        (x pitch, y yaw, z roll) of a neutral avatar turned about its head centre;
        :meth:`undo_turn_gain` divides by it. [3,2] (one avatar's, never in the file): per
        direction, negative then positive (:func:`flexavatar.closed_loop.turn_gain`).
    shape_gains: [S] or None (all 1): the ICT weight of score s's shape(s) at calibration weight 1
        (:data:`SHAPE_GAINS`); :func:`scores_to_ict` / :func:`ict_to_scores` apply it.
    rest_offset: [57] or None: one avatar's neutral rest expression (ICT weights) when it is not
        all zeros: the eyes opened, the brows lifted and the lips widened until they re-track as
        open, as level and as unpuckered as the calibration avatars' do
        (:func:`flexavatar.closed_loop.rest_eye_opening`, :func:`flexavatar.closed_loop.rest_brow_lift`,
        :func:`flexavatar.closed_loop.rest_lip_release`); never in the file.
    rest_scores: [S] or None: one avatar's own re-tracked scores at that rest (its photo's colours
        can read as an expression: an "O" mouth's lips as a pucker of 0.64); never in the file.
    """

    names: tuple[str, ...]
    weights: np.ndarray
    responses: np.ndarray
    crosstalk: np.ndarray
    meta: dict
    rotation_bias: np.ndarray | None = None
    turn_gain: np.ndarray | None = None
    shape_gains: np.ndarray | None = None
    rest_offset: np.ndarray | None = None
    rest_scores: np.ndarray | None = None

    def __post_init__(self):
        self.shape_gains = np.ones(len(self.names)) if self.shape_gains is None else np.asarray(self.shape_gains, np.float64)
        self.weights = np.asarray(self.weights, np.float64)
        self.responses = np.asarray(self.responses, np.float64)
        self.crosstalk = np.asarray(self.crosstalk, np.float64)
        if self.rotation_bias is not None:
            self.rotation_bias = np.asarray(self.rotation_bias, np.float64).reshape(len(self.names), len(self.weights), 3)
        if self.turn_gain is not None:
            self.turn_gain = np.asarray(self.turn_gain, np.float64)
            self.turn_gain = self.turn_gain.reshape(3, 2) if self.turn_gain.size == 6 else self.turn_gain.reshape(3)
        # strictly increasing copies for np.interp; flat responses keep the identity mapping
        span = self.responses[:, -1] - self.responses[:, 0]
        self.informative = span >= MIN_RESPONSE_SPAN
        # slope at least 1/MAX_GAIN everywhere (also makes it strictly increasing for np.interp)
        gains = np.array([SCORE_MAX_GAIN.get(n, MAX_GAIN) for n in self.names])
        steps = np.diff(self.weights)[None] / gains[:, None]
        bounded = self.responses.copy()
        for k in range(1, len(self.weights)):  # K grid points
            bounded[:, k] = np.maximum(bounded[:, k], bounded[:, k - 1] + steps[:, k - 1])
        self._inverse_x = np.where(self.informative[:, None], bounded, self.weights[None])
        self._columns = np.array([MEDIAPIPE_BLENDSHAPE_NAMES.index(n) for n in self.names])
        # cross-talk only onto scores the calibration can steer (an identity-mapped score's own
        # shape barely registers: nothing to make up for) and only within a face part
        # (:func:`face_part`): the eyes' terms are left out (measured: solving blink against
        # eyeLookDown made the avatar look down instead of blinking)
        parts = np.array([face_part(n) for n in self.names])
        same_part = (parts[:, None] == parts[None]) & (parts[:, None] != "eyes")
        self._solve_crosstalk = np.where(self.informative[:, None] & same_part, self.crosstalk, 0.0)

    def response(self, weights: np.ndarray) -> np.ndarray:
        """[...,S] ICT weights -> [...,S] predicted re-tracked scores (own shape only)."""
        weights = np.asarray(weights, np.float64)
        out = np.empty_like(weights)
        for s in range(len(self.names)):  # over channels; vectorised over frames
            out[..., s] = np.interp(weights[..., s], self.weights, self._inverse_x[s])
        return out

    def inverse(self, scores: np.ndarray) -> np.ndarray:
        """[...,S] target scores -> [...,S] ICT weights in [0,1] (f⁻¹, clamped at the ends)."""
        scores = np.asarray(scores, np.float64)
        out = np.empty_like(scores)
        for s in range(len(self.names)):
            out[..., s] = np.interp(scores[..., s], self._inverse_x[s], self.weights)
        return out

    def predict(self, weights: np.ndarray) -> np.ndarray:
        """[...,S] ICT weights -> [...,S] predicted re-tracked scores, cross-talk included."""
        weights = np.asarray(weights, np.float64)
        return self.response(weights) + weights @ self._solve_crosstalk.T

    def solve(self, scores: np.ndarray) -> np.ndarray:
        """[...,S] target scores -> [...,S] ICT weights in [0,1] whose :meth:`predict` is closest.

        The driver's scores carry cross-talk (its jaw raises its mouthLowerDown and smile); the
        avatar's shapes produce their own, so each weight only has to make up what the other
        shapes do not already give: damped fixed-point iteration w <- f⁻¹(t - C w), vectorised
        over frames (:data:`SOLVE_ITERATIONS`)."""
        scores = np.asarray(scores, np.float64)
        weights = self.inverse(scores)
        if not self._solve_crosstalk.any():
            return weights
        for _ in range(SOLVE_ITERATIONS):
            weights = 0.5 * weights + 0.5 * self.inverse(scores - weights @ self._solve_crosstalk.T)
        return weights

    def pose_bias(self, weights: np.ndarray) -> np.ndarray:
        """[...,S] ICT weights -> [...,3] the head rotation (axis-angle, radians, camera frame) the
        tracker sees in a still head making that expression (zeros without a measured bias)."""
        weights = np.asarray(weights, np.float64)
        bias = np.zeros((*weights.shape[:-1], 3))
        if self.rotation_bias is None:
            return bias
        for s in np.flatnonzero(np.abs(self.rotation_bias).max((1, 2)) > 0):  # over channels
            for axis in range(3):
                bias[..., axis] += np.interp(weights[..., s], self.weights, self.rotation_bias[s, :, axis])
        return np.radians(bias)

    def undo_turn_gain(self, rotvecs: np.ndarray) -> np.ndarray:
        """[...,3] axis-angle (camera frame) of a turn the tracker should see -> the turn to
        command (each component divided by the gain of its axis; unchanged without one)."""
        rotvecs = np.asarray(rotvecs, np.float64)
        if self.turn_gain is None:
            return rotvecs
        gain = self.turn_gain
        if gain.ndim == 2:  # [3,2]: the negative and the positive direction of each axis
            gain = np.where(rotvecs < 0, gain[:, 0], gain[:, 1])
        return rotvecs / gain

    def to_json(self) -> dict:
        data = {"names": list(self.names), "weights": self.weights.round(4).tolist(),
                "responses": self.responses.round(4).tolist(), "crosstalk": self.crosstalk.round(4).tolist(),
                "meta": self.meta}  # fmt: skip
        if self.rotation_bias is not None:
            data["rotation_bias"] = self.rotation_bias.round(3).tolist()
        if self.turn_gain is not None:
            data["turn_gain"] = self.turn_gain.round(4).tolist()
        if (self.shape_gains != 1).any():
            data["shape_gains"] = self.shape_gains.round(4).tolist()
        return data

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def face_part(name: str) -> str:
    """The face part of a MediaPipe score: "eyes", "brows" or "mouth" (jaw, cheeks and nose too)."""
    if name.startswith("eye"):
        return "eyes"
    return "brows" if name.startswith("brow") else "mouth"


def identity_calibration() -> MotionCalibration:
    """The uncalibrated mapping (score = weight), as the pipeline had before calibration."""
    names = MEDIAPIPE_BLENDSHAPE_NAMES[1:]
    grid = np.array([0.0, 1.0])
    return MotionCalibration(names, grid, np.tile(grid, (len(names), 1)), np.zeros((len(names),) * 2),
                             {"kind": "identity"})  # fmt: skip


def load_calibration(path: str | os.PathLike | None = None) -> MotionCalibration:
    """The calibration at ``path`` (default: ``weights/motion_calibration.json`` shipped with the
    repository; the identity mapping when that file does not exist). Read once per file version."""
    path = Path(path) if path is not None else SHIPPED_WEIGHTS / CALIBRATION_FILE
    if not path.is_file():
        return identity_calibration()
    return _read_calibration(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_calibration(path: str, mtime_ns: int) -> MotionCalibration:
    del mtime_ns  # part of the cache key: a regenerated file is read again
    data = json.loads(Path(path).read_text())
    return MotionCalibration(tuple(data["names"]), data["weights"], data["responses"], data["crosstalk"],
                             data.get("meta", {}), data.get("rotation_bias"), data.get("turn_gain"),
                             data.get("shape_gains"))  # fmt: skip


def ict_to_scores(expressions: np.ndarray, names, gains: np.ndarray | None = None) -> np.ndarray:
    """[...,57] ICT weights -> [...,S] MediaPipe-named values (mean of each name's ICT shapes),
    divided by each name's shape gain [S] (:attr:`MotionCalibration.shape_gains`; default 1)."""
    columns = [MEDIAPIPE_BLENDSHAPE_NAMES.index(n) for n in names]
    matrix = _MP_TO_ICT[columns]  # [S,57]
    values = np.asarray(expressions, np.float64) @ (matrix / matrix.sum(1, keepdims=True)).T
    return values if gains is None else values / gains


def scores_to_ict(values: np.ndarray, names, base: np.ndarray, gains: np.ndarray | None = None) -> np.ndarray:
    """[...,S] per-name weights -> [...,57] ICT weights (times each name's shape gain [S], default
    1); ICT shapes no name drives keep ``base`` [57]."""
    columns = [MEDIAPIPE_BLENDSHAPE_NAMES.index(n) for n in names]
    matrix = _MP_TO_ICT[columns]  # [S,57] 0/1
    driven = matrix.sum(0) > 0
    values = np.asarray(values, np.float64) if gains is None else np.asarray(values, np.float64) * gains
    return np.where(driven, values @ matrix, base)


def ict_limits(calibration: MotionCalibration) -> np.ndarray:
    """[57] the largest ICT weight each shape is driven to: its score's shape gain (1 elsewhere)."""
    columns = [MEDIAPIPE_BLENDSHAPE_NAMES.index(n) for n in calibration.names]
    return np.maximum((_MP_TO_ICT[columns] * calibration.shape_gains[:, None]).max(0), 1.0)


def driving_expressions(
    avatar: Avatar,
    driver: np.ndarray,
    relative: bool = True,
    neutralise: bool = False,
    calibration: MotionCalibration | None = None,
    fps: float = 30.0,
    lip_gaps: np.ndarray | None = None,
    whole_clip: bool = True,
) -> np.ndarray:
    """[T,57] float32 ICT expressions for the avatar from the driver's tracked expressions.

    driver: [T,57] the driver's (smoothed) tracking, i.e. its MediaPipe scores by ICT name.
    relative: the avatar's rest score plus the driver's change from its own neutral level
    (:data:`DRIVER_NEUTRAL_PERCENTILE`; a driver who starts smiling does not leave a grin, one
    who starts frowning and relaxes is followed); False: the driver's scores. neutralise: the rest
    is neutral instead of the source photo's expression. calibration: default the shipped one
    (:func:`load_calibration`); :func:`identity_calibration` gives the uncalibrated mapping.
    fps: the driver's frame rate (the blink baseline window is in seconds). lip_gaps: [T] the
    driver's inner-lip gap (:func:`flexavatar.tracking.video_track.lip_gaps`): where its lips are
    closed, so are the avatar's (:func:`seal_lips`). whole_clip: ``driver`` is a whole clip (not
    live frames): a look-down that outlasts a blink ends with it (:func:`end_gaze_with_blinks`).
    """
    calibration = calibration if calibration is not None else load_calibration()
    expressions = _calibrated_expressions(avatar, driver, relative, neutralise, calibration, fps)
    rest = rest_expression(avatar, neutralise, calibration)
    expressions = let_go_of_rest(expressions, rest)
    if whole_clip:
        expressions = end_gaze_with_blinks(expressions, fps)
    return expressions if lip_gaps is None else seal_lips(expressions, lip_gaps)


def end_gaze_with_blinks(expressions: np.ndarray, fps: float = 30.0) -> np.ndarray:
    """[T,57] ICT expressions of a clip -> [T,57] with each eye's look-down, during and next to its
    blink (:data:`BLINK_GAZE_MARGIN_S`), at most its local level (lowest within
    :data:`BLINK_BASELINE_S`) plus :data:`BLINK_GAZE_GAIN` x the blink's weight.

    MediaPipe reads a closing eye as looking down too (its iris goes), and reads it later: on
    examples/driving.mp4 the look-down score falls a frame after the blink (blink 0.44 0.25 0.10,
    look-down 0.56 0.44 0.25). Through the calibration (a weak look-down shape: inverse gain 2.5)
    the avatar kept looking down at 0.81 and 0.37 while its lids opened, and an ICT look-down
    lowers the lids: the re-tracked blink lingered (0.74, 0.45 where the driver's was 0.25, 0.10).
    At the blink's peak the look-down stays: without it an avatar's blink re-tracks too weakly
    (holding the gaze through blinks measured r_key 0.879 -> 0.783)."""
    out = np.array(expressions, np.float32, copy=True)
    margin = 2 * int(round(BLINK_GAZE_MARGIN_S * fps)) + 1
    window = max(1, int(round(BLINK_BASELINE_S * fps)))
    for side in ("L", "R"):  # the two eyes' columns; vectorised over frames
        blink, down = EXPRESSION_INDEX[f"eyeBlink_{side}"], EXPRESSION_INDEX[f"eyeLookDown_{side}"]
        near_blink = maximum_filter1d(out[:, blink] > BLINK_GAZE_MIN_WEIGHT, margin, mode="nearest")
        cap = minimum_filter1d(out[:, down], window, mode="nearest") + BLINK_GAZE_GAIN * out[:, blink]
        out[:, down] = np.where(near_blink, np.minimum(out[:, down], cap), out[:, down])
    return out


def seal_lips(expressions: np.ndarray, lip_gaps: np.ndarray) -> np.ndarray:
    """[T,57] ICT expressions, [T] the driver's lip gaps -> [T,57] with ICT mouthClose raised to
    the jaw's weight where the driver's lips are closed (fading out between
    :data:`LIP_CLOSED_GAP` and :data:`LIP_OPEN_GAP`): ICT's jawOpen parts the lips at once (jaw
    0.05 re-tracks with a gap of 0.011-0.026), a driver's jaw score moves 0-0.06 with its lips
    shut, and jawOpen + an equal mouthClose keeps them shut (gap 0.002-0.005)."""
    closed = np.clip((LIP_OPEN_GAP - np.asarray(lip_gaps, np.float64)) / (LIP_OPEN_GAP - LIP_CLOSED_GAP), 0.0, 1.0)
    out = np.array(expressions, np.float32, copy=True)
    seal = (closed * out[:, _JAW_OPEN]).astype(np.float32)
    out[:, _MOUTH_CLOSE] = np.maximum(out[:, _MOUTH_CLOSE], seal)
    return out


def _calibrated_expressions(avatar, driver, relative, neutralise, calibration, fps) -> np.ndarray:
    """:func:`driving_expressions` before :func:`seal_lips` (same arguments; ``calibration`` loaded)."""
    names = calibration.names
    source = rest_expression(avatar, neutralise, calibration)
    scores = ict_to_scores(driver, names)  # [T,S] the driver's MediaPipe scores
    gains, limits = calibration.shape_gains, ict_limits(calibration)
    if relative:
        source_weights = ict_to_scores(source, names, gains)  # [S] calibration weights
        rest = calibration.predict(source_weights)
        delta = driver_score_changes(scores, names, fps, calibration.rest_scores)
        # the change of weight, added per ICT shape: a still driver leaves the rest exactly
        # (also where the source's left and right of a paired shape differ)
        change = calibration.solve(rest[None] + delta) - source_weights[None]
        return np.clip(source + scores_to_ict(change, names, np.zeros(NUM_EXPRESSIONS), gains), 0, limits).astype(np.float32)
    weights = calibration.solve(scores)
    return np.clip(scores_to_ict(weights, names, source, gains), 0, limits).astype(np.float32)


def driver_score_changes(scores: np.ndarray, names, fps: float = 30.0, rest_scores: np.ndarray | None = None) -> np.ndarray:
    """[T,S] the driver's MediaPipe scores (named ``names``) -> [T,S] each score's change from the
    driver's neutral level (:data:`DRIVER_NEUTRAL_PERCENTILE`, never above frame 0; blinks from
    their local level, :data:`BLINK_BASELINE_S`, at most :data:`BLINK_BASELINE_MAX_RISE` above
    it), small changes dropped (:data:`SCORE_DEADZONE`),
    blinks never negative: what relative driving adds to the avatar's rest score.

    rest_scores [S] (optional): the avatar's own scores at its rest. Where the driver's frame 0
    reads above its low percentile, which of the two is its neutral is ambiguous (single_face.mp4's
    resting mouth re-tracks as a pucker of 0.31 for its first half second, 0.0 through its smiles).
    The neutral rises from the percentile toward frame 0 by as much as the avatar's rest reads above
    the driver's frame 0: 0-f1-su-ph.jpg's avatar, whose round lips read 0.64 at rest, was pushed to
    a full kiss there while the driver rested."""
    names = list(names)
    neutral = np.minimum(np.percentile(scores, DRIVER_NEUTRAL_PERCENTILE, axis=0), scores[0])
    if rest_scores is not None:
        excess = np.nan_to_num(np.asarray(rest_scores, np.float64) - scores[0], nan=0.0)
        neutral = np.clip(neutral + excess, neutral, scores[0])
    neutral = np.repeat(neutral[None], len(scores), axis=0)
    blinks = [names.index(n) for n in BLINK_SCORES if n in names]
    window = max(1, int(round(BLINK_BASELINE_S * fps)))
    local = minimum_filter1d(scores[:, blinks], window, axis=0, mode="nearest")
    local = np.minimum(uniform_filter1d(local, window, axis=0, mode="nearest"), neutral[:, blinks] + BLINK_BASELINE_MAX_RISE)
    neutral[:, blinks] = np.maximum(neutral[:, blinks], local)
    delta = scores - neutral
    dead = np.array([SCORE_DEADZONE.get(n, 0.0) for n in names])
    delta = np.sign(delta) * np.maximum(np.abs(delta) - dead, 0.0) / (1.0 - dead)
    delta[:, blinks] = np.maximum(delta[:, blinks], 0.0)  # a blink never opens the eyes wider
    return delta


def calibration_for_avatar(calibration: MotionCalibration, spans: np.ndarray) -> MotionCalibration:
    """The calibration with each score's response (above its weight-0 level) scaled by the avatar's
    own span [S] (:func:`flexavatar.closed_loop.avatar_response_spans`) over the calibration's, within
    :data:`AVATAR_RESPONSE_RANGE`; scores the calibration cannot steer, or the avatar's render
    lost, keep theirs. Cross-talk, pose bias and turn gain stay the calibration's."""
    population = calibration.responses[:, -1] - calibration.responses[:, 0]
    spans = np.asarray(spans, np.float64)
    usable = np.isfinite(spans) & calibration.informative
    ratio = np.where(usable, np.clip(np.nan_to_num(spans) / np.maximum(population, 1e-6), *AVATAR_RESPONSE_RANGE), 1.0)
    base = calibration.responses[:, :1]
    meta = {**calibration.meta, "avatar_ratio": ratio.round(3).tolist()}
    return replace(calibration, responses=base + (calibration.responses - base) * ratio[:, None], meta=meta)


def expression_pose_bias(calibration: MotionCalibration, expressions: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """[T,3] axis-angle (radians, camera frame): how much the tracker will see the avatar's head
    rotated by its expressions [T,57] beyond its rest expression [57] (:meth:`MotionCalibration.pose_bias`).
    :func:`~flexavatar.framing.driving_cameras` takes it out, so the head turns as the driver's does,
    not more when it smiles.
    Shrunk by :data:`POSE_BIAS_SHRINK`: the bias is the median of a few calibration avatars."""
    names = calibration.names
    gains = calibration.shape_gains
    bias = calibration.pose_bias(ict_to_scores(expressions, names, gains)) - calibration.pose_bias(ict_to_scores(rest, names, gains))
    return POSE_BIAS_SHRINK * bias

"""Fit the motion calibration in closed loop: ``python -m flexavatar calibrate``.

For each avatar (the untrained template and trained avatars of calibration photos), every
MediaPipe score's ICT blendshape(s) is swept over :data:`SWEEP_WEIGHTS` with all other shapes
at 0; each render (the avatar's own source camera, the framing a reenactment renders) is
re-tracked by the project's MediaPipe landmarker (IMAGE mode). Per score the response is the
median over avatars (avatars respond differently: a full ICT jawOpen re-tracks as 0.4-0.7),
made non-decreasing (pool-adjacent-violators); the cross-talk is the other
scores' change at full weight, kept where it matters (>= :data:`MIN_CROSSTALK`); the pose bias
is the re-tracked head rotation of each sweep render relative to the neutral one (the head does
not move: MediaPipe's pose of an ICT smile is pitched by 1-4°, of raised brows by -1-3°).
The result is a :class:`~flexavatar.motion.MotionCalibration`, inverted at driving time.

The calibration photos default to the public photos plus ``multi_face.jpg`` (its largest
face); ``single_face.jpg`` is left out, so its cross-reenactment rows in ``eval --motion`` are
held out. The template is rendered with ``astronaut.png``'s colours.

    python -m flexavatar calibrate [--photos a.jpg ...] [--out weights/motion_calibration.json]
    python -m flexavatar calibrate --sweeps sweeps.npz          # also keep the per-avatar sweeps
    python -m flexavatar calibrate --from-sweeps sweeps.npz     # refit them without rendering
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flexavatar import pipeline
from flexavatar.assets import SHIPPED_WEIGHTS
from flexavatar.closed_loop import render_expressions, retrack, sweep_turns, turn_gain
from flexavatar.head.blendshapes import MEDIAPIPE_BLENDSHAPE_NAMES, NUM_EXPRESSIONS
from flexavatar.model import Avatar, FlexAvatarModel
from flexavatar.motion import (
    CALIBRATION_FILE,
    SHAPE_GAINS,
    MotionCalibration,
    scores_to_ict,
)
from flexavatar.rotations import matrix_to_axis_angle
from flexavatar.train import media_dir

SWEEP_WEIGHTS = np.linspace(0.0, 1.0, 6)
CALIBRATION_PHOTOS = ("astronaut.png", "multi_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg")
#: Cross-talk below this (score per unit weight) is ignored.
MIN_CROSSTALK = 0.1
SCORE_NAMES = MEDIAPIPE_BLENDSHAPE_NAMES[1:]
#: (left, right) indices into SCORE_NAMES of the scores that come in symmetric pairs (a smile,
#: a blink, raised brows); not the opposite directions jawLeft/Right, mouthLeft/Right, or a
#: gaze's eyeLookIn/Out (one eye looks in while the other looks out).
SCORE_PAIRS = tuple(
    (i, SCORE_NAMES.index(n[:-4] + "Right"))
    for i, n in enumerate(SCORE_NAMES)
    if n.endswith("Left") and n not in ("jawLeft", "mouthLeft", "eyeLookInLeft", "eyeLookOutLeft")
)


def shape_gains() -> np.ndarray:
    """[S] :data:`~flexavatar.motion.SHAPE_GAINS` per score of :data:`SCORE_NAMES` (1 elsewhere)."""
    return np.array([SHAPE_GAINS.get(name, 1.0) for name in SCORE_NAMES])


def sweep_codes(weights: np.ndarray = SWEEP_WEIGHTS) -> np.ndarray:
    """[1 + (S+P)*(K-1), 57] ICT codes: neutral, then for each score s its shape(s) at
    weights[1:] (times its shape gain, :func:`shape_gains`), then each left/right pair of
    :data:`SCORE_PAIRS` together (the pose bias of a smile is not the sum of its sides': one side
    pitches the head ~0.2°, both 1.5-3°)."""
    num, steps = len(SCORE_NAMES), len(weights) - 1
    per_score = np.zeros((num, steps, num))
    per_score[np.arange(num), :, np.arange(num)] = weights[1:]
    per_pair = np.zeros((len(SCORE_PAIRS), steps, num))
    for p, (left, right) in enumerate(SCORE_PAIRS):
        per_pair[p, :, left] = per_pair[p, :, right] = weights[1:]
    values = np.concatenate([per_score.reshape(-1, num), per_pair.reshape(-1, num)])
    codes = scores_to_ict(values, SCORE_NAMES, np.zeros(NUM_EXPRESSIONS), shape_gains())
    return np.concatenate([np.zeros((1, NUM_EXPRESSIONS)), codes]).astype(np.float32)


def sweep_responses(
    model: FlexAvatarModel, avatar: Avatar, weights: np.ndarray = SWEEP_WEIGHTS
) -> tuple[np.ndarray, np.ndarray]:
    """Re-tracked responses of ``avatar`` rendered with score s's shape(s) at weights[k] (the
    neutral render is k = 0 for every s): scores [S,K,S] and the apparent head rotation [S,K,3]
    (axis-angle, degrees, camera frame) relative to the neutral render's; NaN where untracked.

    The rotation of a side of a symmetric pair (:data:`SCORE_PAIRS`) is measured with both sides
    swept together, as faces move them (:func:`merge_pair_sweeps`): one side alone pitches the
    head far less than both."""
    scores, rotations = retrack(render_expressions(model, avatar, sweep_codes(weights), pipeline.RENDER_CHUNK))
    relative = np.degrees(matrix_to_axis_angle(np.nan_to_num(rotations @ np.swapaxes(rotations[0], -1, -2))))
    relative[np.isnan(rotations).any((1, 2))] = np.nan
    num, steps = len(SCORE_NAMES), len(weights) - 1

    def per_sweep(values: np.ndarray, count: int) -> np.ndarray:  # [1 + count*steps, C] -> [count,K,C]
        swept = values[1 : 1 + count * steps].reshape(count, steps, -1)
        return np.concatenate([np.broadcast_to(values[0], (count, 1, values.shape[-1])), swept], axis=1)

    pair_scores = per_sweep(np.concatenate([scores[:1], scores[1 + num * steps :]]), len(SCORE_PAIRS))
    pair_turns = per_sweep(np.concatenate([relative[:1], relative[1 + num * steps :]]), len(SCORE_PAIRS))
    return merge_pair_sweeps(per_sweep(scores, num), per_sweep(relative, num), pair_scores, pair_turns)


def merge_pair_sweeps(
    scores: np.ndarray, rotations: np.ndarray, pair_scores: np.ndarray, pair_rotations: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Single-shape sweeps scores [S,K,S], rotations [S,K,3] and pair sweeps [P,K,S], [P,K,3]
    (:data:`SCORE_PAIRS`, both sides at each weight) -> scores, rotations [S,K,...]: each side of
    a pair turns the head by half the pair's rotation. Its scores stay the single side's (taking
    the pair's measured better on the clips' means but dropped the live smile r 0.89 -> 0.75)."""
    del pair_scores  # measured and saved with the sweeps, not fitted
    rotations = rotations.copy()
    for (left, right), turn in zip(SCORE_PAIRS, pair_rotations, strict=True):
        rotations[left] = rotations[right] = turn / 2
    return scores, rotations


def monotone(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of [K] values (pool-adjacent-violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:  # K is a handful of sweep points
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count), blocks[-1][1] + count]
    return np.concatenate([[mean] * int(count) for mean, count in blocks])


def fit_calibration(
    responses: np.ndarray, rotations: np.ndarray | None = None, weights: np.ndarray = SWEEP_WEIGHTS,
    meta: dict | None = None, turns: np.ndarray | None = None, gains: np.ndarray | None = None,
) -> MotionCalibration:  # fmt: skip
    """Sweeps of A avatars -> :class:`MotionCalibration`: responses [A,S,K,S] and apparent
    rotations [A,S,K,3] degrees (:func:`sweep_responses`; NaN where untracked), head turns
    [A,3,D,2] (:func:`sweep_turns`); gains [S]: the shape gains the sweeps used (default 1)."""
    mean = np.nanmedian(responses, axis=0)  # [S,K,S]
    mean = np.where(np.isnan(mean), 0.0, mean)
    num = len(SCORE_NAMES)
    own = np.stack([monotone(mean[s, :, s]) for s in range(num)])  # [S,K]
    crosstalk = (mean[:, -1, :] - mean[:, 0, :]).T / weights[-1]  # [i,j]: score i per unit of shape j
    crosstalk[np.arange(num), np.arange(num)] = 0.0
    crosstalk[np.abs(crosstalk) < MIN_CROSSTALK] = 0.0
    bias = None
    if rotations is not None:
        bias = np.nan_to_num(np.nanmedian(rotations, axis=0))  # [S,K,3]
        bias[:, 0] = 0.0  # the neutral render is the reference
    gain = turn_gain(turns) if turns is not None else None
    return MotionCalibration(SCORE_NAMES, weights, own, crosstalk, meta or {}, bias, gain, gains)


def calibration_avatars(model: FlexAvatarModel, photos, template: bool = True) -> list[tuple[str, str, FlexAvatarModel, Avatar]]:
    """(kind, photo name, model, avatar) of every calibration avatar: trained avatars of
    ``photos`` and, with ``template``, the untrained network's avatar of the first photo."""
    avatars = [("trained", Path(p).name, model, pipeline.create_avatar(p, model=model)) for p in photos]
    if template:
        torch.manual_seed(0)
        untrained = FlexAvatarModel(model.config).to(model.device).eval()
        avatars.append(("template", Path(photos[0]).name, untrained, pipeline.create_avatar(photos[0], model=untrained)))
    return avatars


def calibrate(model: FlexAvatarModel, photos, template: bool = True, sweeps_path=None) -> MotionCalibration:
    """Closed-loop calibration over trained avatars of ``photos`` (and the untrained template).
    ``sweeps_path``: also save the per-avatar sweeps there (``.npz``, for :func:`refit`)."""
    start = time.perf_counter()
    avatars = calibration_avatars(model, photos, template)
    responses, rotations = zip(*[sweep_responses(net, avatar) for _, _, net, avatar in avatars], strict=True)
    turns = np.stack([sweep_turns(net, avatar) for _, _, net, avatar in avatars])
    meta = {
        "avatars": [f"{kind}:{name}" for kind, name, _, _ in avatars],
        "model": model.model_id(),
        "command": "python -m flexavatar calibrate",
        "seconds": round(time.perf_counter() - start, 1),
    }
    if sweeps_path is not None:
        np.savez_compressed(sweeps_path, responses=np.stack(responses), rotations=np.stack(rotations),
                            turns=turns, weights=SWEEP_WEIGHTS, meta=json.dumps(meta), gains=shape_gains())  # fmt: skip
    return fit_calibration(np.stack(responses), np.stack(rotations), SWEEP_WEIGHTS, meta, turns, shape_gains())


def refit(sweeps_path) -> MotionCalibration:
    """The calibration of sweeps saved by :func:`calibrate` (no rendering)."""
    with np.load(sweeps_path) as sweeps:
        turns = sweeps["turns"] if "turns" in sweeps else None
        gains = sweeps["gains"] if "gains" in sweeps else None
        return fit_calibration(sweeps["responses"], sweeps["rotations"], sweeps["weights"], json.loads(str(sweeps["meta"])),
                               turns, gains)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flexavatar calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--photos", nargs="*", default=None, help="default: " + ", ".join(CALIBRATION_PHOTOS))
    p.add_argument("--out", default=str(SHIPPED_WEIGHTS / CALIBRATION_FILE))
    p.add_argument("--no-template", action="store_true", help="trained avatars only")
    p.add_argument("--sweeps", default=None, help="also save the per-avatar sweeps here (.npz)")
    p.add_argument("--from-sweeps", default=None, help="refit sweeps saved with --sweeps (no rendering)")
    p.add_argument("--weights", default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.from_sweeps:
        calibration = refit(args.from_sweeps)
    else:
        photos = args.photos or [str(media_dir() / name) for name in CALIBRATION_PHOTOS]
        model = pipeline.load_model(args.weights, args.device)
        calibration = calibrate(model, photos, template=not args.no_template, sweeps_path=args.sweeps)
    path = calibration.save(args.out)
    if calibration.turn_gain is not None:
        print("head turn gain (x pitch, y yaw, z roll): " + " ".join(f"{g:.3f}" for g in calibration.turn_gain))
    for name, row in zip(calibration.names, calibration.responses, strict=True):
        print(f"{name:>20}: " + " ".join(f"{v:.2f}" for v in row))
    print(f"wrote {path} ({calibration.meta['seconds']} s)")
    return 0

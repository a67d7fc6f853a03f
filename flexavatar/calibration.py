"""Fit the motion calibration in closed loop: ``python -m flexavatar calibrate``.

For each avatar (the untrained template and trained avatars of calibration photos), every
MediaPipe score's ICT blendshape(s) is swept over :data:`SWEEP_WEIGHTS` with all other shapes
at 0; each render (the avatar's own source camera, the framing a reenactment renders) is
re-tracked by the project's MediaPipe landmarker (IMAGE mode). Per score the response is the
median over avatars (avatars respond differently: a full ICT jawOpen re-tracks as 0.4-0.7),
made non-decreasing (pool-adjacent-violators); the cross-talk is the other
scores' change at full weight, kept where it matters (>= :data:`MIN_CROSSTALK`). The result is
a :class:`~flexavatar.motion.MotionCalibration`, inverted at driving time.

The calibration photos default to the public photos plus ``multi_face.jpg`` (its largest
face); ``single_face.jpg`` is left out, so its cross-reenactment rows in ``eval --motion`` are
held out. The template is rendered with ``astronaut.png``'s colours.

    python -m flexavatar calibrate [--photos a.jpg ...] [--out weights/motion_calibration.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from flexavatar import pipeline
from flexavatar.assets import SHIPPED_WEIGHTS
from flexavatar.errors import InvalidInputError
from flexavatar.head.blendshapes import MEDIAPIPE_BLENDSHAPE_NAMES, NUM_EXPRESSIONS
from flexavatar.model import Avatar, FlexAvatarModel
from flexavatar.motion import CALIBRATION_FILE, MotionCalibration, scores_to_ict
from flexavatar.tracking import detect_face
from flexavatar.train import media_dir

SWEEP_WEIGHTS = np.linspace(0.0, 1.0, 6)
CALIBRATION_PHOTOS = ("astronaut.png", "multi_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg")
#: Cross-talk below this (score per unit weight) is ignored.
MIN_CROSSTALK = 0.1
SCORE_NAMES = MEDIAPIPE_BLENDSHAPE_NAMES[1:]


def sweep_codes(weights: np.ndarray = SWEEP_WEIGHTS) -> np.ndarray:
    """[1 + S*(K-1), 57] ICT codes: neutral, then for each score s its shape(s) at weights[1:]."""
    num, steps = len(SCORE_NAMES), len(weights) - 1
    per_score = np.zeros((num, steps, num))
    per_score[np.arange(num), :, np.arange(num)] = weights[1:]
    codes = scores_to_ict(per_score.reshape(-1, num), SCORE_NAMES, np.zeros(NUM_EXPRESSIONS))
    return np.concatenate([np.zeros((1, NUM_EXPRESSIONS)), codes]).astype(np.float32)


def retrack_scores(frames: np.ndarray) -> np.ndarray:
    """[F,H,W,3] uint8 renders -> [F,S] MediaPipe scores (NaN rows where no face is found)."""
    scores = np.full((len(frames), len(SCORE_NAMES)), np.nan)
    for i, frame in enumerate(frames):  # one landmarker call per frame
        try:
            scores[i] = detect_face(frame, with_mask=False).blendshapes[1:]
        except InvalidInputError:
            pass
    return scores


def sweep_responses(model: FlexAvatarModel, avatar: Avatar, weights: np.ndarray = SWEEP_WEIGHTS) -> np.ndarray:
    """[S,K,S] scores re-tracked from ``avatar`` rendered with score s's shape(s) at weights[k]
    (the neutral render is k = 0 for every s)."""
    codes = torch.from_numpy(sweep_codes(weights))
    camera = avatar.source_camera
    frames = []
    with torch.no_grad():
        for start in range(0, len(codes), pipeline.RENDER_CHUNK):
            chunk = codes[start : start + pipeline.RENDER_CHUNK].to(model.device)
            rgb, _ = model.render(avatar, [camera] * len(chunk), chunk)
            frames.append((rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())
    scores = retrack_scores(np.concatenate(frames))
    num, steps = len(SCORE_NAMES), len(weights) - 1
    swept = scores[1:].reshape(num, steps, num)
    return np.concatenate([np.broadcast_to(scores[0], (num, 1, num)), swept], axis=1)


def monotone(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of [K] values (pool-adjacent-violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:  # K is a handful of sweep points
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count), blocks[-1][1] + count]
    return np.concatenate([[mean] * int(count) for mean, count in blocks])


def fit_calibration(responses: np.ndarray, weights: np.ndarray = SWEEP_WEIGHTS, meta: dict | None = None) -> MotionCalibration:
    """Responses [A,S,K,S] of A avatars (NaN where untracked) -> :class:`MotionCalibration`."""
    mean = np.nanmedian(responses, axis=0)  # [S,K,S]
    mean = np.where(np.isnan(mean), 0.0, mean)
    num = len(SCORE_NAMES)
    own = np.stack([monotone(mean[s, :, s]) for s in range(num)])  # [S,K]
    crosstalk = (mean[:, -1, :] - mean[:, 0, :]).T / weights[-1]  # [i,j]: score i per unit of shape j
    crosstalk[np.arange(num), np.arange(num)] = 0.0
    crosstalk[np.abs(crosstalk) < MIN_CROSSTALK] = 0.0
    return MotionCalibration(SCORE_NAMES, weights, own, crosstalk, meta or {})


def calibrate(model: FlexAvatarModel, photos, template: bool = True) -> MotionCalibration:
    """Closed-loop calibration over trained avatars of ``photos`` (and the untrained template)."""
    start = time.perf_counter()
    avatars = [("trained", p, pipeline.create_avatar(p, model=model)) for p in photos]
    if template:
        torch.manual_seed(0)
        untrained = FlexAvatarModel(model.config).to(model.device).eval()
        avatars.append(("template", photos[0], pipeline.create_avatar(photos[0], model=untrained)))
        responses = [sweep_responses(untrained if kind == "template" else model, a) for kind, _, a in avatars]
    else:
        responses = [sweep_responses(model, a) for _, _, a in avatars]
    meta = {
        "avatars": [f"{kind}:{Path(p).name}" for kind, p, _ in avatars],
        "model": model.model_id(),
        "command": "python -m flexavatar calibrate",
        "seconds": round(time.perf_counter() - start, 1),
    }
    return fit_calibration(np.stack(responses), SWEEP_WEIGHTS, meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flexavatar calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--photos", nargs="*", default=None, help="default: " + ", ".join(CALIBRATION_PHOTOS))
    p.add_argument("--out", default=str(SHIPPED_WEIGHTS / CALIBRATION_FILE))
    p.add_argument("--no-template", action="store_true", help="trained avatars only")
    p.add_argument("--weights", default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    photos = args.photos or [str(media_dir() / name) for name in CALIBRATION_PHOTOS]
    model = pipeline.load_model(args.weights, args.device)
    calibration = calibrate(model, photos, template=not args.no_template)
    path = calibration.save(args.out)
    for name, row in zip(calibration.names, calibration.responses, strict=True):
        print(f"{name:>20}: " + " ".join(f"{v:.2f}" for v in row))
    print(f"wrote {path} ({calibration.meta['seconds']} s)")
    return 0

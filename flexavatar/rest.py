"""The avatar's rest expression, the face that driving adds the driver's changes to.

Neutralised, a photo's expression leaves its colours behind: a smiling photo's narrowed eyes
and squint re-track as half-closed eyes and lowered brows on the neutral face. The avatar's
fitted calibration holds the ICT weights that make its rest re-track neutral
(``MotionCalibration.rest_offset``: :func:`flexavatar.closed_loop.rest_eye_opening`,
:func:`flexavatar.closed_loop.rest_brow_lift`, :func:`flexavatar.closed_loop.rest_lip_release`);
driving lets go of them where the driver closes its eyes, frowns or purses its lips
(:func:`let_go_of_rest`).
"""

from __future__ import annotations

import numpy as np

from flexavatar.head.blendshapes import EXPRESSION_INDEX, NUM_EXPRESSIONS
from flexavatar.model import Avatar

#: :func:`close_opened_eyes`: a rest that holds the eyes open lets go of them by this blink weight.
BLINK_OPENING_FADE = 0.5
#: :func:`lower_lifted_brows`: a rest that lifts the brows lets go of them by this browDown weight.
BROW_LIFT_FADE = 0.5
#: :func:`release_widened_lips`: a rest that widens the lips lets go of them by this pucker plus
#: funnel weight (ICT's pucker is driven up to 2).
LIP_RELEASE_FADE = 0.5


def rest_expression(avatar: Avatar | None, neutralise: bool, calibration=None) -> np.ndarray:
    """[57] float64 the avatar's rest expression: neutral or its source photo's. Neutral is zeros
    plus ``calibration.rest_offset`` (a :class:`~flexavatar.motion.MotionCalibration`) where the
    avatar's fitted calibration has one (a smiling photo's eyes, narrowed in its colours, opened
    to look and re-track open; brows that read as lowered, lifted to read level)."""
    if neutralise or avatar is None:
        offset = None if calibration is None else calibration.rest_offset
        return np.zeros(NUM_EXPRESSIONS) if offset is None else np.asarray(offset, np.float64).copy()
    return avatar.source_expression.detach().cpu().numpy().astype(np.float64)


def close_opened_eyes(expressions: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """[T,57] ICT expressions whose rest [57] holds the eyes open with eyeWide -> [T,57] with that
    eyeWide fading out as each eye blinks (gone at blink weight :data:`BLINK_OPENING_FADE`): held
    through a blink it kept the lids apart (a full ICT blink plus eyeWide 0.5 re-tracked at 0.43
    on single_face.jpg's avatar, 0.73 without)."""
    out = np.array(expressions, np.float32, copy=True)
    for side in ("L", "R"):  # the two eyes' columns; vectorised over frames
        wide, blink = EXPRESSION_INDEX[f"eyeWide_{side}"], EXPRESSION_INDEX[f"eyeBlink_{side}"]
        held = rest[wide] * np.clip(1.0 - out[:, blink] / BLINK_OPENING_FADE, 0.0, 1.0)
        out[:, wide] = np.clip(out[:, wide] - rest[wide] + held, 0.0, None)
    return out


def lower_lifted_brows(expressions: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """[T,57] ICT expressions whose rest [57] lifts the brows (browInnerUp / browOuterUp,
    :func:`flexavatar.closed_loop.rest_brow_lift`, or a kept source expression's raised brows)
    -> [T,57] with that lift fading out as each side's browDown rises (gone at
    :data:`BROW_LIFT_FADE`): a driver's frown is not fought by the lift that only made the rest
    read neutral. Raises the driver adds on top are kept."""
    out = np.array(expressions, np.float32, copy=True)
    for side in ("L", "R"):  # the two sides' columns; vectorised over frames
        down = out[:, EXPRESSION_INDEX[f"browDown_{side}"]]
        keep = np.clip(1.0 - down / BROW_LIFT_FADE, 0.0, 1.0)
        for shape in (f"browInnerUp_{side}", f"browOuterUp_{side}"):
            column = EXPRESSION_INDEX[shape]
            out[:, column] = np.clip(out[:, column] - rest[column] * (1.0 - keep), 0.0, None)
    return out


def release_widened_lips(expressions: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """[T,57] ICT expressions whose rest [57] widens the lips with mouthStretch
    (:func:`flexavatar.closed_loop.rest_lip_release`) -> [T,57] with that stretch fading out as
    the lips pucker or funnel (gone at pucker + funnel weight :data:`LIP_RELEASE_FADE`): the
    stretch only undoes a photo's rounded lips at rest and would fight a driver's kiss. Stretch
    the driver adds on top is kept."""
    out = np.array(expressions, np.float32, copy=True)
    rounding = out[:, EXPRESSION_INDEX["mouthPucker"]] + out[:, EXPRESSION_INDEX["mouthFunnel"]]
    let_go = np.clip(rounding / LIP_RELEASE_FADE, 0.0, 1.0)  # [T] 0 at rest, 1 from the fade on
    for shape in ("mouthStretch_L", "mouthStretch_R"):
        column = EXPRESSION_INDEX[shape]
        out[:, column] = np.clip(out[:, column] - rest[column] * let_go, 0.0, None)
    return out


def let_go_of_rest(expressions: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """[T,57] ICT expressions on the rest [57] -> [T,57] with what the rest holds only to read
    neutral let go where the expression moves that part: eyes held open through blinks
    (:func:`close_opened_eyes`), lifted brows through frowns (:func:`lower_lifted_brows`),
    widened lips through a pucker (:func:`release_widened_lips`)."""
    return release_widened_lips(lower_lifted_brows(close_opened_eyes(expressions, rest), rest), rest)

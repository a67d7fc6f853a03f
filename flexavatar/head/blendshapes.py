"""Expression codes: MediaPipe's 52 blendshape scores <-> the 57 ICT-FaceKit weights.

MediaPipe (ARKit naming) says ``Left``/``Right`` for the subject's own left/right, as ICT's
``_L``/``_R`` do. ``browInnerUp`` and ``cheekPuff`` are single scores in MediaPipe and split
shapes in ICT: the score goes to both sides. ICT's ``cheekRaiser_L/R`` and
``PupilDilate_L/R`` have no MediaPipe counterpart and stay 0; MediaPipe's ``_neutral`` is
dropped.
"""

from __future__ import annotations

import numpy as np

#: The 57 ICT expression names, in the order of ``ict_facekit.npz['expression_names']``.
ICT_EXPRESSION_NAMES: tuple[str, ...] = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R",
    "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R",
    "mouthPress_L", "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L",
    "mouthStretch_R", "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
    "cheekRaiser_L", "cheekRaiser_R", "PupilDilate_L", "PupilDilate_R",
)  # fmt: skip

NUM_EXPRESSIONS = len(ICT_EXPRESSION_NAMES)  # 57
EXPRESSION_INDEX = {name: i for i, name in enumerate(ICT_EXPRESSION_NAMES)}

#: MediaPipe FaceLandmarker blendshape categories, in output order (index 0 is ``_neutral``).
MEDIAPIPE_BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)  # fmt: skip


def _ict_targets(mediapipe_name: str) -> list[str]:
    if mediapipe_name == "_neutral":
        return []
    if mediapipe_name in ("browInnerUp", "cheekPuff"):
        return [mediapipe_name + "_L", mediapipe_name + "_R"]
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        split = mediapipe_name[: -len(side)] + suffix
        # jawLeft/mouthLeft are directions, not sides: they exist under their own name in ICT
        if mediapipe_name.endswith(side) and split in EXPRESSION_INDEX:
            return [split]
    return [mediapipe_name]


def mediapipe_to_ict_matrix() -> np.ndarray:
    """[52,57] float32 0/1 matrix M with ``ict = mediapipe_scores @ M``."""
    matrix = np.zeros((len(MEDIAPIPE_BLENDSHAPE_NAMES), NUM_EXPRESSIONS), dtype=np.float32)
    for i, name in enumerate(MEDIAPIPE_BLENDSHAPE_NAMES):
        for target in _ict_targets(name):
            matrix[i, EXPRESSION_INDEX[target]] = 1.0
    return matrix


_MP_TO_ICT = mediapipe_to_ict_matrix()


def mediapipe_to_ict(scores) -> np.ndarray:
    """Map MediaPipe scores to ICT weights.

    scores: ``[...,52]`` array in MediaPipe output order, or a ``{name: score}`` dict.
    Returns ``[...,57]`` float32 in [0,1].
    """
    if isinstance(scores, dict):
        scores = np.array([float(scores.get(n, 0.0)) for n in MEDIAPIPE_BLENDSHAPE_NAMES], np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape[-1] != len(MEDIAPIPE_BLENDSHAPE_NAMES):
        raise ValueError(f"expected {len(MEDIAPIPE_BLENDSHAPE_NAMES)} MediaPipe scores, got {scores.shape}")
    return np.clip(scores @ _MP_TO_ICT, 0.0, 1.0)

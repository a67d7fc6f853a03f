"""ICT-FaceKit head model: blendshapes, identity, UV atlas, surface sampling."""

from flexavatar.head.atlas import REGION_NAMES, UVAtlas
from flexavatar.head.blendshapes import (
    ICT_EXPRESSION_NAMES,
    MEDIAPIPE_BLENDSHAPE_NAMES,
    NUM_EXPRESSIONS,
    mediapipe_to_ict,
)
from flexavatar.head.model import ICTHead

__all__ = [
    "ICTHead",
    "UVAtlas",
    "REGION_NAMES",
    "ICT_EXPRESSION_NAMES",
    "MEDIAPIPE_BLENDSHAPE_NAMES",
    "NUM_EXPRESSIONS",
    "mediapipe_to_ict",
]

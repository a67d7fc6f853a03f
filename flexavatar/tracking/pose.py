"""Head pose: MediaPipe's facial transformation matrix -> OpenCV camera pose of the ICT head.

MediaPipe's matrix ``M`` maps its canonical face mesh (cm) into its metric camera space:
centimetres, OpenGL axes (camera at the origin looking down -z, +y up, +x right), for a
pinhole camera of vertical field of view :data:`MEDIAPIPE_VERTICAL_FOV_DEG` with the
principal point at the image centre. Our pose is of the ICT head (metres) in OpenCV camera
axes (+z forward, +y down): ``x_cam = R @ x_head + t``. With the MediaPipe->ICT similarity
``x_ict_cm = s Q x_mp + q`` (see :mod:`flexavatar.tracking.correspondence`) and the axis flip
``F = diag(1, -1, -1)`` (OpenGL -> OpenCV, a proper rotation):

    R = F M_R Q^T / (s |M_R|)      (re-orthonormalised; |M_R| the matrix's own scale)
    t = 0.01 F (M_t - M_R Q^T q / s)

Rotation conversions (axis-angle, unwrapping, relative rotations) are in :mod:`flexavatar.rotations`.
"""

from __future__ import annotations

import math

import numpy as np

from flexavatar.rotations import nearest_rotation

MEDIAPIPE_VERTICAL_FOV_DEG = 63.0
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def mediapipe_focal_px(height: int) -> float:
    """Focal length (pixels) of the camera MediaPipe assumes for an image ``height`` px tall."""
    return 0.5 * height / math.tan(math.radians(MEDIAPIPE_VERTICAL_FOV_DEG) / 2.0)


def mediapipe_to_head_pose(transform: np.ndarray, correspondence) -> tuple[np.ndarray, np.ndarray]:
    """[...,4,4] MediaPipe transforms -> (R [...,3,3], t [...,3] metres), ICT head -> OpenCV camera."""
    transform = np.asarray(transform, dtype=np.float64)
    m_rot, m_t = transform[..., :3, :3], transform[..., :3, 3]
    s, q_rot, q_t = correspondence.scale, correspondence.rotation, correspondence.translation
    rotation = nearest_rotation(OPENGL_TO_OPENCV @ m_rot @ q_rot.T)
    translation = 0.01 * (m_t - (m_rot @ (q_rot.T @ q_t)) / s) @ OPENGL_TO_OPENCV.T
    return rotation, translation

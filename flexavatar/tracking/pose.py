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

A frontal head has ``R ~ diag(1, -1, -1)`` (180 deg about x): its axis-angle sits near the
pi wrap, so smoothing/interpolation work on rotations *relative to a reference*
(:func:`relative_rotvecs`), never on raw axis-angle vectors.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MEDIAPIPE_VERTICAL_FOV_DEG = 63.0
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def mediapipe_focal_px(height: int) -> float:
    """Focal length (pixels) of the camera MediaPipe assumes for an image ``height`` px tall."""
    return 0.5 * height / math.tan(math.radians(MEDIAPIPE_VERTICAL_FOV_DEG) / 2.0)


def nearest_rotation(matrices: np.ndarray) -> np.ndarray:
    """Project [...,3,3] matrices onto SO(3) (SVD)."""
    u, _, vt = np.linalg.svd(matrices)
    det = np.linalg.det(u @ vt)
    fix = np.ones(matrices.shape[:-1])
    fix[..., 2] = det
    return (u * fix[..., None, :]) @ vt


def mediapipe_to_head_pose(transform: np.ndarray, correspondence) -> tuple[np.ndarray, np.ndarray]:
    """[...,4,4] MediaPipe transforms -> (R [...,3,3], t [...,3] metres), ICT head -> OpenCV camera."""
    transform = np.asarray(transform, dtype=np.float64)
    m_rot, m_t = transform[..., :3, :3], transform[..., :3, 3]
    s, q_rot, q_t = correspondence.scale, correspondence.rotation, correspondence.translation
    rotation = nearest_rotation(OPENGL_TO_OPENCV @ m_rot @ q_rot.T)
    translation = 0.01 * (m_t - (m_rot @ (q_rot.T @ q_t)) / s) @ OPENGL_TO_OPENCV.T
    return rotation, translation


# --------------------------------------------------------------------------- axis-angle (numpy)


def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues: [...,3] axis-angle (radians) -> [...,3,3]."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    axis = rotvec / np.maximum(angle, 1e-12)
    x, y, z = np.moveaxis(axis, -1, 0)
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    a = angle[..., None]
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def matrix_to_axis_angle(matrix: np.ndarray) -> np.ndarray:
    """[...,3,3] rotations -> [...,3] axis-angle with angle in [0, pi] (stable near 0 and pi)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    trace = np.trace(matrix, axis1=-2, axis2=-1)
    angle = np.arccos(np.clip((trace - 1) / 2, -1.0, 1.0))
    skew = np.stack(
        [
            matrix[..., 2, 1] - matrix[..., 1, 2],
            matrix[..., 0, 2] - matrix[..., 2, 0],
            matrix[..., 1, 0] - matrix[..., 0, 1],
        ],
        -1,
    )
    sin = np.sin(angle)
    small = sin > 1e-4
    rotvec = np.where(small[..., None], skew * (angle / np.maximum(2 * sin, 1e-12))[..., None], 0.5 * skew)
    # Near pi the skew part vanishes: the axis comes from the symmetric part,
    # (R + R^T)/2 = cos(a) I + (1 - cos(a)) a a^T.
    near_pi = angle > math.pi - 1e-2
    if np.any(near_pi):
        m = matrix[near_pi]
        cos = np.cos(angle[near_pi])[:, None, None]
        sym = ((m + np.swapaxes(m, -1, -2)) / 2 - cos * np.eye(3)) / (1 - cos)  # a a^T
        column = np.argmax(np.diagonal(sym, axis1=-2, axis2=-1), -1)
        axis = np.take_along_axis(sym, column[:, None, None], -1)[..., 0]
        axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
        # sign: agree with the (small but informative) skew part
        sign = np.where((axis * skew[near_pi]).sum(-1) < 0, -1.0, 1.0)
        rotvec[near_pi] = axis * sign[:, None] * angle[near_pi][:, None]
    return rotvec


def unwrap_rotvecs(rotvecs: np.ndarray) -> np.ndarray:
    """[T,3] axis-angle sequence -> the same rotations, each written as the representative
    (r + 2 pi k r/|r|, k in {-1, 0, 1}) nearest to the previous frame's: no wrap jumps."""
    out = np.array(rotvecs, dtype=np.float64, copy=True)
    for i in range(1, len(out)):  # sequential over frames by nature (T, not landmarks)
        r = out[i]
        angle = np.linalg.norm(r)
        if angle < 1e-9:
            continue
        axis = r / angle
        options = np.stack([r, r - 2 * math.pi * axis, r + 2 * math.pi * axis])
        out[i] = options[np.argmin(np.linalg.norm(options - out[i - 1], axis=1))]
    return out


def relative_rotvecs(rotations: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """[T,3,3] rotations -> [T,3] axis-angle of ``reference^T @ R`` (small for a steady head)."""
    return matrix_to_axis_angle(np.swapaxes(reference, -1, -2) @ rotations)


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between rotation matrices [...,3,3]."""
    trace = np.trace(np.swapaxes(a, -1, -2) @ b, axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((trace - 1) / 2, -1.0, 1.0)))


# --------------------------------------------------------------------------- axis-angle (torch)


def axis_angle_to_matrix_torch(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues in torch, differentiable also at 0: [...,3] -> [...,3,3]."""
    angle_sq = (rotvec * rotvec).sum(-1, keepdim=True)
    small = angle_sq < 1e-6
    safe_sq = torch.where(small, torch.ones_like(angle_sq), angle_sq)  # keeps gradients finite
    angle = torch.sqrt(safe_sq)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    # Taylor expansions below 1e-3 rad: float32 1 - cos(a) loses all digits there.
    sin_term = torch.where(small, 1 - angle_sq / 6, torch.sin(angle) / angle)[..., None]
    cos_term = torch.where(small, 0.5 - angle_sq / 24, (1 - torch.cos(angle)) / safe_sq)[..., None]
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + sin_term * k + cos_term * (k @ k)

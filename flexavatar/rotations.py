"""Rotations, in one place: numpy (tracking, poses) and torch (Gaussians, fitting).

Quaternions are wxyz, as gsplat. Axis-angle vectors are radians. numpy functions take and
return float64 arrays ``[...,3]`` / ``[...,3,3]``; torch functions are batched and
differentiable.

A frontal head has ``R ~ diag(1, -1, -1)`` (180 deg about x): its axis-angle sits near the
pi wrap, so smoothing/interpolation work on rotations *relative to a reference*
(:func:`relative_rotvecs`), never on raw axis-angle vectors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- numpy
def nearest_rotation(matrices: np.ndarray) -> np.ndarray:
    """Project [...,3,3] matrices onto SO(3) (SVD)."""
    u, _, vt = np.linalg.svd(matrices)
    det = np.linalg.det(u @ vt)
    fix = np.ones(matrices.shape[:-1])
    fix[..., 2] = det
    return (u * fix[..., None, :]) @ vt


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


# --------------------------------------------------------------------------- torch
def quat_to_matrix(quats: torch.Tensor) -> torch.Tensor:
    """[...,4] wxyz (any norm) -> [...,3,3]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(*quats.shape[:-1], 3, 3)  # fmt: skip


def matrix_to_quat(matrix: torch.Tensor) -> torch.Tensor:
    """[...,3,3] rotation -> [...,4] unit wxyz with w >= 0 (numerically safe branch per element)."""
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # four candidate (unnormalised) quaternions; pick the best-conditioned one
    candidates = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # fmt: skip
    diag = torch.stack([m00 + m11 + m22, m00, m11, m22], -1)
    best = diag.argmax(-1, keepdim=True)
    quat = candidates.gather(-2, best[..., None].expand(*best.shape[:-1], 1, 4))[..., 0, :]
    quat = F.normalize(quat, dim=-1)
    return torch.where(quat[..., :1] < 0, -quat, quat)


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

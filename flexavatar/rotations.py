"""Rotation conversions (torch, batched, differentiable). Quaternions are wxyz, as gsplat."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """[...,3] rotation vector (radians) -> [...,3,3] (Rodrigues, safe at 0)."""
    angle = axis_angle.norm(dim=-1, keepdim=True)
    half = angle / 2
    # sin(x/2)/x -> 1/2 as x -> 0
    scale = torch.where(angle > 1e-6, torch.sin(half) / angle.clamp_min(1e-12), 0.5 - angle.square() / 48)
    return quat_to_matrix(torch.cat([torch.cos(half), axis_angle * scale], -1))


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """[...,3,3] -> [...,3] rotation vector (radians)."""
    quat = matrix_to_quat(matrix)
    xyz = quat[..., 1:]
    sin_half = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, quat[..., :1])
    return torch.where(sin_half > 1e-8, xyz / sin_half.clamp_min(1e-12) * angle, 2 * xyz)

"""flexavatar.rotations: the numpy and torch conversions agree with each other and round-trip."""

from __future__ import annotations

import math

import numpy as np
import torch

from flexavatar.rotations import (
    axis_angle_to_matrix,
    axis_angle_to_matrix_torch,
    matrix_to_axis_angle,
    matrix_to_quat,
    nearest_rotation,
    quat_to_matrix,
    relative_rotvecs,
    rotation_angle_deg,
    unwrap_rotvecs,
)


def _rotvecs(count: int = 64) -> np.ndarray:
    """Random axis-angle vectors, angles over (0, pi) including both ends' neighbourhoods."""
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(count, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate(
        [[1e-7, 1e-4, math.pi - 1e-6, math.pi - 1e-3], rng.uniform(0, math.pi, count - 4)]
    )
    return axes * angles[:, None]


def test_numpy_and_torch_rodrigues_agree():
    rotvecs = _rotvecs()
    ours = axis_angle_to_matrix(rotvecs)
    theirs = axis_angle_to_matrix_torch(torch.from_numpy(rotvecs)).numpy()
    assert np.abs(ours - theirs).max() < 1e-9
    assert np.abs(ours @ np.swapaxes(ours, 1, 2) - np.eye(3)).max() < 1e-9  # rotations
    assert np.allclose(np.linalg.det(ours), 1.0)


def test_axis_angle_round_trip_near_pi():
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(50, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, np.pi, 40), np.pi - np.logspace(-7, -2, 10)])
    rotvecs = axes * angles[:, None]
    back = axis_angle_to_matrix(matrix_to_axis_angle(axis_angle_to_matrix(rotvecs)))
    assert rotation_angle_deg(back, axis_angle_to_matrix(rotvecs)).max() < 1e-3
    # unwrap: a rotation about x crossing pi flips the raw axis-angle; unwrapped it is continuous
    angles = np.linspace(3.0, 3.3, 20)
    raw = matrix_to_axis_angle(axis_angle_to_matrix(np.stack([angles, 0 * angles, 0 * angles], 1)))
    steps = np.linalg.norm(np.diff(unwrap_rotvecs(raw), axis=0), axis=1)
    assert steps.max() < 0.05


def test_quaternions_round_trip_and_match_rodrigues():
    rotvecs = _rotvecs()
    matrices = torch.from_numpy(axis_angle_to_matrix(rotvecs))
    quats = matrix_to_quat(matrices)
    assert torch.allclose(quats.norm(dim=-1), torch.ones(len(quats), dtype=quats.dtype))
    assert bool((quats[:, 0] >= 0).all())  # w >= 0 (one of the two signs)
    assert torch.allclose(quat_to_matrix(quats), matrices, atol=1e-6)
    # the quaternion of a rotation by a about n is (cos a/2, sin a/2 n)
    angles = np.linalg.norm(rotvecs, axis=1)
    expected_w = torch.from_numpy(np.cos(angles / 2))
    assert torch.allclose(quats[:, 0], expected_w, atol=1e-6)


def test_torch_rodrigues_has_finite_gradients_at_zero():
    rotvec = torch.zeros(2, 3, dtype=torch.float32, requires_grad=True)
    axis_angle_to_matrix_torch(rotvec).sum().backward()
    assert torch.isfinite(rotvec.grad).all()


def test_nearest_rotation_and_relative_rotvecs():
    rng = np.random.default_rng(1)
    rotations = axis_angle_to_matrix(_rotvecs(8))
    noisy = rotations * 1.3 + rng.normal(0, 1e-3, rotations.shape)  # scaled and perturbed
    projected = nearest_rotation(noisy)
    assert np.allclose(projected @ np.swapaxes(projected, 1, 2), np.eye(3), atol=1e-9)
    assert rotation_angle_deg(projected, rotations).max() < 0.5
    # relative to itself: no rotation; relative to the first: the first row is zero
    relative = relative_rotvecs(rotations, rotations[0])
    assert np.abs(relative[0]).max() < 1e-6
    assert np.allclose(axis_angle_to_matrix(relative), np.swapaxes(rotations[0], 0, 1) @ rotations, atol=1e-6)

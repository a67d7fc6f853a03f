"""Pinhole cameras in the OpenCV convention used throughout (as gsplat).

``viewmat`` is the 4x4 world-to-camera transform; the camera looks down +z with +y down
and +x right in the image. ``K`` is the 3x3 intrinsic matrix in pixels. World space is the
canonical head space: metres, +y up, +z out of the face, +x the subject's left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Camera:
    """One pinhole camera.

    viewmat: [4,4] float32 world-to-camera (OpenCV axes).
    K: [3,3] float32 intrinsics in pixels.
    width, height: image size in pixels.
    """

    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int

    def to(self, device: torch.device | str) -> Camera:
        return Camera(self.viewmat.to(device), self.K.to(device), self.width, self.height)

    @property
    def position(self) -> torch.Tensor:
        """Camera centre in world space, [3] metres."""
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t

    @property
    def full_projection(self) -> torch.Tensor:
        """K @ [R|t], [3,4]: maps homogeneous world points to homogeneous pixels."""
        return self.K @ self.viewmat[:3, :]

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Project world points [...,3] (metres) to pixels [...,2] (pixel centres at +0.5)."""
        cam = points @ self.viewmat[:3, :3].T + self.viewmat[:3, 3]
        uvw = cam @ self.K.T
        return uvw[..., :2] / uvw[..., 2:3].clamp_min(1e-8)


def intrinsics(focal_px: float, width: int, height: int, device=None) -> torch.Tensor:
    """[3,3] intrinsics with the principal point at the image centre."""
    return torch.tensor(
        [[focal_px, 0.0, width / 2.0], [0.0, focal_px, height / 2.0], [0.0, 0.0, 1.0]],
        dtype=torch.float32,
        device=device,
    )


def focal_from_fov(fov_deg: float, size_px: int) -> float:
    """Focal length in pixels for a full field of view ``fov_deg`` across ``size_px``."""
    return 0.5 * size_px / math.tan(math.radians(fov_deg) / 2.0)


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """World-to-camera [4,4] for a camera at ``eye`` [3] looking at ``target`` [3] (OpenCV axes).

    ``up`` is the world direction that appears upward in the image.
    """
    eye = torch.as_tensor(eye, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=torch.float32, device=eye.device)
    up_t = torch.as_tensor(up, dtype=torch.float32, device=eye.device)
    forward = target - eye
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, up_t)  # camera +x: forward x up (y down in image)
    right = right / right.norm().clamp_min(1e-8)
    down = torch.linalg.cross(forward, right)
    R = torch.stack([right, down, forward])  # rows are camera axes in world coordinates
    viewmat = torch.eye(4, dtype=torch.float32, device=eye.device)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye
    return viewmat


def orbit_camera(
    azimuth_deg: float,
    elevation_deg: float,
    distance_m: float,
    target,
    focal_px: float,
    width: int,
    height: int,
) -> Camera:
    """A camera on a sphere around ``target`` [3] metres, looking at it.

    azimuth 0 is in front of the face (+z), positive azimuth moves toward the subject's left
    (+x); elevation is positive above the head.
    """
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    target = torch.as_tensor(target, dtype=torch.float32)
    offset = torch.tensor(
        [math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)], dtype=torch.float32
    )
    eye = target + distance_m * offset
    return Camera(look_at(eye, target), intrinsics(focal_px, width, height), width, height)


def stack_cameras(cameras: list[Camera]) -> tuple[torch.Tensor, torch.Tensor]:
    """viewmats [C,4,4] and Ks [C,3,3] of cameras that share one image size."""
    return torch.stack([c.viewmat for c in cameras]), torch.stack([c.K for c in cameras])

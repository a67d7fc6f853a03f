"""Fit the ICT head to 1-4 photos of one person: shared identity, per-image expression, pose
and a shared focal length, from MediaPipe landmarks in crop pixels.

Model of landmark j in image n (crop pixels, principal point at the crop centre)::

    X_nj = sum_k bary_jk * (neutral + identity @ B_id + expression_n @ B_expr)[tri_jk]   (metres)
    x_nj = f * (R_n X_nj + t_n)_xy / (R_n X_nj + t_n)_z + R/2

Energy (minimised with Adam, vectorised over images and landmarks)::

    sum_nj w_j rho(|x_nj - y_nj| / R)               robust (Geman-McClure, scale SIGMA)
    + LAMBDA_IDENTITY |identity|^2                    (modes ~ N(0, 1))
    + LAMBDA_EXPRESSION sum_n |e_n - e_n^mediapipe|^2 (stay near MediaPipe's blendshapes)
    + LAMBDA_FOCAL (log f - log f_0)^2

Expressions are clamped to [0, 1] after every step. Initial pose: rotation from MediaPipe's
facial transformation matrix (:func:`flexavatar.tracking.pose.mediapipe_to_head_pose`), then
the translation that best reprojects the landmarks under that rotation (linear least squares).

The returned cameras live in canonical head space: the head is fixed and the camera moves;
``viewmat = [R_n | t_n]`` (world = ICT head, metres -> OpenCV camera), ``K`` in crop pixels.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flexavatar import assets
from flexavatar.camera import Camera, focal_from_fov
from flexavatar.head.model import CM_TO_M, load_ict_arrays
from flexavatar.images import read_image
from flexavatar.rotations import axis_angle_to_matrix_torch, matrix_to_axis_angle
from flexavatar.tracking.correspondence import load_correspondence
from flexavatar.tracking.crop import HeadCrop, crop_head
from flexavatar.tracking.detect import FaceDetection, detect_face
from flexavatar.tracking.pose import mediapipe_to_head_pose

#: Identity modes fitted by default.
DEFAULT_NUM_IDENTITY = 32
#: Initial field of view of a crop (the crop spans ~34 cm at the face: 20 deg ~ 1 m away).
DEFAULT_CROP_FOV_DEG = 20.0
ITERATIONS = 150
SIGMA = 0.02  # robust scale, as a fraction of the crop side (5 px at 256)
LAMBDA_IDENTITY = 2e-3
LAMBDA_EXPRESSION = 0.02
LAMBDA_FOCAL = 0.05
MAX_IMAGES = 4
#: A fit whose mean error exceeds this fraction of the crop side gets a warning.
POOR_FIT_FRACTION = 0.03


@dataclass
class HeadFit:
    """ICT head fitted to N photos of one person.

    identity: [K] float32 torch, ICT identity weights (first K modes).
    expressions: [N,57] float32 torch, ICT weights in [0,1].
    rotations: [N,3] float32 torch axis-angle, translations: [N,3] float32 torch metres: the
        head in each crop's OpenCV camera (x_cam = R x_head + t). Same as ``cameras[i].viewmat``.
    cameras: N :class:`Camera` in canonical head space (world-to-camera = head pose), K in crop
        pixels, width = height = resolution.
    crops, detections: per image. residual_px: [N] float32 torch, mean reprojection error of
        the face landmarks (weight 1) in crop pixels. focal_px: the shared focal, crop pixels.
    landmark_weights: [478] float32 numpy, the per-landmark weights the fit used.
    """

    identity: torch.Tensor
    expressions: torch.Tensor
    rotations: torch.Tensor
    translations: torch.Tensor
    cameras: list[Camera]
    crops: list[HeadCrop]
    detections: list[FaceDetection]
    residual_px: torch.Tensor
    focal_px: float
    resolution: int
    names: list[str]
    landmark_weights: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.crops)


# --------------------------------------------------------------------------- landmark bases


@functools.lru_cache(maxsize=4)
def _landmark_bases_cached(npz_path: str, num_identity: int):
    ict = load_ict_arrays(npz_path)
    corr = load_correspondence()
    vertex_ids = ict["triangles"][corr.triangles]  # [L,3]
    bary = corr.barycentric.astype(np.float64)[..., None]  # [L,3,1]

    def gather(field_array: np.ndarray) -> np.ndarray:  # [..., V, 3] -> [..., L, 3] metres
        return (field_array[..., vertex_ids, :].astype(np.float64) * bary).sum(-2) * CM_TO_M

    neutral = torch.from_numpy(gather(ict["neutral"]))
    identity = torch.from_numpy(gather(ict["identity_deltas"][:num_identity]))
    expression = torch.from_numpy(gather(ict["expression_deltas"]))
    return neutral, identity, expression


def landmark_bases(num_identity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ICT model restricted to the 478 corresponded points, float64 metres:
    neutral [L,3], identity [K,L,3], expression [57,L,3]."""
    return _landmark_bases_cached(str(assets.resolve("ict_facekit.npz")), num_identity)


class _LandmarkModel:
    """The linear model of a subset of landmarks as flat matrices (fast small matmuls):
    points = neutral + identity @ id_basis + expressions @ expr_basis, viewed [N,L',3]."""

    def __init__(self, num_identity: int, landmark_ids: np.ndarray | None = None):
        neutral, id_basis, expr_basis = landmark_bases(num_identity)
        if landmark_ids is not None:
            index = torch.from_numpy(np.asarray(landmark_ids, dtype=np.int64))
            neutral, id_basis, expr_basis = neutral[index], id_basis[:, index], expr_basis[:, index]
        self.num_points = neutral.shape[0]
        self.neutral = neutral.reshape(-1).contiguous()
        self.id_basis = id_basis.reshape(num_identity, -1).contiguous()
        self.expr_basis = expr_basis.reshape(expr_basis.shape[0], -1).contiguous()

    def __call__(self, identity: torch.Tensor, expressions: torch.Tensor) -> torch.Tensor:
        shape = self.neutral + identity.to(torch.float64) @ self.id_basis  # [L'*3]
        points = shape + expressions.to(torch.float64) @ self.expr_basis  # [N,L'*3]
        return points.view(-1, self.num_points, 3)


def model_landmarks(identity: torch.Tensor, expressions: torch.Tensor) -> torch.Tensor:
    """3D positions [N,478,3] (float64 metres, head space) of the corresponded points for
    identity [K] and expressions [N,57]."""
    return _LandmarkModel(identity.shape[-1])(identity, expressions)


def _project(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor, focal, centre: float):
    """points [N,L,3], rotation [N,3,3], translation [N,3] -> pixels [N,L,2]."""
    cam = points @ rotation.transpose(-1, -2) + translation[:, None, :]
    return focal * cam[..., :2] / cam[..., 2:3].clamp_min(1e-3) + centre


def project_landmarks(fit: HeadFit, index: int) -> np.ndarray:
    """[478,2] float32 crop pixels: the fitted model's landmarks in image ``index``.

    Landmarks with ``fit.landmark_weights == 0`` have no meaningful model position.
    """
    points = model_landmarks(fit.identity, fit.expressions[index : index + 1])
    camera = fit.cameras[index]
    projected = camera.project(points[0].to(torch.float32))
    return projected.detach().numpy().astype(np.float32)


# --------------------------------------------------------------------------- initialisation


def _translation_for_rotation(
    points: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    rotation: np.ndarray,
    focal: float,
    centre: float,
) -> np.ndarray:
    """Least-squares t with x = f (R X + t)_xy / (R X + t)_z + c, linear in t once R is fixed.

    points [L,3] m, targets [L,2] px, weights [L]. Returns t [3] metres.
    """
    rotated = points @ rotation.T  # [L,3]
    u = (targets - centre) / focal  # normalised image coordinates [L,2]
    # u (r_z + t_z) = r_xy + t_xy  ->  t_xy - u t_z = u r_z - r_xy
    rows_x = np.stack([np.ones_like(u[:, 0]), np.zeros_like(u[:, 0]), -u[:, 0]], -1)
    rows_y = np.stack([np.zeros_like(u[:, 1]), np.ones_like(u[:, 1]), -u[:, 1]], -1)
    a = np.concatenate([rows_x, rows_y]) * np.sqrt(np.concatenate([weights, weights]))[:, None]
    b = np.concatenate([u[:, 0] * rotated[:, 2] - rotated[:, 0], u[:, 1] * rotated[:, 2] - rotated[:, 1]])
    b = b * np.sqrt(np.concatenate([weights, weights]))
    return np.linalg.lstsq(a, b, rcond=None)[0]


# --------------------------------------------------------------------------- the fit


def _load_images(images, names) -> tuple[list[np.ndarray], list[str]]:
    if isinstance(images, (str, os.PathLike, np.ndarray)) or not hasattr(images, "__len__"):
        images = [images]
    images = list(images)
    if not 1 <= len(images) <= MAX_IMAGES:
        raise ValueError(f"fit_head takes 1 to {MAX_IMAGES} images of one person, got {len(images)}")
    if names is None:
        names = [
            Path(im).name if isinstance(im, (str, os.PathLike)) else f"image {i + 1}"
            for i, im in enumerate(images)
        ]
    if len(names) != len(images):
        raise ValueError(f"got {len(names)} names for {len(images)} images")
    return [read_image(im) for im in images], list(names)


def fit_head(
    images,
    resolution: int = 256,
    num_identity: int = DEFAULT_NUM_IDENTITY,
    names: list[str] | None = None,
    iterations: int = ITERATIONS,
) -> HeadFit:
    """Fit one ICT identity to 1-4 photos of one person (see the module docstring).

    images: a list of uint8 HWC RGB arrays, paths or PIL images (one such item also works).
    names: per image, used in messages (default: file names, or "image 1", ...).
    Raises :class:`~flexavatar.errors.InvalidInputError` for unreadable files, photos without
    a face or with a face too small.
    """
    arrays, names = _load_images(images, names)
    detections = [detect_face(image, name) for image, name in zip(arrays, names, strict=True)]
    crops = [crop_head(image, det, resolution) for image, det in zip(arrays, detections, strict=True)]
    return fit_crops(crops, detections, names, num_identity=num_identity, iterations=iterations)


@contextlib.contextmanager
def torch_threads(count: int):
    """Temporarily limit torch's intra-op threads: for tiny ops (the fit's: a few thousand
    numbers), where waking a thread pool costs more than it saves, and on a shared 2-vCPU
    machine the pool's spinning threads fight other work (measured: 2-10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_crops(
    crops: list[HeadCrop],
    detections: list[FaceDetection],
    names: list[str],
    num_identity: int = DEFAULT_NUM_IDENTITY,
    iterations: int = ITERATIONS,
) -> HeadFit:
    """The optimisation part of :func:`fit_head`, on already detected and cropped images."""
    with torch_threads(1):
        return _fit_crops(crops, detections, names, num_identity, iterations)


def _fit_crops(crops, detections, names, num_identity, iterations) -> HeadFit:
    corr = load_correspondence()
    resolution = crops[0].resolution
    num_images = len(crops)
    centre = resolution / 2.0
    # Only landmarks with weight > 0 enter the optimisation.
    active = np.flatnonzero(corr.weights > 0)
    model = _LandmarkModel(num_identity, active)
    weights_np = corr.weights[active].astype(np.float64)
    weights = torch.from_numpy(weights_np)
    targets = torch.from_numpy(np.stack([c.landmarks[active] for c in crops]).astype(np.float64))  # [N,L',2]
    expression_init = torch.from_numpy(np.stack([d.expression for d in detections]).astype(np.float64))

    focal_init = focal_from_fov(DEFAULT_CROP_FOV_DEG, resolution)
    neutral_points = model(torch.zeros(num_identity, dtype=torch.float64), expression_init).numpy()
    rotation_init = np.stack([mediapipe_to_head_pose(d.transform, corr)[0] for d in detections])
    translation_init = np.stack(
        [
            _translation_for_rotation(
                neutral_points[n], targets[n].numpy(), weights_np, rotation_init[n], focal_init, centre
            )
            for n in range(num_images)
        ]
    )

    identity = torch.zeros(num_identity, dtype=torch.float64, requires_grad=True)
    expressions = expression_init.clone().requires_grad_(True)
    delta_rotation = torch.zeros(num_images, 3, dtype=torch.float64, requires_grad=True)  # R = exp(d) R0
    translation = torch.from_numpy(translation_init).requires_grad_(True)
    log_focal = torch.tensor(math.log(focal_init), dtype=torch.float64, requires_grad=True)
    rotation0 = torch.from_numpy(rotation_init)

    optimiser = torch.optim.Adam(
        [
            {"params": [identity], "lr": 0.05},
            {"params": [expressions], "lr": 0.02},
            {"params": [delta_rotation], "lr": 0.01},
            {"params": [translation], "lr": 0.003},
            {"params": [log_focal], "lr": 0.01},
        ]
    )
    weight_sum = weights.sum() * num_images

    def residuals() -> torch.Tensor:
        points = model(identity, expressions)
        rotation = axis_angle_to_matrix_torch(delta_rotation) @ rotation0
        projected = _project(points, rotation, translation, torch.exp(log_focal), centre)
        return (projected - targets).norm(dim=-1)  # [N,L] pixels

    for _ in range(iterations):
        optimiser.zero_grad(set_to_none=True)
        r = residuals() / resolution
        robust = (r * r) / (r * r + SIGMA * SIGMA)  # Geman-McClure
        data = (robust * weights).sum() / weight_sum
        prior = (
            LAMBDA_IDENTITY * (identity * identity).sum()
            + LAMBDA_EXPRESSION * ((expressions - expression_init) ** 2).sum() / num_images
            + LAMBDA_FOCAL * (log_focal - math.log(focal_init)) ** 2
        )
        (data + prior).backward()
        optimiser.step()
        with torch.no_grad():
            expressions.clamp_(0.0, 1.0)

    with torch.no_grad():
        error_px = residuals()
        face = torch.from_numpy(weights_np >= 1.0)
        residual_px = error_px[:, face].mean(1).to(torch.float32)
        rotation = (axis_angle_to_matrix_torch(delta_rotation) @ rotation0).numpy()
    focal = float(torch.exp(log_focal.detach()))
    cameras = []
    for n in range(num_images):
        viewmat = torch.eye(4, dtype=torch.float32)
        viewmat[:3, :3] = torch.from_numpy(rotation[n]).to(torch.float32)
        viewmat[:3, 3] = translation[n].detach().to(torch.float32)
        K = torch.tensor([[focal, 0.0, centre], [0.0, focal, centre], [0.0, 0.0, 1.0]], dtype=torch.float32)
        cameras.append(Camera(viewmat, K, resolution, resolution))

    warnings = [w for d in detections for w in d.warnings]
    for name, err in zip(names, residual_px.tolist(), strict=True):
        if err > POOR_FIT_FRACTION * resolution:
            warnings.append(f"the head model fits {name} poorly ({err:.1f} px mean landmark error)")
    return HeadFit(
        identity=identity.detach().to(torch.float32),
        expressions=expressions.detach().to(torch.float32),
        rotations=torch.from_numpy(matrix_to_axis_angle(rotation)).to(torch.float32),
        translations=translation.detach().to(torch.float32),
        cameras=cameras,
        crops=crops,
        detections=detections,
        residual_px=residual_px,
        focal_px=focal,
        resolution=resolution,
        names=list(names),
        landmark_weights=corr.weights.copy(),
        warnings=warnings,
    )

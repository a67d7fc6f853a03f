"""Driver head pose -> cameras: the head is fixed in canonical space, so the driver's motion
moves the camera (:func:`driving_cameras`). Rotation follows the driver; translation and depth
(apparent size) are damped and bounded so the head stays framed. Expressions are
:mod:`flexavatar.motion`'s.
"""

from __future__ import annotations

import numpy as np
import torch

from flexavatar.camera import Camera
from flexavatar.model import Avatar
from flexavatar.motion import MotionCalibration
from flexavatar.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from flexavatar.tracking.correspondence import load_correspondence

#: Fraction of the driver's translation / depth change the avatar follows by default.
TRANSLATION_FOLLOW = 0.3
#: Bounds on the head's motion in the output: in-plane shift of its centre (fraction of the
#: frame side) and change of its distance (fraction: ~ the change of its apparent size).
MAX_SHIFT_FRACTION = 0.1
MAX_DEPTH_FRACTION = 0.1
#: The face (its MediaPipe landmarks: brows to chin, cheek to cheek) stays at least this fraction
#: of the frame side from every border (:func:`fit_face_in_frame`): Image_with_alpha.png's photo
#: is cropped with the beard at its bottom edge, and driven by a clip that pitches down, its chin
#: left the frame on 7 of 239 frames.
FACE_MARGIN_FRACTION = 0.03


def driving_cameras(
    avatar: Avatar,
    head_centre: np.ndarray,
    rotations: np.ndarray,
    translations: np.ndarray,
    relative: bool,
    resolution: int,
    follow_translation: bool = False,
    rotation_bias: np.ndarray | None = None,
    calibration: MotionCalibration | None = None,
    face_points: np.ndarray | None = None,
) -> list[Camera]:
    """Cameras that show the avatar with the driving video's head motion.

    head_centre [3] m (canonical). rotations [T,3] axis-angle, translations [T,3] m: the
    driver's head pose in its camera (OpenCV). relative=True applies the rotation since frame
    0 on top of the avatar's source pose; False copies the driver's rotation. The head
    centre's motion since frame 0 (rescaled to the source's distance) is followed by
    :data:`TRANSLATION_FOLLOW` (1 with ``follow_translation``), then bounded to
    :data:`MAX_SHIFT_FRACTION` of the frame in-plane and :data:`MAX_DEPTH_FRACTION` in depth.
    rotation_bias [T,3] axis-angle (radians, camera frame): the apparent rotation the avatar's
    expressions will add (reenact passes :func:`~flexavatar.closed_loop.closed_loop_expressions`'s;
    or :func:`~flexavatar.closed_loop.measured_pose_bias`, :func:`~flexavatar.motion.expression_pose_bias`),
    undone here. calibration: its :attr:`~MotionCalibration.turn_gain` (how much of a head turn the
    tracker sees on an avatar) is undone on the relative rotation and on the bias (relative motion
    only for the rotation). face_points [T,P,3] m (canonical; :func:`face_landmark_points` of the
    frames' expressions): the clip is framed once so that they stay inside the frame on every frame
    (:func:`fit_face_in_frame`).
    """
    source = avatar.source_camera
    viewmat = source.viewmat.double().cpu().numpy()
    source_rot, source_t = viewmat[:3, :3], viewmat[:3, 3]
    centre_cam = source_rot @ head_centre + source_t  # the head centre in the source camera
    drive_rot = axis_angle_to_matrix(np.asarray(rotations, np.float64))  # [T,3,3]
    drive_centre = drive_rot @ head_centre + translations  # [T,3]
    depth_ratio = centre_cam[2] / max(drive_centre[0, 2], 1e-6)
    follow = 1.0 if follow_translation else TRANSLATION_FOLLOW
    motion = (drive_centre - drive_centre[0]) * depth_ratio * follow
    focal = float(source.K[0, 0])
    max_shift = MAX_SHIFT_FRACTION * source.width * centre_cam[2] / focal  # metres at the head's depth
    motion[:, :2] = np.clip(motion[:, :2], -max_shift, max_shift)
    motion[:, 2] = np.clip(motion[:, 2], -MAX_DEPTH_FRACTION * centre_cam[2], MAX_DEPTH_FRACTION * centre_cam[2])
    turn = drive_rot @ drive_rot[0].T  # [T,3,3] the driver's rotation since frame 0, camera frame
    if calibration is not None:
        turn = axis_angle_to_matrix(calibration.undo_turn_gain(matrix_to_axis_angle(turn)))
    new_rot = turn @ source_rot if relative else drive_rot
    if rotation_bias is not None:  # a commanded turn shows as gain x itself
        bias = np.asarray(rotation_bias, np.float64)
        # the turn commanded is -bias: its direction picks the gain (per-direction gains)
        bias = -calibration.undo_turn_gain(-bias) if calibration is not None else bias
        new_rot = axis_angle_to_matrix(-bias) @ new_rot
    new_centre = centre_cam + motion
    K = source.K.clone().double()
    K[:2] *= resolution / source.width
    view = np.tile(np.eye(4), (len(new_rot), 1, 1))
    view[:, :3, :3] = new_rot
    view[:, :3, 3] = new_centre - new_rot @ head_centre
    if face_points is not None:
        K = torch.from_numpy(fit_face_in_frame(view, K.numpy(), face_points, resolution))
    views = torch.from_numpy(view).float()
    return [Camera(v, K.float(), resolution, resolution) for v in views]


def face_landmark_points(head, identity: torch.Tensor, expressions: np.ndarray) -> np.ndarray:
    """[T,478,3] m canonical: the ICT head's points under MediaPipe's 478 landmarks
    (:func:`~flexavatar.tracking.correspondence.load_correspondence`) with ``identity`` [K] and
    each of ``expressions`` [T,57] (an open jaw lowers the chin by up to 2 cm)."""
    ids, bary = load_correspondence().vertex_ids_and_bary(head.triangles.cpu().numpy())  # [478,3] each
    columns = (torch.from_numpy(ids.reshape(-1))[:, None] * 3 + torch.arange(3)).reshape(-1).to(head.device)
    identity = identity.reshape(1, -1).to(head.neutral)
    rest = head.neutral.reshape(-1)[columns] + identity @ head.identity_basis[: identity.shape[1], columns]
    codes = torch.as_tensor(np.asarray(expressions, np.float32)).to(head.neutral)
    corners = (rest + codes @ head.expression_basis[:, columns]).reshape(len(codes), *ids.shape, 3).double().cpu().numpy()
    return np.einsum("tlkc,lk->tlc", corners, bary)


def fit_face_in_frame(views: np.ndarray, K: np.ndarray, face_points: np.ndarray, resolution: int,
                      margin: float = FACE_MARGIN_FRACTION) -> np.ndarray:  # fmt: skip
    """[3,3] intrinsics ``K`` (pixels of a ``resolution`` square frame) moved, and zoomed out if
    need be, so that ``face_points`` [T,P,3] (canonical m) seen by ``views`` [T,4,4] stay at least
    ``margin`` of the side inside the frame on every frame. One change for the whole clip: the
    framing does not move on its own. Unchanged where the face already stays inside."""
    K = np.asarray(K, np.float64).copy()
    cam = np.einsum("tij,tpj->tpi", views[:, :3, :3], face_points) + views[:, None, :3, 3]  # [T,P,3]
    pixels = cam[..., :2] / np.maximum(cam[..., 2:], 1e-6) * K[[0, 1], [0, 1]] + K[:2, 2]  # [T,P,2]
    low, high = pixels.reshape(-1, 2).min(0), pixels.reshape(-1, 2).max(0)  # [2] the clip's face box
    inner = resolution * (1.0 - 2.0 * margin)
    scale = min(1.0, inner / max((high - low).max(), 1e-6))
    if scale < 1.0:  # the face's sweep is wider than the frame: zoom out about the principal point
        K[:2, :2] *= scale
        low, high = K[:2, 2] + scale * (low - K[:2, 2]), K[:2, 2] + scale * (high - K[:2, 2])
    lo_bound, hi_bound = margin * resolution, resolution - margin * resolution
    shift = np.maximum(lo_bound - low, 0.0) - np.maximum(high - hi_bound, 0.0)  # [2] px, 0 where inside
    K[:2, 2] += shift
    return K

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

#: Fraction of the driver's translation / depth change the avatar follows by default.
TRANSLATION_FOLLOW = 0.3
#: Bounds on the head's motion in the output: in-plane shift of its centre (fraction of the
#: frame side) and change of its distance (fraction: ~ the change of its apparent size).
MAX_SHIFT_FRACTION = 0.1
MAX_DEPTH_FRACTION = 0.1


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
    only for the rotation).
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
    views = torch.from_numpy(view).float()
    return [Camera(v, K.float(), resolution, resolution) for v in views]

"""Face tracking and head fitting: MediaPipe landmarker + segmenter, head crops, the
MediaPipe -> ICT landmark correspondence, ICT fitting to 1-4 photos, video tracking.

Plain functions on plain data (uint8 HWC RGB images, numpy / torch arrays):

* :func:`detect_face` -> :class:`FaceDetection` (landmarks, blendshapes, ICT expression,
  MediaPipe transform, person mask)
* :func:`crop_head` -> :class:`HeadCrop` (square head crop, mask, landmarks in crop pixels)
* :func:`fit_head` -> :class:`HeadFit` (shared ICT identity, per-image expression + camera)
* :func:`different_people_warnings` -> messages when 2-4 photos seem to show different people
* :func:`track_video` -> :class:`VideoTrack` (per-frame expression, head pose, crop box)
* :func:`load_correspondence` -> :class:`LandmarkCorrespondence` (MediaPipe -> ICT surface)

Conventions: head space is ICT's (metres, +y up, +z out of the face, +x subject's left);
poses are of the head in OpenCV camera axes (x_cam = R x_head + t, +z forward, +y down).
"""

from flexavatar.tracking.correspondence import LandmarkCorrespondence, load_correspondence
from flexavatar.tracking.crop import (
    BACKGROUND_RGB,
    CROP_SIDE_CM,
    HeadCrop,
    crop_box_from_landmarks,
    crop_boxes_from_landmarks,
    crop_head,
    warp_crop,
)
from flexavatar.tracking.detect import MIN_FACE_PX, FaceDetection, close_models, detect_face
from flexavatar.tracking.filters import OneEuroFilter, smooth_sequence
from flexavatar.tracking.fit import DEFAULT_NUM_IDENTITY, HeadFit, fit_crops, fit_head, project_landmarks
from flexavatar.tracking.identity import different_people_warnings
from flexavatar.tracking.pose import mediapipe_focal_px, mediapipe_to_head_pose
from flexavatar.tracking.video_track import VideoTrack, track_video

__all__ = [
    "BACKGROUND_RGB",
    "CROP_SIDE_CM",
    "DEFAULT_NUM_IDENTITY",
    "MIN_FACE_PX",
    "FaceDetection",
    "HeadCrop",
    "HeadFit",
    "LandmarkCorrespondence",
    "OneEuroFilter",
    "VideoTrack",
    "close_models",
    "crop_box_from_landmarks",
    "crop_boxes_from_landmarks",
    "crop_head",
    "detect_face",
    "different_people_warnings",
    "fit_crops",
    "fit_head",
    "load_correspondence",
    "mediapipe_focal_px",
    "mediapipe_to_head_pose",
    "project_landmarks",
    "smooth_sequence",
    "track_video",
    "warp_crop",
]

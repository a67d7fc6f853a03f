"""Face detection on photos: MediaPipe FaceLandmarker (478 landmarks, 52 blendshapes, pose)
plus the selfie-segmentation person mask.

The MediaPipe task objects load once per process (:func:`image_models`) and are closed at
interpreter exit through :mod:`atexit` (their ``__del__`` can raise during shutdown). Video
tracking makes its own VIDEO-mode landmarker per call with :func:`video_landmarker`.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from flexavatar import assets
from flexavatar.errors import InvalidInputError
from flexavatar.head.blendshapes import MEDIAPIPE_BLENDSHAPE_NAMES, mediapipe_to_ict

#: A face narrower than this (landmark box, source pixels) is refused: too little detail to fit.
MIN_FACE_PX = 48
#: Faces looked for: in a photo the largest is used (the others give a warning); in a video, see
#: :func:`video_landmarker` and :func:`~flexavatar.tracking.video_track.followed_face`.
MAX_FACES = 5
#: The person mask is computed at most at this size (long side) and resized up: it is coarse anyway.
MASK_MAX_SIDE = 512
#: With several faces, a pixel of the person mask belongs to the face nearest to it, distances in
#: face widths (:func:`own_person_mask`); the handover between two faces ramps over this many.
MASK_HANDOVER_WIDTHS = 0.15


@dataclass
class FaceDetection:
    """One face found in one image (the largest, when there are several).

    landmarks: [478,3] float32; x, y in image pixels, z in pixels-ish (MediaPipe's relative
        depth times the image width; smaller = closer to the camera).
    blendshapes: [52] float32 MediaPipe scores in MediaPipe order (incl. ``_neutral``).
    expression: [57] float32 ICT weights (:func:`flexavatar.head.blendshapes.mediapipe_to_ict`).
    transform: [4,4] float32 MediaPipe facial transformation matrix: canonical face mesh (cm)
        -> MediaPipe metric camera space (cm, OpenGL axes: camera looks down -z, y up); see
        :mod:`flexavatar.tracking.pose` for the conversion to OpenCV metres.
    person_mask: [H,W] float32 in [0,1], 1 = person (selfie segmentation; with several faces, only
        the part nearest this one, :func:`own_person_mask`).
    face_box: (x0, y0, x1, y1) float, image pixels, box of the 478 landmarks.
    image_size: (height, width) of the image the detection refers to.
    num_faces: how many faces MediaPipe found.
    warnings: messages for the user (e.g. several faces).
    name: the file name used in messages.
    """

    landmarks: np.ndarray
    blendshapes: np.ndarray
    expression: np.ndarray
    transform: np.ndarray
    person_mask: np.ndarray
    face_box: tuple[float, float, float, float]
    image_size: tuple[int, int]
    num_faces: int = 1
    warnings: list[str] = field(default_factory=list)
    name: str = "image"

    @property
    def face_width(self) -> float:
        return float(self.face_box[2] - self.face_box[0])


# --------------------------------------------------------------------------- MediaPipe models


def _base_options(asset_name: str):
    from mediapipe.tasks.python import BaseOptions

    return BaseOptions(model_asset_path=str(assets.resolve(asset_name)))


def create_landmarker(video: bool = False, num_faces: int = MAX_FACES):
    """A new FaceLandmarker (IMAGE or VIDEO mode) with blendshapes and transform matrices on.

    The caller owns it and must ``.close()`` it.
    """
    from mediapipe.tasks.python import vision

    options = vision.FaceLandmarkerOptions(
        base_options=_base_options("face_landmarker.task"),
        running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
        num_faces=num_faces,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    return vision.FaceLandmarker.create_from_options(options)


def create_segmenter():
    """A new IMAGE-mode selfie segmenter (confidence mask only); the caller closes it."""
    from mediapipe.tasks.python import vision

    options = vision.ImageSegmenterOptions(
        base_options=_base_options("selfie_segmentation.tflite"),
        running_mode=vision.RunningMode.IMAGE,
        output_confidence_masks=True,
        output_category_mask=False,
    )
    return vision.ImageSegmenter.create_from_options(options)


class ImageModels:
    """The per-process IMAGE-mode landmarker + segmenter; calls are serialised by a lock
    (MediaPipe graphs are not re-entrant)."""

    def __init__(self):
        self.landmarker = create_landmarker(video=False)
        self.segmenter = create_segmenter()
        self.lock = threading.Lock()

    def close(self) -> None:
        for task in (self.landmarker, self.segmenter):
            close_task(task)


def close_task(task) -> None:
    """Close a MediaPipe task object; never raises (also during interpreter shutdown)."""
    try:
        task.close()
    except Exception:  # noqa: BLE001 - closing must never raise
        # The task's executor is gone already (late shutdown): drop the handle so that its
        # ``__del__`` does not try again and print a traceback.
        if hasattr(task, "_handle"):
            task._handle = None


def _register_exit_hook(function) -> None:
    """Run ``function`` at interpreter exit *before* concurrent.futures shuts its executors
    down (MediaPipe dispatches ``close`` through one); plain :mod:`atexit` runs too late."""
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(function)
            return
    except RuntimeError:  # already shutting down
        pass
    atexit.register(function)


_IMAGE_MODELS: ImageModels | None = None
_IMAGE_MODELS_LOCK = threading.Lock()


def image_models() -> ImageModels:
    """The cached IMAGE-mode models (loaded on first use, closed at exit)."""
    global _IMAGE_MODELS
    with _IMAGE_MODELS_LOCK:
        if _IMAGE_MODELS is None:
            _IMAGE_MODELS = ImageModels()
            _register_exit_hook(close_models)
        return _IMAGE_MODELS


def close_models() -> None:
    """Close the cached IMAGE-mode models now (they reload on next use)."""
    global _IMAGE_MODELS
    with _IMAGE_MODELS_LOCK:
        if _IMAGE_MODELS is not None:
            _IMAGE_MODELS.close()
            _IMAGE_MODELS = None


@contextmanager
def video_landmarker() -> Iterator[object]:
    """A fresh VIDEO-mode landmarker for one video, looking for up to :data:`MAX_FACES` faces;
    closed on exit of the block.

    Several faces, even in a one-person video, for two reasons. With one face, MediaPipe passes
    the landmarks through its own causal One Euro filter and computes the blendshapes from the
    filtered landmarks: that lags and flattens fast, small movements (examples/driving.mp4,
    against each frame read on its own: jawOpen r 0.93, eyeBlinkLeft 0.89, mouthSmileLeft 0.64),
    and tracking smooths with a zero-phase filter of its own. And while fewer faces are tracked
    than asked for, the detector runs on every frame, so a frame where it finds the face reads
    exactly as that frame read on its own; where it misses (small or turned faces), the face is
    still carried over from the previous frame. ~1 ms a frame slower on 2 cores."""
    landmarker = create_landmarker(video=True, num_faces=MAX_FACES)
    try:
        yield landmarker
    finally:
        close_task(landmarker)


def mp_image(image: np.ndarray):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))


# --------------------------------------------------------------------------- result parsing


def landmarks_to_pixels(face_landmarks, width: int, height: int) -> np.ndarray:
    """MediaPipe normalised landmarks -> [478,3] float32 (x, y px; z * width)."""
    raw = np.array([(p.x, p.y, p.z) for p in face_landmarks], dtype=np.float32)
    return raw * np.array([width, height, width], dtype=np.float32)


def blendshape_scores(categories) -> np.ndarray:
    """[52] float32 scores in MediaPipe order (looked up by name, robust to ordering)."""
    by_name = {c.category_name: c.score for c in categories}
    return np.array([by_name.get(n, 0.0) for n in MEDIAPIPE_BLENDSHAPE_NAMES], dtype=np.float32)


def landmark_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = landmarks[:, :2].min(0)
    x1, y1 = landmarks[:, :2].max(0)
    return float(x0), float(y0), float(x1), float(y1)


def person_mask(image: np.ndarray, segmenter=None) -> np.ndarray:
    """[H,W] float32 person probability of a uint8 RGB image (computed at <= 512 px, resized)."""
    import cv2

    height, width = image.shape[:2]
    scale = min(1.0, MASK_MAX_SIDE / max(height, width))
    small = (
        image
        if scale == 1.0
        else cv2.resize(
            image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
    )
    if segmenter is None:
        models = image_models()
        with models.lock:
            result = models.segmenter.segment(mp_image(small))
    else:
        result = segmenter.segment(mp_image(small))
    mask = np.array(result.confidence_masks[0].numpy_view(), dtype=np.float32).reshape(small.shape[:2])
    if scale != 1.0:
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(mask, 0.0, 1.0)


def own_person_mask(mask: np.ndarray, boxes: list[tuple[float, float, float, float]], own: int) -> np.ndarray:
    """[H,W] float32 the part of a person mask [H,W] that belongs to face ``own`` of ``boxes``
    (landmark boxes, image pixels): selfie segmentation finds every person, and in a group photo the
    neighbours' heads touch the subject's and join the avatar's hair. Each pixel goes to the face
    whose centre is nearest in units of that face's width (a small face in the background claims a
    small region, the subject's long hair stays its own), with a linear handover of
    :data:`MASK_HANDOVER_WIDTHS`. Faces the detector misses are not cut out."""
    if len(boxes) < 2:
        return mask
    height, width = mask.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)

    def widths_away(box) -> np.ndarray:  # [H,W] distance to the box centre in box widths
        x0, y0, x1, y1 = box
        return np.hypot(cols - (x0 + x1) / 2, rows - (y0 + y1) / 2) / max(x1 - x0, 1.0)

    mine = widths_away(boxes[own])
    nearest_other = np.full_like(mine, np.inf)
    for i, box in enumerate(boxes):  # over the other faces (at most MAX_FACES); a running minimum
        if i != own:
            np.minimum(nearest_other, widths_away(box), out=nearest_other)
    keep = np.clip(0.5 + (nearest_other - mine) / MASK_HANDOVER_WIDTHS, 0.0, 1.0)
    return (mask * keep).astype(np.float32)


def _check_image_array(image: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(
            f"{name}: expected a uint8 numpy image, got {type(image).__name__} "
            f"{getattr(image, 'dtype', '')}; use flexavatar.images.read_image for files"
        )
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)  # grayscale: MediaPipe wants RGB
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{name}: expected an HxWx3 RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def detect_face(image: np.ndarray, name: str = "image", with_mask: bool = True) -> FaceDetection:
    """Detect the (largest) face of a uint8 HWC RGB image.

    Raises :class:`InvalidInputError` when no face is found or the face is narrower than
    :data:`MIN_FACE_PX`. ``with_mask=False`` skips segmentation (``person_mask`` is all ones).
    """
    image = _check_image_array(image, name)
    height, width = image.shape[:2]
    models = image_models()
    with models.lock:
        result = models.landmarker.detect(mp_image(image))
    num_faces = len(result.face_landmarks)
    if num_faces == 0:
        raise InvalidInputError(
            f"No face found in {name}. Upload a clear, frontal-ish photo of one person "
            "(face visible, well lit, not too small in the frame)."
        )
    all_landmarks = [landmarks_to_pixels(face, width, height) for face in result.face_landmarks]
    boxes = [landmark_box(face) for face in all_landmarks]
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    best = int(np.argmax(areas))
    landmarks, box = all_landmarks[best], boxes[best]
    warnings: list[str] = []
    if num_faces > 1:
        warnings.append(f"{num_faces} faces found in {name}; using the largest")
    face_width = box[2] - box[0]
    if face_width < MIN_FACE_PX:
        raise InvalidInputError(
            f"The face in {name} is too small ({face_width:.0f} px wide; at least {MIN_FACE_PX} px "
            "needed). Use a closer or higher-resolution photo where the face fills more of the frame."
        )
    blendshapes = blendshape_scores(result.face_blendshapes[best])
    mask = own_person_mask(person_mask(image), boxes, best) if with_mask else np.ones((height, width), np.float32)
    return FaceDetection(
        landmarks=landmarks,
        blendshapes=blendshapes,
        expression=mediapipe_to_ict(blendshapes),
        transform=np.asarray(result.facial_transformation_matrixes[best], dtype=np.float32).reshape(4, 4),
        person_mask=mask,
        face_box=box,
        image_size=(height, width),
        num_faces=num_faces,
        warnings=warnings,
        name=name,
    )

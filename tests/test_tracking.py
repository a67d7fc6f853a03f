"""Face tracking and head fitting on the real media in ../shared/media."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flexavatar.errors import InvalidInputError
from flexavatar.eval.wholehead import fit_photo
from flexavatar.head.blendshapes import EXPRESSION_INDEX, MEDIAPIPE_BLENDSHAPE_NAMES, NUM_EXPRESSIONS
from flexavatar.images import read_image
from flexavatar.rotations import rotation_angle_deg
from flexavatar.tracking import (
    MIN_FACE_PX,
    crop_head,
    detect_face,
    fit_head,
    load_correspondence,
    project_landmarks,
    track_video,
)
from flexavatar.tracking import correspondence as correspondence_module
from flexavatar.tracking.crop import seen_or_below
from flexavatar.tracking.filters import OneEuroFilter, smooth_sequence
from flexavatar.tracking.pose import mediapipe_focal_px, mediapipe_to_head_pose
from flexavatar.tracking.video_track import drop_short_runs, fill_gaps

JAW, SMILE_L, SMILE_R = (EXPRESSION_INDEX[n] for n in ("jawOpen", "mouthSmile_L", "mouthSmile_R"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def astronaut(shared_media):
    return read_image(shared_media / "astronaut.png")


@pytest.fixture(scope="module")
def astronaut_detection(astronaut):
    return detect_face(astronaut, "astronaut.png")


@pytest.fixture(scope="module")
def astronaut_fit(shared_media):
    return fit_head([shared_media / "astronaut.png"])


@pytest.fixture(scope="module")
def pair_fit(shared_media):
    return fit_head([shared_media / "0-f1-su-ph.jpg", shared_media / "0-f15-hao-ph.jpg"])


@pytest.fixture(scope="module")
def talking_track(shared_media):
    return track_video(shared_media / "single_face.mp4")


# --------------------------------------------------------------------------- detection


def test_detect_astronaut(astronaut, astronaut_detection):
    det = astronaut_detection
    assert det.landmarks.shape == (478, 3) and det.landmarks.dtype == np.float32
    assert det.blendshapes.shape == (52,) and det.expression.shape == (NUM_EXPRESSIONS,)
    assert det.transform.shape == (4, 4)
    assert det.person_mask.shape == astronaut.shape[:2] and det.person_mask.dtype == np.float32
    assert det.num_faces == 1 and det.warnings == []
    # She smiles broadly (MediaPipe scores ~0.9 each side).
    smile = [
        det.blendshapes[MEDIAPIPE_BLENDSHAPE_NAMES.index(n)] for n in ("mouthSmileLeft", "mouthSmileRight")
    ]
    assert min(smile) > 0.6
    assert det.expression[SMILE_L] > 0.6 and det.expression[SMILE_R] > 0.6
    x0, y0, x1, y1 = det.face_box
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    assert det.person_mask[cy, cx] > 0.9 and det.person_mask[5, 5] < 0.1  # face vs top-left backdrop
    # Landmark 468 (iris centre) belongs to the subject's right eye (next to 33/133).
    right_eye = det.landmarks[[33, 133], :2].mean(0)
    left_eye = det.landmarks[[263, 362], :2].mean(0)
    iris = det.landmarks[468, :2]
    assert np.linalg.norm(iris - right_eye) < np.linalg.norm(iris - left_eye)


def test_multi_face_takes_largest_with_warning(shared_media):
    image = read_image(shared_media / "multi_face.jpg")
    det = detect_face(image, "multi_face.jpg")
    assert det.num_faces >= 2
    assert any("faces found in multi_face.jpg; using the largest" in w for w in det.warnings)
    # The chosen face is the biggest of all faces MediaPipe reports: at least the typical size.
    assert det.face_width > 100


def test_a_group_photo_keeps_only_its_subjects_part_of_the_person_mask(shared_media):
    # Selfie segmentation finds every person; the neighbours' heads touch the subject's and used to
    # join the avatar's hair. multi_face.jpg: MediaPipe finds two of its five faces.
    from flexavatar.tracking.detect import (
        create_landmarker,
        landmark_box,
        landmarks_to_pixels,
        mp_image,
        person_mask,
    )

    image = read_image(shared_media / "multi_face.jpg")
    det = detect_face(image, "multi_face.jpg")
    landmarker = create_landmarker()
    try:
        faces = landmarker.detect(mp_image(image)).face_landmarks
    finally:
        landmarker.close()
    boxes = [landmark_box(landmarks_to_pixels(f, image.shape[1], image.shape[0])) for f in faces]
    other = next(b for b in boxes if abs(b[0] - det.face_box[0]) > 1.0)  # the face not chosen
    whole = person_mask(image)

    def at_centre(mask, box):
        return float(mask[int((box[1] + box[3]) / 2), int((box[0] + box[2]) / 2)])

    assert at_centre(whole, other) > 0.9  # the neighbour is a person...
    assert at_centre(det.person_mask, other) < 0.05  # ...but not this avatar's
    assert at_centre(det.person_mask, det.face_box) > 0.9
    # the subject's own hair and shoulders stay: nothing is cut on the far side from the neighbour
    far_side = slice(int(det.face_box[2]), image.shape[1])
    np.testing.assert_array_equal(det.person_mask[:, far_side], whole[:, far_side])


def test_own_person_mask_hands_over_halfway_between_faces_of_equal_size():
    from flexavatar.tracking.detect import own_person_mask

    mask = np.ones((50, 200), np.float32)
    boxes = [(20.0, 10.0, 60.0, 40.0), (140.0, 10.0, 180.0, 40.0)]  # centres x 40 and 160, width 40
    own = own_person_mask(mask, boxes, 0)
    assert own[25, 40] == 1.0 and own[25, 160] == 0.0 and own[25, 100] == pytest.approx(0.5, abs=0.02)
    np.testing.assert_array_equal(own + own_person_mask(mask, boxes, 1), mask)  # a partition
    assert own_person_mask(mask, boxes[:1], 0) is mask  # one face: untouched


def test_bw_picture_gives_clear_error(shared_media):
    # Decision: MediaPipe finds no face in this grainy, shouting 3/4-profile war photo (not even on a
    # crop around the head), so it is refused with the "no face" message rather than fitted badly.
    with pytest.raises(InvalidInputError, match="No face found in BWPictureHuman.jpg"):
        fit_head([shared_media / "BWPictureHuman.jpg"])


def test_small_face_is_refused(astronaut):
    import cv2

    small = cv2.resize(astronaut, (224, 224), interpolation=cv2.INTER_AREA)  # face ~39 px wide
    with pytest.raises(InvalidInputError, match=r"face in tiny\.png is too small \(\d+ px"):
        detect_face(small, "tiny.png")
    assert MIN_FACE_PX == 48


def test_no_face_photo_error_names_file(astronaut):
    blank = np.full((300, 300, 3), 128, np.uint8)
    with pytest.raises(InvalidInputError, match="No face found in photo2.jpg"):
        detect_face(blank, "photo2.jpg")


def test_text_file_renamed_png(tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not an image")
    with pytest.raises(InvalidInputError, match="holiday.png"):
        fit_head([fake])


# --------------------------------------------------------------------------- crop


def test_crop_framing_consistent_across_resolutions(astronaut, astronaut_detection):
    crop256 = crop_head(astronaut, astronaut_detection, 256)
    crop512 = crop_head(astronaut, astronaut_detection, 512)
    assert crop256.image.shape == (256, 256, 3) and crop512.image.shape == (512, 512, 3)
    assert crop256.mask.shape == (256, 256) and crop256.masked.dtype == np.uint8
    assert crop256.crop_box == pytest.approx(crop512.crop_box)
    np.testing.assert_allclose(crop512.landmarks, 2 * crop256.landmarks, atol=1e-3)
    # The whole landmark set sits inside the crop with a margin on every side.
    for crop in (crop256, crop512):
        r = crop.resolution
        assert crop.landmarks.min() > 0.05 * r and crop.landmarks.max() < 0.95 * r
        # the affine maps source landmarks onto crop landmarks
        mapped = (
            astronaut_detection.landmarks[:, :2] @ crop.source_to_crop[:, :2].T + crop.source_to_crop[:, 2]
        )
        np.testing.assert_allclose(mapped, crop.landmarks, atol=1e-3)
    # Background turns white where the mask says so (top corners are backdrop).
    assert (crop256.masked[:8, :8] > 240).all()
    # The 512 crop downsampled looks like the 256 crop (same framing, not just same box).
    import cv2

    down = cv2.resize(crop512.image, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(down - crop256.image.astype(np.float32)).mean() < 6.0


def test_the_person_mask_is_cut_beside_and_above_the_photo():
    """A crop past the photo's edges: the mask is 0 beside and above the photo (nothing was seen
    there), and goes on below it (the body does)."""
    weight = seen_or_below((100, 80), (-20.0, -10.0, 120.0), 120)  # 1 px per source px
    assert weight[:10].max() == 0.0 and weight[:, :20].max() == 0.0 and weight[:, 100:].max() == 0.0
    assert weight[10:, 20:100].min() == 1.0  # the photo, and the 10 rows below it


def test_a_portrait_cut_through_the_crown_grows_no_tower(shipped_model, shared_media):
    """astronaut.png with its top 45 rows cut off: the avatar's hair ends near the photo's top
    edge. With the mask's edge replicated upwards, half the crop above the photo was hair (0.49)."""
    photo = read_image(str(shared_media / "astronaut.png"))[45:, 60:452]
    fit = fit_photo(shipped_model, photo)
    crop = fit_head([photo], resolution=shipped_model.config.crop_size).crops[0]
    with torch.no_grad():
        avatar = shipped_model.encode(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"])
        _, alpha = shipped_model.render(avatar, fit["cameras"], fit["expressions"])
    above = seen_or_below(photo.shape[:2], crop.crop_box, crop.resolution)[:, crop.resolution // 2] == 0
    assert above.sum() > 20  # the crop reaches well above the photo
    assert (alpha[0, above, :, 0] > 0.5).float().mean() < 0.15


# --------------------------------------------------------------------------- correspondence


def test_correspondence_geometry():
    corr = load_correspondence()
    assert corr.triangles.shape == (478,) and corr.barycentric.shape == (478, 3)
    np.testing.assert_allclose(corr.barycentric.sum(1), 1.0, atol=1e-5)
    assert (corr.barycentric >= -1e-6).all()
    face = ~corr.silhouette[:468]
    residual = corr.residual_mm[:468][face]
    # The aligned MediaPipe canonical face lies on the ICT surface within a few millimetres.
    assert np.median(residual) < 1.5
    assert (residual < 5.0).mean() > 0.95
    assert (corr.weights[:468][face] == 1.0).mean() > 0.95
    assert 0.9 < corr.scale < 1.1  # both meshes are in cm, similar sizes
    assert corr.weights[468] > 0 and corr.weights[473] > 0 and corr.weights[469:473].max() == 0


def test_correspondence_cache_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXAVATAR_CACHE", str(tmp_path))
    correspondence_module.load_correspondence.cache_clear()
    try:
        first = correspondence_module.load_correspondence()
        files = list(tmp_path.glob("mediapipe_to_ict_*.npz"))
        assert len(files) == 1
        mtime = files[0].stat().st_mtime_ns
        correspondence_module.load_correspondence.cache_clear()

        def no_compute(*args, **kwargs):
            raise AssertionError("the cached correspondence should have been reused")

        monkeypatch.setattr(correspondence_module, "compute_correspondence", no_compute)
        second = correspondence_module.load_correspondence()
        assert files[0].stat().st_mtime_ns == mtime
        np.testing.assert_array_equal(first.triangles, second.triangles)
    finally:
        correspondence_module.load_correspondence.cache_clear()


# --------------------------------------------------------------------------- pose conversion


def test_mediapipe_pose_reprojects(astronaut, astronaut_detection):
    """The converted MediaPipe pose puts the mean ICT face onto the detected landmarks."""
    from flexavatar.tracking.fit import model_landmarks

    corr = load_correspondence()
    rotation, translation = mediapipe_to_head_pose(astronaut_detection.transform, corr)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-6)
    # Frontal head: its +z (out of the face) points back at the camera (OpenCV -z), +y is up (-y).
    assert rotation[2, 2] < -0.9 and rotation[1, 1] < -0.9
    points = model_landmarks(torch.zeros(1), torch.zeros(1, NUM_EXPRESSIONS))[0].numpy()
    cam = points @ rotation.T + translation
    height, width = astronaut.shape[:2]
    uv = mediapipe_focal_px(height) * cam[:, :2] / cam[:, 2:] + [width / 2, height / 2]
    face = corr.weights == 1
    error = np.linalg.norm(uv - astronaut_detection.landmarks[:, :2], axis=1)[face].mean()
    assert error < 0.08 * astronaut_detection.face_width


# --------------------------------------------------------------------------- fitting


def test_fit_astronaut(astronaut_fit):
    fit = astronaut_fit
    resolution = fit.resolution
    assert fit.identity.shape == (32,) and fit.expressions.shape == (1, NUM_EXPRESSIONS)
    assert fit.expressions.min() >= 0 and fit.expressions.max() <= 1
    assert float(fit.residual_px[0]) < 0.02 * resolution
    projected = project_landmarks(fit, 0)
    face = fit.landmark_weights == 1
    error = np.linalg.norm(projected - fit.crops[0].landmarks, axis=1)[face].mean()
    assert error < 0.02 * resolution
    assert fit.expressions[0, SMILE_L] > 0.5 and fit.expressions[0, SMILE_R] > 0.5
    camera = fit.cameras[0]
    assert camera.width == camera.height == resolution
    assert camera.K[0, 2] == pytest.approx(resolution / 2)
    # The camera looks at the face from the front: camera centre in front of the face (+z), ~1 m.
    position = camera.position
    assert position[2] > 0.3 and abs(float(position[0])) < 0.3


def test_fit_two_photos_one_identity(pair_fit):
    fit = pair_fit
    assert fit.num_images == 2 and len(fit.cameras) == 2 and len(fit.crops) == 2
    assert fit.identity.ndim == 1
    surprise, happy = fit.expressions
    assert surprise[JAW] > happy[JAW] + 0.1
    assert happy[SMILE_L] > surprise[SMILE_L] + 0.3 and happy[SMILE_R] > surprise[SMILE_R] + 0.3
    assert (fit.residual_px < 0.02 * fit.resolution).all()
    assert fit.names == ["0-f1-su-ph.jpg", "0-f15-hao-ph.jpg"]


# --------------------------------------------------------------------------- video


def test_track_talking_video(talking_track):
    track = talking_track
    assert track.frame_count == 72 and track.num_source_frames == 72 and not track.truncated
    assert track.has_face.all() and track.has_face.shape == (72,)
    for name, shape in (
        ("expressions", (72, NUM_EXPRESSIONS)),
        ("rotations", (72, 3)),
        ("translations", (72, 3)),
        ("confidence", (72,)),
        ("crop_boxes", (72, 3)),
    ):
        assert getattr(track, name).shape == shape, name
    # He talks and smiles: MediaPipe's raw jawOpen moves between ~0.003 and ~0.075 (std 0.021);
    # the smoothed track keeps that motion (std ~0.019), and the smile comes and goes.
    jaw = track.expressions[:, JAW]
    assert jaw.std() > 0.015 and jaw.max() - jaw.min() > 0.03
    assert track.expressions[:, SMILE_L].std() > 0.2
    # Smooth pose: no frame-to-frame rotation jump over 5 degrees, no axis-angle wrap jumps.
    rotations = track.rotation_matrices()
    assert rotation_angle_deg(rotations[1:], rotations[:-1]).max() < 5.0
    assert np.abs(np.diff(track.rotations, axis=0)).max() < 0.1
    # Head in front of the camera, facing it, tens of centimetres away.
    assert (track.translations[:, 2] > 0.2).all() and (track.translations[:, 2] < 1.5).all()
    assert (rotations[:, 2, 2] < -0.8).all()
    assert track.confidence.min() > 0.5
    assert np.abs(np.diff(track.crop_boxes[:, 2])).max() < 0.05 * track.crop_boxes[:, 2].mean()


def test_track_face_then_no_face(shared_media):
    calls = []
    track = track_video(shared_media / "face_noface.mov", progress=lambda stage, f: calls.append((stage, f)))
    assert track.has_face.shape == (track.frame_count,) and track.frame_count == track.num_source_frames
    assert track.has_face[:30].all() and not track.has_face[-30:].any()
    assert (track.confidence[~track.has_face] == 0).all()
    assert np.isfinite(track.expressions).all() and np.isfinite(track.rotations).all()
    # Missing frames after the face hold its last value: the tail is constant.
    assert np.ptp(track.translations[-30:], axis=0).max() < 1e-5
    assert np.ptp(track.expressions[-30:], axis=0).max() < 1e-5
    assert any("no face in" in w for w in track.warnings)
    assert calls and calls[-1] == ("tracking", 1.0) and all(0.0 <= f <= 1.0 for _, f in calls)


def test_tracking_has_no_lag_a_clip_played_backwards_reads_the_same(tmp_path):
    """Every frame is read on its own: examples/driving.mp4 played backwards tracks as its own
    track played backwards. MediaPipe's VIDEO mode with one face (its causal landmark filter) fails this: jawOpen
    r 0.86, eyeBlinks 0.78 / 0.71, mean differences 0.025-0.030 (0.007 each frame read on its own)."""
    from flexavatar.video import iter_frames, probe_video, write_mp4

    clip = Path(__file__).resolve().parents[1] / "examples" / "driving.mp4"
    frames = list(iter_frames(clip))
    fps = probe_video(clip).fps
    forward = track_video(write_mp4(tmp_path / "forward.mp4", frames, fps), smoothing=0.0).blendshapes
    backward = track_video(write_mp4(tmp_path / "backward.mp4", frames[::-1], fps), smoothing=0.0).blendshapes[::-1]
    for name in ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight"):
        column = MEDIAPIPE_BLENDSHAPE_NAMES.index(name)
        a, b = forward[:, column], backward[:, column]
        assert np.std(a) > 0.05, name  # the clip moves it
        assert np.corrcoef(a, b)[0, 1] > 0.97 and np.abs(a - b).mean() < 0.015, name


def test_followed_face_is_the_largest_then_the_nearest():
    from flexavatar.tracking.video_track import followed_face

    small, large = (300.0, 100.0, 360.0, 170.0), (0.0, 0.0, 200.0, 240.0)
    assert followed_face([small, large], None, 1, 30.0) == 1
    assert followed_face([small, (20.0, 10.0, 220.0, 250.0)], large, 1, 30.0) == 1
    # once followed, a face stays followed when a larger one is in the frame too
    assert followed_face([(0.0, 0.0, 400.0, 400.0), (305.0, 100.0, 365.0, 170.0)], small, 1, 30.0) == 1
    # the followed face missed and someone else found: no face this frame...
    assert followed_face([large], small, 1, 30.0) is None
    # ...unless the followed face has been gone for more than a second
    assert followed_face([large], small, 31, 30.0) == 0


def test_video_with_several_faces_follows_one(tmp_path, shared_media):
    """multi_face.jpg (five people) drifting 4 px a frame: the detector finds a different subset of
    the faces in each frame; the track follows one person throughout (never hopping to whoever was
    found) and says that there were several."""
    from flexavatar.video import write_mp4

    photo = read_image(shared_media / "multi_face.jpg")
    height, width = photo.shape[0] - photo.shape[0] % 2, photo.shape[1] - 40
    frames = [np.ascontiguousarray(photo[:height, shift : shift + width]) for shift in range(40, 0, -4)]
    track = track_video(write_mp4(tmp_path / "crowd.mp4", frames, 10.0), smoothing=0.0)
    assert any("faces in a frame" in w for w in track.warnings), track.warnings
    found = np.flatnonzero(track.has_face)
    assert len(found) >= 3
    boxes = track.face_boxes[found]
    widths = boxes[:, 2] - boxes[:, 0]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 - np.stack([4.0 * found, 0 * found], 1)  # undo the drift
    assert np.linalg.norm(centres - centres[0], axis=1).max() < 0.3 * widths.min(), centres


def test_track_max_frames(shared_media):
    track = track_video(shared_media / "single_face.mp4", max_frames=10, smoothing=0.0)
    assert track.frame_count == 10 and track.num_source_frames == 72 and track.truncated
    assert track.expressions.shape == (10, NUM_EXPRESSIONS)


def test_video_without_face(shared_media):
    with pytest.raises(InvalidInputError, match="No face found in no_face.mp4"):
        track_video(shared_media / "no_face.mp4")


# --------------------------------------------------------------------------- filters and gaps


def test_one_euro_filter():
    rng = np.random.default_rng(1)
    t = np.arange(300) / 30.0
    clean = np.stack([np.sin(2 * np.pi * 0.3 * t), np.full_like(t, 0.4)], 1)
    noisy = clean + rng.normal(scale=0.05, size=clean.shape)
    smooth = smooth_sequence(noisy, 30.0, 0.5)
    assert np.abs(smooth - clean).mean() < 0.6 * np.abs(noisy - clean).mean()
    np.testing.assert_array_equal(smooth_sequence(noisy, 30.0, 0.0), noisy)  # 0 = off
    constant = OneEuroFilter(30.0).filter(np.full((20, 3), 2.5))
    np.testing.assert_allclose(constant, 2.5)
    with pytest.raises(ValueError):
        smooth_sequence(noisy, 30.0, 1.5)


def test_smoothing_keeps_the_ends_of_a_motion():
    """A head already turning in frame 0: the smoothed frame 0 stays where the head was (motion is
    taken relative to frame 0), not pulled towards where it went (it was, by ~1 degree in 20)."""
    turn = np.linspace(0.0, 1.0, 48)[:, None]  # 20 degrees in 2 s at 24 fps, in units of 20 degrees
    smooth = smooth_sequence(turn, 24.0, 0.5)
    assert abs(smooth[0, 0] - turn[0, 0]) < 0.005 and abs(smooth[-1, 0] - turn[-1, 0]) < 0.005
    np.testing.assert_allclose(smooth, turn, atol=0.005)
    short = smooth_sequence(np.array([[0.0], [1.0]]), 24.0, 0.5)  # shorter than the padding
    assert short.shape == (2, 1) and short[0, 0] < 0.1 < 0.9 < short[1, 0]


def test_fill_gaps_and_short_runs():
    values = np.array([[0.0], [1.0], [0.0], [3.0], [0.0], [0.0]])
    valid = np.array([False, True, False, True, False, False])
    np.testing.assert_allclose(fill_gaps(values, valid)[:, 0], [1, 1, 2, 3, 3, 3])
    flags = np.array([1, 1, 1, 1, 0, 0, 1, 0, 1, 1, 0], bool)
    np.testing.assert_array_equal(drop_short_runs(flags, 3), [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(drop_short_runs(np.array([0, 1, 0], bool), 3), [0, 1, 0])

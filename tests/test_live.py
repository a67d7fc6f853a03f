"""Live driving (flexavatar.live), expression-control stills and identity blending, without
gradio: the shipped checkpoint, a real photo, a real clip decoded frame by frame."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flexavatar import pipeline, space_live
from flexavatar.camera import focal_from_fov, orbit_camera
from flexavatar.errors import InvalidInputError
from flexavatar.head.blendshapes import EXPRESSION_INDEX, MEDIAPIPE_BLENDSHAPE_NAMES, NUM_EXPRESSIONS
from flexavatar.live import TARGET_FPS, LiveSession
from flexavatar.model.modules import Deformer
from flexavatar.motion import driving_expressions, identity_calibration
from flexavatar.options import DEFAULTS
from flexavatar.rotations import rotation_angle_deg
from flexavatar.tracking import detect_face
from flexavatar.tracking.correspondence import load_correspondence
from flexavatar.tracking.detect import blendshape_scores, close_task, create_landmarker, mp_image
from flexavatar.tracking.pose import mediapipe_to_head_pose
from flexavatar.video import iter_frames

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def astronaut_avatar(shipped_model, shared_media):
    return pipeline.create_avatar([shared_media / "astronaut.png"], model=shipped_model)


@pytest.fixture(scope="session")
def driving_frames(shared_media):
    """single_face.mp4: 72 frames (640x360, 30 fps) with a smile and blinks."""
    return list(iter_frames(shared_media / "single_face.mp4"))


def mediapipe_scores(images) -> np.ndarray:
    """[T,52] MediaPipe blendshape scores of a frame sequence (VIDEO mode; NaN without a face)."""
    landmarker = create_landmarker(video=True, num_faces=1)
    try:
        rows = []
        for index, image in enumerate(images):
            result = landmarker.detect_for_video(mp_image(image), 1 + index * 33)
            found = bool(result.face_blendshapes)
            rows.append(blendshape_scores(result.face_blendshapes[0]) if found else np.full(52, np.nan, np.float32))
        return np.stack(rows)
    finally:
        close_task(landmarker)


def channel(scores: np.ndarray, *names: str) -> np.ndarray:
    return scores[:, [MEDIAPIPE_BLENDSHAPE_NAMES.index(n) for n in names]].mean(1)


@pytest.mark.parametrize("downsample", [1, 2])
@pytest.mark.parametrize("data_source", [0, 1])
def test_deformer_constant_path_equals_the_diffusers_forward(downsample, data_source):
    """The live path's UNet (constants once per avatar, lean forward in channels_last) against
    diffusers' forward, with random weights: any checkpoint of this architecture, not only ours."""
    torch.manual_seed(downsample * 10 + data_source)
    deformer = Deformer(32, 8, 14, (8, 16, 32), downsample, 2).eval()
    with torch.no_grad():
        for parameter in deformer.parameters():  # conv_out starts at zero: a zero output proves nothing
            parameter.add_(torch.randn_like(parameter) * 0.2)
        identity, neutral = torch.randn(1, 8, 32, 32), torch.randn(1, 3, 32, 32) * 0.1
        offsets = torch.randn(3, 3, 32, 32) * 0.01
        reference = deformer(identity, offsets, neutral, data_source)
        lean = deformer.forward_constant(offsets, deformer.constants(identity, neutral, data_source))
    assert reference.abs().max() > 1.0
    assert (lean - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_deform_cache_renders_what_the_reference_path_renders(shipped_model, astronaut_avatar):
    """prepare_deform + cache (what LiveSession uses) against the uncached deform, shipped weights."""
    model, avatar = shipped_model, astronaut_avatar
    expressions = torch.rand(3, NUM_EXPRESSIONS, generator=torch.Generator().manual_seed(0)) * 0.6
    camera = orbit_camera(15, -5, pipeline.TURNTABLE_DISTANCE_M, model.head.head_centre().cpu(),
                          focal_from_fov(pipeline.TURNTABLE_FOV_DEG, 128), 128, 128)  # fmt: skip
    with torch.no_grad():
        cache = model.prepare_deform(avatar)
        dynamic, cached_dynamic = model.dynamic_maps(avatar, expressions), model.dynamic_maps(avatar, expressions, cache=cache)
        gaussians, cached = model.deform(avatar, expressions), model.deform(avatar, expressions, cache=cache)
        rgb = model.render(avatar, [camera], expressions[:1])[0]
        cached_rgb = model.render(avatar, [camera], expressions[:1], cache=cache)[0]
    # measured: dynamic 1.7e-5 of a max of 29 (6e-7 relative), means 1.5e-8 m, rgb <= 1.1e-4 (no 8-bit change)
    corners = cache.texel_vertices
    mesh = model.mesh(avatar.identity, expressions[:1])[:, corners]
    assert (model.texel_mesh(cache, expressions[:1])[:, corners] - mesh).abs().max() <= 1e-7  # measured: 0 (bit-identical)
    assert dynamic.abs().max() > 1.0
    assert (cached_dynamic - dynamic).abs().max() <= 1e-5 * dynamic.abs().max()
    for name, tolerance in {"means": 1e-6, "scales": 1e-6, "opacities": 1e-5, "colors": 1e-5, "quats": 1e-5}.items():
        assert (cached[name] - gaussians[name]).abs().max() <= tolerance, name
    # a change in the last bits can tip a Gaussian's alpha over the 1/255 cut at a rare pixel
    difference = (cached_rgb - rgb).abs()
    assert (difference > 1e-4).float().mean() <= 1e-3 and difference.max() <= 1 / 255
    with pytest.raises(ValueError, match="inference"):
        model.deform(avatar, expressions, cache=cache)  # gradients on: the cache would cut them
    with torch.no_grad(), pytest.raises(ValueError, match="data_source"):
        model.deform(avatar, expressions, data_source=1, cache=cache)


def test_stills_reuse_the_avatars_deform_cache(shipped_model, astronaut_avatar):
    """The Space's slider stills prepare an avatar once (space_live.deform_cache), same image."""
    first = space_live.deform_cache(shipped_model, astronaut_avatar)
    assert space_live.deform_cache(shipped_model, astronaut_avatar) is first
    assert space_live.deform_cache(shipped_model, replace(astronaut_avatar)) is not first  # another avatar object
    controls = {"smile": 0.8, "blink": 0.3}
    cached = pipeline.render_still(astronaut_avatar, controls, yaw_deg=10, model=shipped_model, deform_cache=first)
    plain = pipeline.render_still(astronaut_avatar, controls, yaw_deg=10, model=shipped_model)
    assert np.abs(cached.astype(int) - plain.astype(int)).max() <= 1


def test_live_stream_follows_the_driver(shipped_model, astronaut_avatar, driving_frames):
    """Frames in order at 30 frames/s timestamps: every frame comes back, in order, and the
    re-tracked avatar blinks and smiles with the driver (Pearson r >= 0.8)."""
    with LiveSession(astronaut_avatar, model=shipped_model) as session:
        session.process(driving_frames[0], 0)  # first call compiles / warms up
        session.reset_neutral()
        results = []
        start = time.perf_counter()
        for index, frame in enumerate(driving_frames):
            results.append(session.process(frame, 1000 + round(index * 1000 / 30)))
        seconds = time.perf_counter() - start
    assert all(r is not None for r in results), "no frame may be dropped when frames come one at a time"
    stamps = [r.timestamp_ms for r in results]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(r.has_face and r.image.shape == (256, 256, 3) and r.image.dtype == np.uint8 for r in results)
    fps = len(results) / seconds
    latency = np.median([r.latency_ms for r in results])
    print(f"live: {fps:.1f} frames/s, median latency {latency:.0f} ms (load {os.getloadavg()[0]:.1f})")
    driver, avatar = mediapipe_scores(driving_frames), mediapipe_scores([r.image for r in results])
    assert not np.isnan(avatar).any(), "the rendered avatar must be trackable in every frame"
    for names in (("eyeBlinkLeft", "eyeBlinkRight"), ("mouthSmileLeft", "mouthSmileRight")):
        r = np.corrcoef(channel(driver, *names), channel(avatar, *names))[0, 1]
        assert r >= 0.8, f"{names}: re-tracked avatar vs driver r = {r:.2f}"
    # 2 shared cores: the speed target holds on a quiet machine (bench live measures it there).
    if os.getloadavg()[0] < 1.0:
        assert fps >= TARGET_FPS, f"{fps:.1f} frames/s on a quiet machine"


def test_live_head_turn_retracks_at_the_drivers_size(shipped_model, astronaut_avatar):
    """examples/driving.mp4 turns its head ~11° between frames 0 and 53. MediaPipe sees an avatar's
    turns smaller than they are; with the calibration's turn gain the live avatar's turn re-tracks
    closer to the driver's than without it (identity calibration: no gain). Measured: driver 9.9°,
    error 0.95° calibrated, 1.85° plain."""
    indices = (0, 53)
    frames = [frame for index, frame in enumerate(iter_frames(EXAMPLES / "driving.mp4", max_frames=54)) if index in indices]

    def turn(images) -> float:
        poses = [mediapipe_to_head_pose(detect_face(im, with_mask=False).transform, load_correspondence())[0]
                 for im in images]  # fmt: skip
        return float(rotation_angle_deg(poses[0], poses[1]))

    driver = turn(frames)
    error = {}
    for name, calibration in (("plain", identity_calibration()), ("calibrated", None)):
        with LiveSession(astronaut_avatar, model=shipped_model, smoothing=0.0, calibration=calibration) as session:
            # the clip's own timestamps: MediaPipe's VIDEO mode smooths landmarks over time
            images = [session.process(frame, 1 + round(index * 1000 / 30)).image for index, frame in zip(indices, frames)]
        error[name] = abs(turn(images) - driver)
    assert driver > 8 and error["calibrated"] < error["plain"], (driver, error)


def test_reset_neutral_returns_to_rest(shipped_model, astronaut_avatar, driving_frames):
    """After reset_neutral the next face is the neutral: the avatar shows its rest expression."""
    with LiveSession(astronaut_avatar, model=shipped_model) as session:
        # the avatar's rest as the motion module defines it: a driver that does not move (neutralised
        # by default, as in reenact), with the calibration fitted to this avatar (its rest eyes)
        rest = driving_expressions(astronaut_avatar, np.zeros((2, NUM_EXPRESSIONS)), True, DEFAULTS.neutralise,
                                   calibration=session.calibration)[-1]  # fmt: skip
        session.process(driving_frames[0], 0)
        moved = session.process(driving_frames[40], 40)  # the driver smiles here
        assert not np.allclose(moved.expression, rest, atol=0.05)
        session.reset_neutral()
        again = session.process(driving_frames[41], 41)
        np.testing.assert_allclose(again.expression, rest, atol=1e-5)


def test_stale_and_overlapping_frames_are_dropped(shipped_model, astronaut_avatar, driving_frames):
    with LiveSession(astronaut_avatar, model=shipped_model) as session:
        assert session.process(driving_frames[0], 100) is not None
        assert session.process(driving_frames[1], 100) is None  # not newer
        assert session.process(driving_frames[1], 50) is None  # older
        busy = threading.Event()
        with session.lock:  # another frame of this session is being processed
            thread = threading.Thread(target=lambda: busy.set() if session.process(driving_frames[2], 200) is None else None)
            start = time.perf_counter()
            thread.start()
            thread.join(5)
            assert busy.is_set() and time.perf_counter() - start < 1.0, "a busy session must drop, not wait"
        assert session.process(driving_frames[3], 300) is not None
        assert session.stats()["dropped"] == 3


def test_no_face_holds_and_bad_frames_are_refused(shipped_model, astronaut_avatar):
    threads = torch.get_num_threads()
    with LiveSession(astronaut_avatar, model=shipped_model) as session:
        blank = session.process(np.full((240, 320, 3), 128, np.uint8), 0)
        assert not blank.has_face and blank.image.std() > 5  # the avatar at rest, not an empty frame
        assert torch.get_num_threads() == threads  # the deform's one thread is given back
        for bad in (None, np.zeros((240, 320, 3), np.float32), np.zeros((4, 4, 3), np.uint8)):
            with pytest.raises(InvalidInputError, match="camera"):
                session.process(bad, 10)


def test_render_still_controls_are_seen_by_the_tracker(shipped_model, astronaut_avatar):
    still = pipeline.render_still(astronaut_avatar, {}, model=shipped_model)
    assert still.shape == (256, 256, 3) and still.dtype == np.uint8
    images = [pipeline.render_still(astronaut_avatar, {name: value, "blink": blink}, model=shipped_model)
              for name, value, blink in (("smile", 0.0, 0.0), ("smile", 1.0, 0.0), ("smile", 0.0, 1.0))]  # fmt: skip
    scores = np.stack([channel(mediapipe_scores([im]), *names)[0] for im in images
                       for names in [("mouthSmileLeft", "mouthSmileRight"), ("eyeBlinkLeft", "eyeBlinkRight")]])  # fmt: skip
    smile, blink = scores.reshape(3, 2).T
    assert smile[1] > smile[0] + 0.1, f"smile slider: {smile}"
    assert blink[2] > blink[0] + 0.1, f"blink slider: {blink}"
    turned = pipeline.render_still(astronaut_avatar, {}, yaw_deg=40, model=shipped_model)
    assert np.abs(turned.astype(int) - still.astype(int)).mean() > 5
    with pytest.raises(InvalidInputError, match="unknown expression control"):
        pipeline.render_still(astronaut_avatar, {"grin": 1}, model=shipped_model)
    with pytest.raises(InvalidInputError, match="yaw"):
        pipeline.render_still(astronaut_avatar, {}, yaw_deg=120, model=shipped_model)


def test_render_still_gaze_controls_turn_the_eyes_as_the_tracker_sees_them(shipped_model, astronaut_avatar):
    """The gaze sliders ([-1,1]) turn both eyes the same way: to the avatar's own left, to its right,
    down; MediaPipe re-tracks each look on its own in the named direction."""
    looks = {"left": {"gaze_left": 1.0}, "right": {"gaze_left": -1.0}, "down": {"gaze_up": -1.0}}
    scores = {name: mediapipe_scores([pipeline.render_still(astronaut_avatar, controls, model=shipped_model)])
              for name, controls in {"ahead": {}, **looks}.items()}  # fmt: skip
    rise = {name: lambda *names, s=s: float(channel(s, *names)[0] - channel(scores["ahead"], *names)[0])
            for name, s in scores.items()}  # fmt: skip
    # to its own left: the left eye looks out, the right one in
    assert rise["left"]("eyeLookOutLeft", "eyeLookInRight") > 0.2, scores["left"]
    assert rise["right"]("eyeLookInLeft", "eyeLookOutRight") > 0.2, scores["right"]
    assert rise["down"]("eyeLookDownLeft", "eyeLookDownRight") > 0.2, scores["down"]
    assert rise["left"]("eyeLookInLeft", "eyeLookOutRight") < 0.05 and rise["right"]("eyeLookOutLeft", "eyeLookInRight") < 0.05
    code = pipeline.expression_from_controls(astronaut_avatar, {"gaze_left": -0.4, "gaze_up": 2.0})
    assert code[EXPRESSION_INDEX["eyeLookIn_L"]] == pytest.approx(0.4) and code[EXPRESSION_INDEX["eyeLookOut_L"]] == 0.0
    assert code[EXPRESSION_INDEX["eyeLookUp_R"]] == 1.0 and code[EXPRESSION_INDEX["eyeLookDown_R"]] == 0.0  # clipped to [-1,1]


def test_blend_avatars(shipped_model, astronaut_avatar, shared_media):
    other = pipeline.create_avatar([shared_media / "single_face.jpg"], model=shipped_model)
    half = pipeline.blend_avatars(astronaut_avatar, other, 0.5)
    expected = 0.5 * (astronaut_avatar.static_maps + other.static_maps)
    assert np.allclose(half.static_maps.numpy(), expected.numpy(), atol=1e-6)
    ends = [pipeline.render_still(pipeline.blend_avatars(astronaut_avatar, other, t), model=shipped_model) for t in (0, 0.5, 1)]
    np.testing.assert_array_equal(ends[0], pipeline.render_still(astronaut_avatar, model=shipped_model))
    gap = np.abs(ends[0].astype(int) - ends[2].astype(int)).mean()
    assert 0.2 * gap < np.abs(ends[1].astype(int) - ends[0].astype(int)).mean() < 0.8 * gap
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        pipeline.blend_avatars(astronaut_avatar, other, 1.5)
    with pytest.raises(InvalidInputError, match="different networks"):
        pipeline.blend_avatars(astronaut_avatar, replace(other, config_name="gpu-l"), 0.5)


def test_cli_live_without_a_display_says_so(tmp_path):
    """`python -m flexavatar live` on a headless machine: a clear message, exit code 2, no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "flexavatar", "live", str(tmp_path / "me.avatar"), "--camera", "0"],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 2 and "no display" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_live_reads_the_acquired_frame_as_the_tracker_reads_the_next(shared_media, monkeypatch):
    """Live tracking (VIDEO mode): where the face is acquired, the detector's reading differs from
    the tracker's on the next frames (real clips: eyeSquint 0.22 on frame 0, 0.35 on frame 1);
    live motion is relative to that frame, so it is tracked once more: frame 0 then reads much
    closer to frame 1."""
    from flexavatar import live

    def first_step(clip) -> float:
        landmarker = create_landmarker(video=True, num_faces=1)
        try:
            scores = []
            for index, frame in enumerate(iter_frames(shared_media / clip, max_frames=2)):
                timestamp = index * 33  # a live session's clock starts at its first frame
                image = mp_image(frame)
                result = landmarker.detect_for_video(image, timestamp)
                if index == 0:
                    result, _ = live.reread_acquired(landmarker, image, result, timestamp)
                scores.append(blendshape_scores(result.face_blendshapes[0]))
        finally:
            close_task(landmarker)
        return float(np.abs(scores[0] - scores[1]).mean())

    for clip in ("single_face.mp4", "face_noface.mov"):
        settled = first_step(clip)
        monkeypatch.setattr(live, "REACQUIRE_PASSES", 0)
        detected = first_step(clip)
        monkeypatch.undo()
        assert settled < 0.8 * detected, (clip, settled, detected)

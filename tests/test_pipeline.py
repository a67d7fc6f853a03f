"""End to end: photos -> avatar -> turntable + reenactment videos, exports, CLI, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from media_checks import assert_faststart, audio_seconds, ffmpeg, ffmpeg_info

from flexavatar import pipeline
from flexavatar.errors import InvalidInputError
from flexavatar.video import iter_frames, probe_video

pytestmark = pytest.mark.slow
TURNTABLE_FRAMES = 36
JAW_OPEN = 26


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, shared_media):
    """``python -m flexavatar run`` on astronaut.png + single_face.mp4, as a user would."""
    out = tmp_path_factory.mktemp("run")
    cmd = [sys.executable, "-m", "flexavatar", "run", str(shared_media / "astronaut.png"),
           "--driving", str(shared_media / "single_face.mp4"), "--out-dir", str(out),
           "--frames", str(TURNTABLE_FRAMES)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_run_writes_browser_ready_videos(cli_run):
    turntable, reenactment = cli_run / "turntable.mp4", cli_run / "reenactment.mp4"
    info = probe_video(turntable)
    assert info.frame_count == TURNTABLE_FRAMES and info.codec == "h264"
    info = probe_video(reenactment)
    assert info.frame_count == 72 and info.fps == pytest.approx(30, abs=0.01) and info.codec == "h264"
    for path in (turntable, reenactment):
        assert "yuv420p" in ffmpeg_info(path)
        assert_faststart(path)
        assert sum(1 for _ in iter_frames(path)) == probe_video(path).frame_count


def test_cli_ply_loads_back_with_every_gaussian(cli_run, model):
    from flexavatar.export import load_ply

    means, quats, scales, opacities, colors = load_ply(cli_run / "avatar.ply")
    assert means.shape == (model.atlas.num_texels, 3)
    avatar = pipeline.read_avatar(cli_run / "avatar.avatar", model)
    assert avatar.static_maps.shape[-1] == model.config.atlas_resolution


def test_turntable_loops_and_shows_the_back(cli_run, model):
    from flexavatar.tracking import detect_face

    frames = list(iter_frames(cli_run / "turntable.mp4"))
    front, back = frames[0], frames[TURNTABLE_FRAMES // 2]
    detect_face(front, name="turntable frame 0")  # a face is found
    with pytest.raises(InvalidInputError):
        detect_face(back, name="turntable frame 180°")
    # frame N is frame 0 again: the last frame is one step (10°) before it
    step = np.abs(frames[-1].astype(float) - frames[0]).mean()
    assert step < np.abs(frames[TURNTABLE_FRAMES // 4].astype(float) - frames[0]).mean() / 2


def test_reenactment_follows_the_driver(tmp_path, shared_media, model):
    from flexavatar.tracking import track_video

    avatar = pipeline.create_avatar([shared_media / "astronaut.png"], model=model)
    video = shared_media / "single_face.mp4"
    out = pipeline.reenact(avatar, video, out_path=tmp_path / "talk.mp4", model=model, smoothing=0.3)
    frames = np.stack(list(iter_frames(out))).astype(np.float32)
    # the avatar's mouth in the output: project its mouth landmarks with the source camera
    camera = avatar.source_camera
    mouth = camera.project(model.head.vertices(avatar.identity[None])[0][model.head.landmarks_multipie68[48:68]])
    x0, y0 = (mouth.min(0).values - 6).int().tolist()
    x1, y1 = (mouth.max(0).values + 10).int().tolist()
    scale = frames.shape[1] / camera.height
    x0, y0, x1, y1 = (int(v * scale) for v in (x0, y0, x1, y1))
    change = np.abs(frames[:, y0:y1, x0:x1] - frames[0, y0:y1, x0:x1]).mean(axis=(1, 2, 3))
    jaw = track_video(video, smoothing=0.3).expressions[:, JAW_OPEN]
    r = np.corrcoef(change, np.abs(jaw - jaw[0]))[0, 1]
    assert r > 0.5, f"mouth change vs driver jawOpen correlation {r:.2f}"


def test_reenactment_keeps_the_driving_audio(tmp_path, shared_media, model):
    clip = tmp_path / "tone.mp4"
    ffmpeg("-i", str(shared_media / "single_face.mp4"), "-f", "lavfi", "-i", "sine=frequency=440:duration=10",
           "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest", str(clip))  # fmt: skip
    avatar = pipeline.create_avatar(shared_media / "astronaut.png", model=model)
    out = pipeline.reenact(avatar, clip, out_path=tmp_path / "with_audio.mp4", model=model, side_by_side=True)
    info = probe_video(out)
    assert info.has_audio
    assert audio_seconds(out) == pytest.approx(info.frame_count / info.fps, abs=0.1)
    assert info.width == 2 * info.height  # driving crop beside the avatar


def test_reenactment_is_cut_at_max_seconds(tmp_path, shared_media, model):
    avatar = pipeline.create_avatar(shared_media / "astronaut.png", model=model)
    report: dict = {}
    out = pipeline.reenact(avatar, shared_media / "single_face.mp4", max_seconds=1.0, out_path=tmp_path / "cut.mp4",
                           model=model, report=report)  # fmt: skip
    assert probe_video(out).frame_count == 30
    assert any("tracked the first 30 of 72 frames" in w for w in report["warnings"])


def test_bad_inputs_fail_clearly_and_leave_nothing(tmp_path, shared_media, model):
    text = tmp_path / "photo.png"
    text.write_text("not a picture")
    with pytest.raises(InvalidInputError, match="photo.png"):
        pipeline.create_avatar([text], model=model)
    with pytest.raises(InvalidInputError, match="at most 4"):
        pipeline.create_avatar([shared_media / "astronaut.png"] * 5, model=model)
    avatar = pipeline.create_avatar([shared_media / "astronaut.png"], model=model)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(InvalidInputError, match="empty.mp4"):
        pipeline.reenact(avatar, empty, out_path=out_dir / "a.mp4", model=model)
    with pytest.raises(InvalidInputError, match="(?i)no face"):
        pipeline.reenact(avatar, shared_media / "no_face.mp4", out_path=out_dir / "b.mp4", model=model)
    with pytest.raises(InvalidInputError, match="empty.mp4"):
        pipeline.run([shared_media / "astronaut.png"], empty, out_dir / "run", model=model)
    leftovers = [p for p in out_dir.rglob("*") if p.is_file()]
    assert leftovers == []


def test_cli_reports_bad_input_without_traceback(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "flexavatar", "create", str(text), "--out", str(tmp_path / "x.avatar")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert "notes.jpg" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.avatar").exists()


def test_ply_axes_for_splat_viewers(tmp_path, shared_media, model):
    from flexavatar.export import load_ply
    from flexavatar.rotations import quat_to_matrix

    avatar = pipeline.create_avatar(shared_media / "astronaut.png", model=model)
    head = load_ply(pipeline.export_ply(avatar, tmp_path / "head.ply", axes="head", model=model))
    view = load_ply(pipeline.export_ply(avatar, tmp_path / "view.ply", model=model))
    centre = model.head.head_centre()
    flip = torch.tensor([1.0, -1.0, -1.0])
    assert torch.allclose(view[0], (head[0] - centre) * flip, atol=1e-5)  # centred, y down, z away
    assert torch.allclose(quat_to_matrix(view[1]), torch.diag(flip) @ quat_to_matrix(head[1]), atol=1e-5)
    top = head[0][:, 1].argmax()
    assert view[0][top, 1] < 0  # the crown is up on screen (y down)

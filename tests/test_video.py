"""Tests for flexavatar.video on real media from ../shared/media (no network, ~15 s)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from media_checks import assert_faststart, audio_seconds, ffmpeg, ffmpeg_info

from flexavatar import pipeline
from flexavatar.errors import InvalidInputError
from flexavatar.mux import mux_audio
from flexavatar.video import (
    VideoWriter,
    has_audio_stream,
    iter_frames,
    probe_video,
    write_mp4,
)

# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_face(shared_media: Path) -> Path:
    return shared_media / "single_face.mp4"


@pytest.fixture(scope="module")
def frames(single_face: Path) -> list[np.ndarray]:
    return list(iter_frames(single_face))


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory, frames) -> Path:
    """single_face's 72 frames re-encoded at 30 fps, no audio."""
    return write_mp4(tmp_path_factory.mktemp("roundtrip") / "roundtrip.mp4", frames, fps=30)


@pytest.fixture(scope="module")
def sine_clip(tmp_path_factory, single_face: Path) -> Path:
    """single_face.mp4's video + a 5 s 440 Hz sine: the audio outlasts the 2.4 s video."""
    out = tmp_path_factory.mktemp("sine") / "sine_clip.mp4"
    ffmpeg(
        "-i", str(single_face), "-f", "lavfi", "-i", "sine=frequency=440:duration=5",
        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", str(out),
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def phone_clip(tmp_path_factory, frames) -> Path:
    """A phone-style clip: 6 frames of single_face stored sideways (360x640, turned clockwise)
    with a display matrix that turns them back 90 degrees counter-clockwise, as phones record."""
    out = tmp_path_factory.mktemp("phone") / "phone.mp4"
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 360, 640, "yuv420p"
        stream.set_display_rotation(90)
        for frame in frames[:6]:
            stored = np.ascontiguousarray(np.rot90(frame, -1))  # clockwise: what the sensor stored
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(stream.encode(None))
    return out


# ------------------------------------------------------------------------------------------
# probe / decode
# ------------------------------------------------------------------------------------------


def test_probe_single_face(single_face: Path):
    info = probe_video(single_face)
    assert info.fps == pytest.approx(30.0)
    assert info.frame_count == 72
    assert (info.width, info.height) == (640, 360)
    assert info.codec == "h264"
    assert info.duration_s == pytest.approx(2.4, abs=0.1)
    assert info.has_audio  # the file carries an mp3 track
    assert has_audio_stream(single_face)


def test_probe_mov_hevc(shared_media: Path):
    info = probe_video(shared_media / "face_noface.mov")
    assert (info.width, info.height) == (960, 540)
    assert info.codec == "hevc"
    assert info.frame_count > 100


def test_frame_count_matches_decoded_frames(shared_media: Path):
    # no_face.mp4 has an edit list that drops 3 leading packets: 98 packets, 95 frames shown.
    for name in ("no_face.mp4", "face_noface.mov"):
        info = probe_video(shared_media / name)
        assert info.frame_count == sum(1 for _ in iter_frames(info.path, size=64)), name


def test_iter_frames_all(single_face: Path, frames):
    assert len(frames) == 72
    assert all(f.shape == (360, 640, 3) and f.dtype == np.uint8 for f in frames)
    frames[0][0, 0] = 0  # frames are writable arrays, not views of a read-only buffer


def test_iter_frames_max_frames_and_size(shared_media: Path):
    mov = shared_media / "face_noface.mov"
    got = list(iter_frames(mov, max_frames=5))
    assert len(got) == 5 and got[0].shape == (540, 960, 3)
    assert [f.shape for f in iter_frames(mov, max_frames=2, size=(320, 180))] == [(180, 320, 3)] * 2
    assert next(iter(iter_frames(mov, max_frames=1, size=480))).shape == (270, 480, 3)
    assert list(iter_frames(mov, max_frames=0)) == []


def test_iter_frames_early_break_is_clean(single_face: Path):
    gen = iter_frames(single_face)
    first = next(gen)
    gen.close()  # closes the file; must not hang or raise
    assert first.shape == (360, 640, 3)


def test_rotation_metadata_is_applied(phone_clip: Path, frames):
    info = probe_video(phone_clip)
    assert (info.width, info.height) == (640, 360) and info.rotation_deg == 90 and info.frame_count == 6
    upright = list(iter_frames(info))
    assert len(upright) == 6 and upright[0].shape == (360, 640, 3)
    # Upright again: close to the original frame (H.264 losses only), far from a wrong turn.
    assert np.abs(upright[0].astype(np.int16) - frames[0]).mean() < 4
    assert np.abs(np.rot90(upright[0], 2).astype(np.int16) - frames[0]).mean() > 20
    # Sizes are display sizes: an int caps the long side, (w, h) is exact.
    assert next(iter_frames(phone_clip, size=320)).shape == (180, 320, 3)
    assert next(iter_frames(phone_clip, size=(100, 60))).shape == (60, 100, 3)


def test_video_info_is_passed_down(single_face: Path, tmp_path: Path, frames):
    info = probe_video(single_face)
    assert probe_video(info) is info  # a VideoInfo is not probed again
    assert len(list(iter_frames(info, max_frames=3))) == 3
    out = write_mp4(tmp_path / "info_audio.mp4", frames[:15], fps=30, audio_from=info)
    assert audio_seconds(out) == pytest.approx(0.5, abs=0.05)
    assert has_audio_stream(info) and probe_video(out).has_audio


def test_reenact_opens_the_driving_video_once_per_use(tmp_path, shared_media, untrained_model, monkeypatch):
    """One request: one probe (header + packet count), one decode for tracking, one audio read.
    Before the PyAV rewrite it ran ffmpeg on the file 6 times (4 probes, 1 decode, 1 audio mux)."""
    driving = shared_media / "single_face.mp4"
    opened = []
    real_open = av.open
    monkeypatch.setattr(
        av, "open", lambda file, *a, **k: opened.append(str(file)) or real_open(file, *a, **k)
    )
    avatar = pipeline.create_avatar(shared_media / "astronaut.png", model=untrained_model)
    opened.clear()
    out = pipeline.reenact(
        avatar, driving, max_seconds=0.3, out_path=tmp_path / "r.mp4", model=untrained_model
    )
    assert opened.count(str(driving)) == 3, opened
    assert probe_video(out).frame_count == 9 and probe_video(out).has_audio


@pytest.mark.parametrize(
    ("suffix", "codec_args"),
    [(".webm", ["-c:v", "libvpx", "-b:v", "500k"]), (".avi", ["-c:v", "mjpeg", "-q:v", "5"])],
)
def test_other_containers(tmp_path: Path, single_face: Path, suffix: str, codec_args: list[str]):
    clip = tmp_path / f"clip{suffix}"
    ffmpeg("-i", str(single_face), "-frames:v", "10", "-vf", "scale=160:90", "-an", *codec_args, str(clip))
    info = probe_video(clip)
    assert (info.width, info.height) == (160, 90)
    assert info.frame_count == 10
    got = list(iter_frames(clip))
    assert len(got) == 10 and got[0].shape == (90, 160, 3)


# ------------------------------------------------------------------------------------------
# encode
# ------------------------------------------------------------------------------------------


def test_write_mp4_roundtrip(roundtrip: Path, frames):
    info = probe_video(roundtrip)
    assert info.frame_count == 72 and info.fps == pytest.approx(30.0)
    assert (info.width, info.height) == (640, 360)
    assert not info.has_audio
    stream = next(line for line in ffmpeg_info(roundtrip).splitlines() if "Video:" in line)
    assert "h264" in stream and "yuv420p" in stream and "bt709" in stream
    assert_faststart(roundtrip)
    decoded = list(iter_frames(roundtrip))
    assert len(decoded) == 72
    # CRF 18 is near-lossless: mean absolute error of a few grey levels at most.
    err = np.abs(decoded[36].astype(np.int16) - frames[36].astype(np.int16)).mean()
    assert err < 3.0, err


def test_odd_size_frames_are_padded(tmp_path: Path):
    rng = np.random.default_rng(0)
    frame = np.repeat(np.linspace(0, 255, 101, dtype=np.uint8)[None, :, None], 75, axis=0).repeat(3, axis=2)
    frames = [np.roll(frame, i, axis=1) for i in range(8)] + [rng.integers(0, 255, (75, 101, 3), np.uint8)]
    out = write_mp4(tmp_path / "odd.mp4", frames, fps=24)
    info = probe_video(out)
    assert (info.width, info.height) == (102, 76) and info.frame_count == 9
    decoded = list(iter_frames(out))
    assert len(decoded) == 9 and decoded[0].shape == (76, 102, 3)
    # The padded column/row replicates the edge, so it matches the last real column/row.
    first = decoded[0].astype(np.int16)
    assert np.abs(first[:75, 101] - first[:75, 100]).mean() < 6
    assert_faststart(out)


def test_audio_is_muxed_and_trimmed(tmp_path: Path, frames, sine_clip: Path):
    assert audio_seconds(sine_clip) == pytest.approx(5.0, abs=0.1)  # longer than the video
    out = write_mp4(tmp_path / "with_audio.mp4", frames, fps=30, audio_from=sine_clip)
    info = probe_video(out)
    assert info.has_audio and info.frame_count == 72
    assert "Audio: aac" in ffmpeg_info(out)
    assert audio_seconds(out) == pytest.approx(72 / 30, abs=0.1)
    assert_faststart(out)  # the -c:v copy mux pass keeps +faststart


def test_audio_window_and_separate_mux(tmp_path: Path, frames, roundtrip: Path, sine_clip: Path):
    out = tmp_path / "short_audio.mp4"
    with VideoWriter(out, 30, audio_from=sine_clip, audio_offset_s=3.0, audio_duration_s=1.0) as writer:
        writer.write_many(frames[:60])
    assert audio_seconds(out) == pytest.approx(1.0, abs=0.1)
    assert probe_video(out).frame_count == 60

    muxed = mux_audio(roundtrip, sine_clip, tmp_path / "muxed.mp4")
    assert probe_video(muxed).frame_count == 72
    assert audio_seconds(muxed) == pytest.approx(2.4, abs=0.1)
    assert_faststart(muxed)


def test_audio_at_a_rate_aac_lacks_is_resampled(tmp_path: Path, frames):
    """A 1.5 s mono 37.8 kHz track (no AAC profile has that rate) -> 48 kHz AAC, cut at 1 s of video."""
    source = tmp_path / "odd_rate.mka"
    rate = 37800
    tone = (np.sin(2 * np.pi * 440 * np.arange(rate * 3 // 2) / rate) * 10000).astype(np.int16)[None]
    with av.open(str(source), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        chunk = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        chunk.sample_rate, chunk.pts = rate, 0
        container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    out = write_mp4(tmp_path / "resampled.mp4", frames[:30], fps=30, audio_from=source)
    assert "48000 Hz" in next(line for line in ffmpeg_info(out).splitlines() if "Audio:" in line)
    assert audio_seconds(out) == pytest.approx(1.0, abs=0.05)


def test_audio_from_file_without_audio_is_ignored(tmp_path: Path, frames, roundtrip: Path):
    out = write_mp4(tmp_path / "silent.mp4", frames[:10], fps=30, audio_from=roundtrip)
    assert not probe_video(out).has_audio
    with pytest.raises(InvalidInputError, match="no audio stream"):
        mux_audio(out, roundtrip, tmp_path / "x.mp4")


def test_writer_exception_leaves_nothing(tmp_path: Path, frames, sine_clip: Path):
    out_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out_dir / "partial.mp4", 30, audio_from=sine_clip) as writer:
            writer.write_many(frames[:10])
            raise RuntimeError("boom")
    assert list(out_dir.iterdir()) == []  # neither the final file nor a temporary one


def test_writer_failures_leave_nothing_and_keep_existing_file(tmp_path: Path, frames):
    existing = tmp_path / "keep.mp4"
    existing.write_bytes(b"previous result")
    with pytest.raises(ValueError, match="size of the first"):
        with VideoWriter(existing, 30) as writer:
            writer.write(frames[0])
            writer.write(frames[0][:100])  # wrong size
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(existing, [frames[0].astype(np.float32)], fps=30)
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(existing, [], fps=30)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]
    assert existing.read_bytes() == b"previous result"


# ------------------------------------------------------------------------------------------
# bad video input
# ------------------------------------------------------------------------------------------


def test_video_errors(tmp_path: Path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(InvalidInputError, match=r"'empty\.mp4' is empty"):
        probe_video(empty)
    with pytest.raises(InvalidInputError, match="empty"):
        iter_frames(empty)  # raised by the call itself, not on first next()

    with pytest.raises(InvalidInputError, match=r"'missing\.mp4' was not found"):
        probe_video(tmp_path / "missing.mp4")

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(InvalidInputError, match=r"'notes\.mp4' is not a decodable video.*upload an MP4"):
        probe_video(text)

    audio_only = tmp_path / "voice.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", str(audio_only))
    with pytest.raises(InvalidInputError, match=r"'voice\.m4a' contains no video stream"):
        probe_video(audio_only)
    assert has_audio_stream(audio_only)

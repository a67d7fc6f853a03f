"""Video I/O on PyAV (FFmpeg's libraries in-process): probe, streaming decode, H.264 encode + audio.

At the API boundary frames are ``numpy.uint8`` arrays of shape ``(H, W, 3)`` in RGB order.

* :func:`probe_video` -> :class:`VideoInfo` (fps, exact frame count, display size, duration, audio,
  codec, rotation). Probe a request's video once and pass the ``VideoInfo`` on: every function
  here that takes a video accepts a path or a ``VideoInfo`` (which then is not probed again).
* :func:`iter_frames` streams decoded frames, one in memory at a time, upright (rotation applied).
* :class:`VideoWriter` / :func:`write_mp4` encode frames as they come (libx264, yuv420p, BT.709,
  ``+faststart``) and interleave the AAC-encoded audio of another file (cut to the video's length)
  in the same pass; the result appears atomically at ``path``, never half-written.

Bad user input raises :class:`~flexavatar.errors.InvalidInputError` with a message that names the
file, says what is wrong and what to do; failures while encoding our own frames raise RuntimeError.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, Interpolation

from flexavatar.errors import InvalidInputError, require_file
from flexavatar.mux import (
    AudioTrack,
    ffmpeg_reason,
    open_input,
    open_output,
    temp_sibling,
    validate_audio_window,
)

__all__ = [
    "InvalidInputError",
    "VideoInfo",
    "VideoWriter",
    "has_audio_stream",
    "iter_frames",
    "probe_video",
    "write_mp4",
]

_VIDEO_HINT = "upload an MP4, MOV, WebM or AVI video"


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video file.

    ``width``/``height`` are the *display* size in pixels, i.e. after the rotation stored in the
    container (phone videos), which is also the size :func:`iter_frames` yields. ``frame_count`` is
    exact: the number of frames :func:`iter_frames` yields (packets counted without decoding).
    ``fps`` is the stream's average frame rate (frames per second); ``duration_s`` the container
    duration in seconds (or ``frame_count / fps`` when the container has none). ``codec`` is
    FFmpeg's decoder name (``"h264"``, ``"hevc"``, ``"vp9"``...). ``rotation_deg`` (0, 90, 180,
    270) is the counter-clockwise turn that makes stored frames upright.
    """

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int
    duration_s: float
    has_audio: bool
    codec: str
    rotation_deg: int = 0


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    """The first real video stream (cover-art pictures are "video" streams too, and skipped)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    kind = "only audio" if container.streams.audio else "no audio or video"
    raise InvalidInputError(f"video {path.name!r} contains no video stream ({kind}); {_VIDEO_HINT}.")


def _quarter_turns(rotation: float) -> int:
    """Counter-clockwise display rotation in degrees -> 0..3 quarter turns (np.rot90's k)."""
    return int(round(rotation / 90.0)) % 4


def _source_path(source: str | os.PathLike | VideoInfo, what: str = "video") -> Path:
    return source.path if isinstance(source, VideoInfo) else require_file(source, what, _VIDEO_HINT)


def probe_video(source: str | os.PathLike | VideoInfo) -> VideoInfo:
    """Describe the video at ``source`` (a ``VideoInfo`` is returned as is); see :class:`VideoInfo`.

    One pass over the container: stream information from its header, then the video packets are
    read without decoding (fast even for long videos) and those with a presentation time >= 0 are
    counted; that is exactly the number of frames :func:`iter_frames` yields, even when the
    container's frame rate or duration lie (packets before 0 are the ones an MP4/MOV edit list
    tells decoders to drop). Only the first frame is decoded, for its rotation. Raises
    :class:`InvalidInputError`: missing or empty file, not a decodable video, no video stream,
    unreadable packets, no frames.
    """
    if isinstance(source, VideoInfo):
        return source
    path = require_file(source, "video", _VIDEO_HINT)
    with open_input(path, "video", _VIDEO_HINT) as container:
        stream = _video_stream(container, path)
        frame_count, rotation = 0, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the end-of-stream marker PyAV yields last
                    continue
                frame_count += packet.pts is None or packet.pts >= 0
                if rotation is None:
                    rotation = next((frame.rotation for frame in stream.decode(packet)), None)
        except av.error.FFmpegError as e:
            raise InvalidInputError(
                f"video {path.name!r} could not be read ({ffmpeg_reason(e)}); {_VIDEO_HINT}."
            ) from None
        rate = stream.average_rate or stream.guessed_rate
        duration = container.duration / av.time_base if container.duration else None
        if not duration and stream.duration:
            duration = float(stream.duration * stream.time_base)
        has_audio = len(container.streams.audio) > 0
        codec = stream.codec_context.name
        width, height = stream.codec_context.width, stream.codec_context.height
    if frame_count <= 0:
        raise InvalidInputError(f"video {path.name!r} contains no frames; {_VIDEO_HINT}.")
    fps = float(rate) if rate else (frame_count / duration if duration else 25.0)  # 25: FFmpeg's fallback
    turns = _quarter_turns(rotation or 0.0)
    if turns % 2:
        width, height = height, width
    return VideoInfo(
        path=path,
        fps=fps,
        frame_count=frame_count,
        width=width,
        height=height,
        duration_s=float(duration or frame_count / fps),
        has_audio=has_audio,
        codec=codec,
        rotation_deg=90 * turns,
    )


def has_audio_stream(source: str | os.PathLike | VideoInfo) -> bool:
    """True when the media file has at least one audio stream (InvalidInputError when unreadable)."""
    if isinstance(source, VideoInfo):
        return source.has_audio
    path = require_file(source, "media file", _VIDEO_HINT)
    with open_input(path, "video", _VIDEO_HINT) as container:
        return len(container.streams.audio) > 0


def _target_size(src_w: int, src_h: int, size: tuple[int, int] | int | None) -> tuple[int, int]:
    """Output (w, h): ``size`` as (w, h) exactly, or an int max side (downscale only, keep aspect)."""
    if size is None:
        return src_w, src_h
    if isinstance(size, (int, np.integer)):
        if size <= 0:
            raise ValueError(f"size as max side must be positive, got {size}")
        scale = min(1.0, size / max(src_w, src_h))
        return max(1, round(src_w * scale)), max(1, round(src_h * scale))
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive (w, h), got {size}")
    return w, h


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | int | None) -> np.ndarray:
    """A decoded frame -> upright ``(H, W, 3)`` uint8 RGB at the requested display size."""
    turns = _quarter_turns(frame.rotation)
    display_w, display_h = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
    out_w, out_h = _target_size(display_w, display_h, size)
    stored_w, stored_h = (out_h, out_w) if turns % 2 else (out_w, out_h)  # resize before turning
    shrinking = stored_w * stored_h < frame.width * frame.height
    rgb = frame.to_ndarray(
        format="rgb24",
        width=stored_w,
        height=stored_h,
        interpolation=Interpolation.AREA if shrinking else Interpolation.BICUBIC,
        src_color_range=frame.color_range,  # the frame's colorspace is used by default
    )
    # rot90 is a view: the copy makes every frame a fresh, writable, contiguous array.
    return np.ascontiguousarray(np.rot90(rgb, turns) if turns else rgb)


def iter_frames(
    source: str | os.PathLike | VideoInfo,
    max_frames: int | None = None,
    size: tuple[int, int] | int | None = None,
) -> Iterator[np.ndarray]:
    """Stream the frames of a video as ``(H, W, 3)`` uint8 RGB arrays (each a fresh, writable array).

    source: a path (anything FFmpeg decodes) or a :class:`VideoInfo`. max_frames: stop after this
    many (None = all). size: None (display size), ``(w, h)`` pixels (exact), or an int: longest
    side in pixels (downscale only, aspect kept); area filter when shrinking, else bicubic.

    The file is opened by this call (InvalidInputError here, not at the first ``next``) and closed
    when the generator ends or is closed (``contextlib.closing`` makes an early stop deterministic).
    Frames come out upright (rotation metadata applied), one in memory at a time, every decoded
    frame once (no frame-rate conversion: variable-frame-rate videos yield their real frames).
    """
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    path = _source_path(source)
    container = open_input(path, "video", _VIDEO_HINT)
    try:
        stream = _video_stream(container, path)
    except BaseException:
        container.close()
        raise
    return _decode(container, stream, path, max_frames, size)


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    path: Path,
    max_frames: int | None,
    size: tuple[int, int] | int | None,
) -> Iterator[np.ndarray]:
    count = 0
    try:
        if max_frames == 0:
            return
        stream.thread_type = "AUTO"  # frame + slice threads, as the ffmpeg command line decodes
        try:
            for frame in container.decode(stream):
                rgb = _to_rgb(frame, size)
                size = (rgb.shape[1], rgb.shape[0])  # frames of a stream that changes size keep the first's
                yield rgb
                count += 1
                if max_frames is not None and count >= max_frames:
                    return
        except av.error.FFmpegError as e:
            raise InvalidInputError(
                f"video {path.name!r} could not be decoded after {count} frames ({ffmpeg_reason(e)}); {_VIDEO_HINT}."
            ) from None
    finally:
        container.close()


def _audio_source(audio_from: str | os.PathLike | VideoInfo) -> Path | None:
    """The file to take audio from, or None when it has no audio stream."""
    if isinstance(audio_from, VideoInfo):
        return audio_from.path if audio_from.has_audio else None
    path = require_file(audio_from, "audio source", _VIDEO_HINT)
    return path if has_audio_stream(path) else None


def _as_frame(frame: Any) -> np.ndarray:
    """Validate an ``(H, W, 3)`` uint8 RGB frame; returns it C-contiguous."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            f"frames must be uint8 arrays of shape (H, W, 3) RGB, got dtype={arr.dtype} shape={arr.shape}"
        )
    return np.ascontiguousarray(arr)


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Pad odd H/W by one pixel, replicating the last row/column (yuv420p needs even sizes).

    Padding (rather than cropping) keeps every rendered pixel; the replicated edge is invisible.
    """
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


class VideoWriter:
    """Stream ``(H, W, 3)`` uint8 RGB frames into an H.264 MP4 that plays in browsers.

    Encoding: libx264, yuv420p, BT.709 (converted and tagged, so browsers show the right colours),
    constant frame rate ``fps``, ``movflags=+faststart`` (``moov`` before ``mdat``: playback starts
    while downloading). Frames are encoded as they are written, so memory does not grow with the
    video length. All frames must have the size of the first; odd widths/heights are padded by one
    pixel (edge replicated) because yuv420p needs even sizes.

    Audio: if ``audio_from`` (a path or :class:`VideoInfo`) has an audio stream, its first audio
    stream (from ``audio_offset_s`` seconds on, for at most ``audio_duration_s`` seconds) is
    encoded to AAC and interleaved with the video as it is written, and cut at the video's
    duration (``frame_count / fps``). A file without audio is silently ignored (the output then
    has no audio); a missing one raises at construction.

    Atomicity: output goes to a hidden temporary file in the destination folder, renamed onto
    ``path`` only on success. If the ``with`` block raises, or encoding fails, the temporary file
    is deleted and the exception propagates: no partial output is ever left behind (an existing
    file at ``path`` is untouched unless the write succeeds).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        audio_from: str | os.PathLike | VideoInfo | None = None,
        audio_offset_s: float = 0.0,
        audio_duration_s: float | None = None,
        quality: int = 18,
        preset: str = "fast",
    ) -> None:
        """path: ``.mp4`` (``.mov`` gets the mov muxer), folders created. fps > 0 (e.g. 29.97).
        quality: x264 CRF 0 (lossless) .. 51; 18 is visually lossless. preset: x264 speed/size
        trade-off ("ultrafast" .. "veryslow"). Audio arguments: see the class docstring."""
        if not (isinstance(fps, (int, float, np.number)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if not 0 <= int(quality) <= 51:
            raise ValueError(f"quality is an x264 CRF in 0..51, got {quality}")
        validate_audio_window(audio_offset_s, audio_duration_s)
        self.path = Path(path)
        self.fps = float(fps)
        self.quality = int(quality)
        self.preset = preset
        self.audio_offset_s = float(audio_offset_s)
        self.audio_duration_s = audio_duration_s
        self._audio_source = _audio_source(audio_from) if audio_from is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_sibling(self.path, "partial")
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._audio: AudioTrack | None = None
        self._size: tuple[int, int] | None = None  # (w, h) of frames as given, before padding
        self._frame_count = 0
        self._state = "open"  # open -> closed | aborted

    @property
    def frame_count(self) -> int:
        """Frames written so far."""
        return self._frame_count

    @property
    def duration_s(self) -> float:
        """Duration of the frames written so far, in seconds."""
        return self._frame_count / self.fps

    def _start(self, width: int, height: int) -> None:
        self._container = open_output(self._tmp)
        rate = Fraction(self.fps).limit_denominator(1001)  # 29.97 -> 30000/1001 exactly
        stream = self._container.add_stream(
            "libx264", rate=rate, options={"crf": str(self.quality), "preset": self.preset}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Tag BT.709 (the matrix the frames are converted with), so browsers decode the colours we meant.
        codec = stream.codec_context
        codec.colorspace, codec.color_range = Colorspace.ITU709, ColorRange.MPEG
        codec.color_primaries, codec.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
        # PyAV's default (slice threads) makes x264 cut every frame in slices: frame threads, as
        # the ffmpeg command line uses, give one slice per frame and smaller files.
        codec.thread_type = "AUTO"
        self._stream = stream
        if self._audio_source is not None:
            self._audio = AudioTrack(
                self._audio_source, self._container, self.audio_offset_s, self.audio_duration_s
            )

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame (same size as the first frame)."""
        if self._state != "open":
            raise ValueError(f"VideoWriter for {self.path.name} is {self._state}")
        arr = _as_frame(frame)
        height, width = arr.shape[:2]
        if self._size is None:
            self._size = (width, height)
            try:
                self._start(width + width % 2, height + height % 2)
            except av.error.FFmpegError as e:
                self.abort()
                raise RuntimeError(f"could not start encoding {self.path.name}: {e}") from e
        elif self._size != (width, height):
            raise ValueError(
                f"all frames must have the size of the first one {self._size} (w, h), got {(width, height)}"
            )
        assert self._container is not None and self._stream is not None
        yuv = av.VideoFrame.from_ndarray(_pad_even(arr), format="rgb24").reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
        )
        yuv.pts = self._frame_count
        try:
            self._container.mux(self._stream.encode(yuv))
            self._frame_count += 1
            if self._audio is not None:
                self._audio.pump(self.duration_s)
        except av.error.FFmpegError as e:
            self.abort()
            raise RuntimeError(f"encoding {self.path.name} failed: {e}") from e

    def write_many(self, frames: Iterable[np.ndarray]) -> int:
        """Write every frame of an iterable (consumed lazily); returns how many were written."""
        n = 0
        for frame in frames:
            self.write(frame)
            n += 1
        return n

    def close(self) -> Path:
        """Finish encoding, atomically move the result to ``path`` and return it.

        Raises ``ValueError`` if no frame was written and ``RuntimeError`` if encoding fails; in
        both cases nothing is left on disk. Calling it again after success just returns ``path``.
        """
        if self._state == "closed":
            return self.path
        if self._state == "aborted":
            raise ValueError(f"VideoWriter for {self.path.name} was aborted; nothing was written")
        try:
            if self._container is None or self._stream is None:
                raise ValueError(f"no frames were written; {self.path.name} was not created")
            try:
                self._container.mux(self._stream.encode(None))
                if self._audio is not None:
                    self._audio.finish(self.duration_s)
                self._container.close()  # writes the index and moves it to the front (+faststart)
            except av.error.FFmpegError as e:
                raise RuntimeError(f"encoding {self.path.name} failed: {e}") from e
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Stop encoding and delete all temporary output; ``path`` is not created. Idempotent."""
        if self._state == "closed":
            return
        self._state = "aborted"
        if self._audio is not None:
            self._audio.close()
        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError:  # flushing a half-written file; it is deleted anyway
                pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
            return False  # re-raise
        self.close()
        return False

    def __del__(self) -> None:
        # Safety net for writers that were neither closed nor used in a ``with`` block.
        try:
            if getattr(self, "_state", "closed") == "open":
                self.abort()
        except Exception:
            pass


def write_mp4(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    audio_from: str | os.PathLike | VideoInfo | None = None,
    **writer_kwargs: Any,
) -> Path:
    """Encode ``frames`` (an iterable of ``(H, W, 3)`` uint8 RGB, consumed lazily) to ``path``.

    Convenience over :class:`VideoWriter` (see it for encoding, audio and atomicity); extra keyword
    arguments (``audio_offset_s``, ``audio_duration_s``, ``quality``, ``preset``) are passed on.
    Returns ``path`` as a ``Path``.
    """
    with VideoWriter(path, fps, audio_from=audio_from, **writer_kwargs) as writer:
        writer.write_many(frames)
    return writer.path

"""Video and image I/O: probe, streaming decode, streaming H.264 encode with audio, photo loading.

Everything goes through the ffmpeg binary bundled with ``imageio-ffmpeg`` (there is no ffprobe in
that bundle, so stream information is parsed from ``ffmpeg -i`` output). At the API boundary frames
are ``numpy.uint8`` arrays of shape ``(H, W, 3)`` in RGB order.

* :func:`probe_video` -> :class:`VideoInfo` (fps, exact frame count, size, duration, audio, codec).
* :func:`iter_frames` streams decoded frames; it never holds more than one frame in memory.
* :class:`VideoWriter` / :func:`write_mp4` stream frames into ffmpeg (libx264, yuv420p, BT.709,
  ``+faststart``), optionally mux the audio of another file, and only ever leave a complete file.
* :func:`read_image` / :func:`load_image` turn a path, array or PIL image into an RGB uint8 array.

Bad user input raises :class:`~flexavatar.errors.InvalidInputError` with a message that names the
file, says what is wrong and what to do. ffmpeg failures on input we produced ourselves raise
``RuntimeError``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flexavatar.errors import InvalidInputError

__all__ = [
    "DEFAULT_MAX_IMAGE_SIDE",
    "InvalidInputError",
    "LoadedImage",
    "VideoInfo",
    "VideoWriter",
    "ffmpeg_exe",
    "has_audio_stream",
    "iter_frames",
    "load_image",
    "mux_audio",
    "probe_video",
    "read_image",
    "write_mp4",
]

#: Default longest side (pixels) of photos returned by :func:`read_image`.
DEFAULT_MAX_IMAGE_SIDE = 2048

#: Seconds allowed for non-streaming ffmpeg calls (probe, count, mux). Counting packets of even a
#: long video with ``-c copy`` takes well under a second per minute of video.
_PROBE_TIMEOUT_S = 120.0
_MUX_TIMEOUT_S = 600.0
#: Seconds the encoder may take to flush its look-ahead once stdin is closed.
_FINISH_TIMEOUT_S = 600.0

_VIDEO_HINT = "upload an MP4, MOV, WebM or AVI video"
_IMAGE_HINT = "upload a JPEG or PNG photo"


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (or ``$IMAGEIO_FFMPEG_EXE``)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ----------------------------------------------------------------------------------------------
# Probing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video file.

    ``width``/``height`` are the *display* size in pixels, i.e. after the rotation stored in the
    container (phone videos), which is also the size :func:`iter_frames` yields. ``frame_count``
    is exact (the number of frames :func:`iter_frames` yields) when ``frame_count_exact`` is true
    (shown video packets counted by a stream-copy pass, which does not decode), otherwise the
    estimate ``round(duration_s * fps)``. ``fps`` is the container's
    average frame rate (frames per second); ``duration_s`` the container duration in seconds (or
    ``frame_count / fps`` when the container has none). ``codec`` is ffmpeg's codec name
    (``"h264"``, ``"hevc"``, ``"vp9"``...).
    """

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int
    duration_s: float
    has_audio: bool
    codec: str
    frame_count_exact: bool = True
    rotation_deg: int = 0


@dataclass(frozen=True)
class _Header:
    """The parts of ``ffmpeg -i`` stderr we use. ``video`` is None without a (non cover-art) video."""

    duration_s: float | None
    has_audio: bool
    video_codec: str | None = None
    width: int = 0
    height: int = 0
    fps: float | None = None
    rotation_deg: int = 0


_STREAM_RE = re.compile(r"^\s*Stream #0:\d+\S*: (Video|Audio|Subtitle|Data|Attachment): (.*)$", re.M)
_SIZE_RE = re.compile(r", (\d+)x(\d+)(?=[ ,\[]|$)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")


def _rate(line: str, unit: str) -> float | None:
    match = re.search(r"(\d+(?:\.\d+)?)(k?) " + unit + r"\b", line)
    if not match:
        return None
    value = float(match.group(1)) * (1000.0 if match.group(2) else 1.0)
    return value if value > 0 else None


def _parse_header(stderr: str) -> _Header | None:
    """Parse the ``Input #0`` section of ffmpeg's stderr; None when ffmpeg could not open the input."""
    start = stderr.find("Input #0")
    if start < 0:
        return None
    section = stderr[start:]
    # Only the input section: the counting pass also prints an "Output #0" section with streams.
    for marker in ("\nStream mapping:", "\nOutput #0"):
        cut = section.find(marker)
        if cut >= 0:
            section = section[:cut]

    duration = None
    if m := _DURATION_RE.search(section):
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))

    streams = list(_STREAM_RE.finditer(section))
    has_audio = any(s.group(1) == "Audio" for s in streams)
    for i, s in enumerate(streams):
        line = s.group(2)
        if s.group(1) != "Video" or "(attached pic)" in line:  # cover art is a "video" stream too
            continue
        size = _SIZE_RE.search(line)
        if not size:
            continue
        width, height = int(size.group(1)), int(size.group(2))
        # Side data (display matrix) is printed under the stream line, before the next stream.
        end = streams[i + 1].start() if i + 1 < len(streams) else len(section)
        rotation = 0
        if r := re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", section[s.end() : end], re.I):
            rotation = int(round(float(r.group(1)))) % 360
        if rotation in (90, 270):
            width, height = height, width
        codec = re.match(r"\s*(\w+)", line)
        return _Header(
            duration_s=duration,
            has_audio=has_audio,
            video_codec=codec.group(1) if codec else "unknown",
            width=width,
            height=height,
            fps=_rate(line, "fps") or _rate(line, "tbr"),
            rotation_deg=rotation,
        )
    return _Header(duration_s=duration, has_audio=has_audio)


def _ffmpeg_reason(stderr: str) -> str:
    """A short human-readable reason from ffmpeg's stderr (its last error line)."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error opening input:" in ln:
            return ln.split("Error opening input:", 1)[1].strip()
    for ln in reversed(lines):
        if not ln.startswith(("frame=", "Press [q]")):
            return re.sub(r"^\[[^\]]*\]\s*", "", ln)[:200]
    return "ffmpeg could not read it"


def _ffmpeg_log(stderr: str, max_lines: int = 4) -> str:
    """The first lines of ffmpeg's error log (the root cause comes first, the fallout after)."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln.strip()) for ln in stderr.splitlines() if ln.strip()]
    return " | ".join(lines[:max_lines]) or "no error output"


def _check_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    """Raise :class:`InvalidInputError` unless ``path`` is an existing, non-empty regular file."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{what} {p.name!r} was not found (looked at {p}); {hint}.")
    if not p.is_file():
        raise InvalidInputError(f"{what} {p.name!r} is not a file ({p}); {hint}.")
    if p.stat().st_size == 0:
        raise InvalidInputError(
            f"{what} {p.name!r} is empty (0 bytes), the upload probably failed; {hint} again."
        )
    return p


def _run(cmd: list[str], timeout: float, capture_stdout: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a non-streaming ffmpeg command with a timeout (the child is killed when it expires)."""
    try:
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            text=True,
            errors="replace",
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"ffmpeg did not finish within {timeout:.0f} s: {' '.join(cmd)}") from e


def _probe_header(path: Path, what: str = "video") -> _Header:
    """Header-only probe (``ffmpeg -i``, no output: fast). Raises if ffmpeg cannot open the file."""
    proc = _run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], _PROBE_TIMEOUT_S)
    header = _parse_header(proc.stderr)
    if header is None:
        raise InvalidInputError(
            f"{what} {path.name!r} is not a decodable media file ({_ffmpeg_reason(proc.stderr)}); "
            f"{_VIDEO_HINT}."
        )
    return header


def _require_video(header: _Header, path: Path) -> None:
    if header.video_codec is None:
        kind = "only audio" if header.has_audio else "no audio or video"
        raise InvalidInputError(f"video {path.name!r} contains no video stream ({kind}); {_VIDEO_HINT}.")


def _count_shown_packets(framecrc: str) -> tuple[int, bool]:
    """(number of packets with pts >= 0 or unknown pts, whether any packet line was parsed)."""
    count = 0
    parsed = False
    for line in framecrc.splitlines():
        if line.startswith("#"):
            continue
        fields = line.split(",")
        if len(fields) < 6:
            continue
        parsed = True
        pts = fields[2].strip()
        if not pts.lstrip("-").isdigit() or int(pts) >= 0:  # "NOPTS" packets are shown too
            count += 1
    return count, parsed


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Describe the video at ``path``; raises :class:`InvalidInputError` for bad files.

    One ffmpeg call: it opens the file (stream info from its header) and lists the first video
    stream's packets with their timestamps (stream copy, no decoding: fast even for long videos).
    ``frame_count`` is the number of packets with a presentation time >= 0, which is exactly the
    number of frames :func:`iter_frames` yields, even when the container's frame rate or duration
    lie; packets before 0 are the ones an MP4/MOV edit list tells decoders to drop (counting all
    packets, or ``nb_frames``, over-counts such files). ``frame_count_exact`` is then True. If the
    packet list is unavailable, ``frame_count`` is ``round(duration_s * fps)`` and
    ``frame_count_exact`` is False. Errors: missing file, zero-byte file, not a decodable video, no
    video stream, video stream without frames.
    """
    p = _check_file(path, "video", _VIDEO_HINT)
    # -map 0:V:0 (capital V) picks the first real video stream, skipping cover-art pictures.
    # framecrc prints one line per packet: "stream, dts, pts, duration, size, checksum".
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(p)]
    cmd += ["-map", "0:V:0", "-c", "copy", "-f", "framecrc", "pipe:1"]
    proc = _run(cmd, _PROBE_TIMEOUT_S, capture_stdout=True)
    header = _parse_header(proc.stderr)
    if header is None:
        raise InvalidInputError(
            f"{p.name!r} is not a decodable video ({_ffmpeg_reason(proc.stderr)}); {_VIDEO_HINT}."
        )
    _require_video(header, p)
    if proc.returncode != 0:
        raise InvalidInputError(
            f"video {p.name!r} could not be read ({_ffmpeg_reason(proc.stderr)}); {_VIDEO_HINT}."
        )
    frame_count, exact = _count_shown_packets(proc.stdout)
    fps = header.fps
    duration = header.duration_s
    if fps is None:
        fps = frame_count / duration if frame_count and duration else 25.0  # ffmpeg's own fallback
    if not exact and duration:
        frame_count = int(round(duration * fps))
    if frame_count <= 0:
        raise InvalidInputError(f"video {p.name!r} contains no frames; {_VIDEO_HINT}.")
    if not duration:
        duration = frame_count / fps
    return VideoInfo(
        path=p,
        fps=float(fps),
        frame_count=frame_count,
        width=header.width,
        height=header.height,
        duration_s=float(duration),
        has_audio=header.has_audio,
        codec=header.video_codec or "unknown",
        frame_count_exact=exact,
        rotation_deg=header.rotation_deg,
    )


def has_audio_stream(path: str | os.PathLike) -> bool:
    """True when the media file at ``path`` has at least one audio stream.

    Raises :class:`InvalidInputError` when the file is missing, empty or not a media file.
    """
    p = _check_file(path, "media file", _VIDEO_HINT)
    return _probe_header(p, "media file").has_audio


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


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


def _read_exactly(stream: IO[bytes], buf: bytearray) -> int:
    """Fill ``buf`` from ``stream``; returns the number of bytes read (< len(buf) only at EOF)."""
    view = memoryview(buf)
    filled = 0
    while filled < len(buf):
        n = stream.readinto(view[filled:])  # type: ignore[attr-defined]
        if not n:
            break
        filled += n
    return filled


def iter_frames(
    path: str | os.PathLike,
    max_frames: int | None = None,
    size: tuple[int, int] | int | None = None,
) -> Iterator[np.ndarray]:
    """Stream the frames of a video as ``(H, W, 3)`` uint8 RGB arrays (each a fresh, writable array).

    The file is checked and probed eagerly (so :class:`InvalidInputError` is raised by this call,
    not by the first ``next``); decoding then streams from an ffmpeg child process, one frame in
    memory at a time. Rotation metadata is applied (frames come out upright, at the display size
    of :func:`probe_video`). Every decoded frame is yielded once (no frame-rate conversion), so
    variable-frame-rate videos yield their real frames.

    Args:
        path: mp4 / mov / webm / avi / anything ffmpeg decodes.
        max_frames: stop after this many frames (None = all).
        size: None (source size), ``(w, h)`` in pixels (exact resize), or an int: longest side in
            pixels (downscale only, aspect kept). Resizing is done by ffmpeg (area filter when
            shrinking).

    The ffmpeg process is killed when the generator is closed or garbage-collected early (e.g. the
    consumer breaks out of the loop); wrap it in ``contextlib.closing`` to make that deterministic.
    """
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    p = _check_file(path, "video", _VIDEO_HINT)
    header = _probe_header(p)
    _require_video(header, p)
    out_w, out_h = _target_size(header.width, header.height, size)

    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-i", str(p)]
    cmd += ["-map", "0:V:0"]
    if (out_w, out_h) != (header.width, header.height):
        shrinking = out_w * out_h < header.width * header.height
        cmd += ["-vf", f"scale={out_w}:{out_h}:flags={'area' if shrinking else 'bicubic'}"]
    # passthrough: no frame duplication/dropping to a constant rate; one output per decoded frame.
    cmd += ["-fps_mode", "passthrough"]
    if max_frames is not None:
        cmd += ["-frames:v", str(max_frames)]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    return _frame_generator(cmd, p, out_w, out_h, max_frames)


def _frame_generator(
    cmd: list[str], path: Path, width: int, height: int, max_frames: int | None
) -> Iterator[np.ndarray]:
    if max_frames == 0:
        return
    frame_bytes = width * height * 3
    # stderr goes to a temp file, not a pipe: a chatty decoder can then never block on a full pipe.
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err_file, bufsize=frame_bytes
        )
        assert proc.stdout is not None
        count = 0
        try:
            while max_frames is None or count < max_frames:
                buf = bytearray(frame_bytes)
                if _read_exactly(proc.stdout, buf) < frame_bytes:
                    break  # EOF (a truncated last frame cannot happen with rawvideo; ignore it)
                count += 1
                yield np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)
            returncode = proc.wait(timeout=_PROBE_TIMEOUT_S)
            if returncode != 0:
                err_file.seek(0)
                reason = _ffmpeg_reason(err_file.read().decode("utf-8", "replace"))
                raise InvalidInputError(
                    f"video {path.name!r} could not be decoded after {count} frames ({reason}); "
                    f"{_VIDEO_HINT}."
                )
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


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


def _container_format(path: Path) -> str:
    return "mov" if path.suffix.lower() == ".mov" else "mp4"


def _temp_sibling(path: Path, tag: str) -> Path:
    """A hidden temporary path next to ``path`` (same filesystem, so ``os.replace`` is atomic)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:10]}.{tag}{path.suffix}")


def _mux_audio_cmd(
    video: Path,
    audio: Path,
    out: Path,
    video_duration_s: float,
    audio_offset_s: float,
    audio_duration_s: float | None,
) -> list[str]:
    """ffmpeg command: copy the video of ``video``, add ``audio``'s first audio stream as AAC.

    The audio is read from ``audio_offset_s`` on (for at most ``audio_duration_s``), and the output
    is cut at ``video_duration_s`` so the audio never outlasts the video. If the audio is shorter,
    the video keeps its full length and the audio just ends early.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y"]
    cmd += ["-i", str(video)]
    if audio_offset_s > 0:
        cmd += ["-ss", f"{audio_offset_s:.6f}"]
    if audio_duration_s is not None:
        cmd += ["-t", f"{audio_duration_s:.6f}"]
    cmd += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"]
    cmd += ["-c:a", "aac", "-b:a", "160k", "-t", f"{video_duration_s:.6f}"]
    cmd += ["-movflags", "+faststart", "-f", _container_format(out), str(out)]
    return cmd


def _validate_audio_window(audio_offset_s: float, audio_duration_s: float | None) -> None:
    if not (math.isfinite(audio_offset_s) and audio_offset_s >= 0):
        raise ValueError(f"audio_offset_s must be a finite number >= 0, got {audio_offset_s}")
    if audio_duration_s is not None and not (math.isfinite(audio_duration_s) and audio_duration_s > 0):
        raise ValueError(f"audio_duration_s must be None or > 0, got {audio_duration_s}")


class VideoWriter:
    """Stream ``(H, W, 3)`` uint8 RGB frames into an H.264 MP4 that plays in browsers.

    Encoding: libx264, yuv420p, BT.709 (converted and tagged, so browsers show the right colours),
    constant frame rate ``fps``, ``-movflags +faststart`` (``moov`` before ``mdat``: playback starts
    while downloading). Frames are piped to ffmpeg as they are written, so memory does not grow
    with the video length. All frames must have the size of the first; odd widths/heights are
    padded by one pixel (edge replicated) because yuv420p needs even sizes.

    Audio: if ``audio_from`` is a file with an audio stream, its first audio stream (from
    ``audio_offset_s`` seconds on, for at most ``audio_duration_s`` seconds) is encoded to AAC and
    muxed in on close, cut at the video's duration (``frame_count / fps``). A file without audio is
    silently ignored (the output then has no audio); a missing one raises at construction.

    Atomicity: output goes to a hidden temporary file in the destination folder, renamed onto
    ``path`` only on success. If the ``with`` block raises, or ffmpeg fails, the ffmpeg process is
    killed, temporary files are deleted and the exception propagates: no partial output is ever
    left behind (an existing file at ``path`` is untouched unless the write succeeds).

    Example::

        with VideoWriter("out.mp4", fps=30, audio_from="driving.mp4") as writer:
            for frame in frames:
                writer.write(frame)
        # writer.path now exists
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        audio_from: str | os.PathLike | None = None,
        audio_offset_s: float = 0.0,
        audio_duration_s: float | None = None,
        quality: int = 18,
        preset: str = "fast",
    ) -> None:
        """
        Args:
            path: destination ``.mp4`` (``.mov`` gets the mov muxer); parent folders are created.
            fps: frames per second, > 0 (e.g. 30 or 29.97).
            audio_from: optional media file whose audio to mux in (e.g. the driving video).
            audio_offset_s: seconds into ``audio_from`` where the audio starts (>= 0), e.g. the
                start of the used part of a trimmed driving video.
            audio_duration_s: optional cap on the audio length in seconds.
            quality: x264 CRF, 0 (lossless) .. 51 (worst); 18 is visually lossless, 23 the default
                of x264. Lower = bigger file.
            preset: x264 speed/size trade-off ("ultrafast" .. "veryslow").
        """
        if not (isinstance(fps, (int, float, np.number)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if not 0 <= int(quality) <= 51:
            raise ValueError(f"quality is an x264 CRF in 0..51, got {quality}")
        _validate_audio_window(audio_offset_s, audio_duration_s)
        self.path = Path(path)
        self.fps = float(fps)
        self.quality = int(quality)
        self.preset = preset
        self.audio_offset_s = float(audio_offset_s)
        self.audio_duration_s = audio_duration_s
        self._audio_source: Path | None = None
        if audio_from is not None:
            audio_path = _check_file(audio_from, "audio source", _VIDEO_HINT)
            if _probe_header(audio_path, "audio source").has_audio:
                self._audio_source = audio_path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._video_tmp = _temp_sibling(self.path, "partial")
        self._mux_tmp = _temp_sibling(self.path, "muxing")
        self._proc: subprocess.Popen[bytes] | None = None
        self._err_file: IO[bytes] | None = None
        self._size: tuple[int, int] | None = None  # (w, h) of frames as given, before padding
        self._frame_count = 0
        self._state = "open"  # open -> closed | aborted

    # -- properties -------------------------------------------------------------------------

    @property
    def frame_count(self) -> int:
        """Frames written so far."""
        return self._frame_count

    @property
    def duration_s(self) -> float:
        """Duration of the frames written so far, in seconds."""
        return self._frame_count / self.fps

    @property
    def will_mux_audio(self) -> bool:
        """True when ``audio_from`` was given and has an audio stream."""
        return self._audio_source is not None

    # -- writing ----------------------------------------------------------------------------

    def _start(self, width: int, height: int) -> None:
        rate = Fraction(self.fps).limit_denominator(1001)  # 29.97 -> 30000/1001 exactly
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-video_size", f"{width}x{height}"]
        cmd += ["-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0", "-map", "0:v:0"]
        # Convert RGB with the BT.709 matrix and tag it, so browsers decode the colours we meant.
        # (setparams: ffmpeg takes colour tags from the frames, so the -color_* options alone are lost.)
        cmd += [
            "-vf",
            "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
            "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv",
        ]
        cmd += ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.quality), "-pix_fmt", "yuv420p"]
        cmd += ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"]
        cmd += ["-color_range", "tv", "-movflags", "+faststart"]
        cmd += ["-f", _container_format(self.path), str(self._video_tmp)]
        self._err_file = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err_file
        )

    def _stderr_text(self) -> str:
        if self._err_file is None:
            return ""
        self._err_file.seek(0)
        return self._err_file.read().decode("utf-8", "replace")

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame (same size as the first frame)."""
        if self._state != "open":
            raise ValueError(f"VideoWriter for {self.path.name} is {self._state}")
        arr = _as_frame(frame)
        height, width = arr.shape[:2]
        if self._size is None:
            self._size = (width, height)
            self._start(width + width % 2, height + height % 2)
        elif self._size != (width, height):
            raise ValueError(
                f"all frames must have the size of the first one {self._size} (w, h), got {(width, height)}"
            )
        arr = _pad_even(arr)
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(arr.data)
        except (BrokenPipeError, OSError) as e:
            self._proc.wait(timeout=_PROBE_TIMEOUT_S)
            reason = _ffmpeg_log(self._stderr_text())
            self.abort()
            raise RuntimeError(f"ffmpeg encoder for {self.path.name} failed: {reason}") from e
        self._frame_count += 1

    def write_many(self, frames: Iterable[np.ndarray]) -> int:
        """Write every frame of an iterable (consumed lazily); returns how many were written."""
        n = 0
        for frame in frames:
            self.write(frame)
            n += 1
        return n

    # -- finishing --------------------------------------------------------------------------

    def close(self) -> Path:
        """Finish encoding, mux audio, atomically move the result to ``path`` and return it.

        Raises ``ValueError`` if no frame was written and ``RuntimeError`` if ffmpeg fails; in both
        cases nothing is left on disk. Calling it again after success just returns ``path``.
        """
        if self._state == "closed":
            return self.path
        if self._state == "aborted":
            raise ValueError(f"VideoWriter for {self.path.name} was aborted; nothing was written")
        try:
            if self._proc is None:
                raise ValueError(f"no frames were written; {self.path.name} was not created")
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                returncode = self._proc.wait(timeout=_FINISH_TIMEOUT_S)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"ffmpeg did not finish encoding {self.path.name} in time") from e
            if returncode != 0:
                raise RuntimeError(
                    f"ffmpeg failed to encode {self.path.name}: {_ffmpeg_log(self._stderr_text())}"
                )
            result = self._video_tmp
            if self._audio_source is not None:
                cmd = _mux_audio_cmd(
                    self._video_tmp,
                    self._audio_source,
                    self._mux_tmp,
                    self.duration_s,
                    self.audio_offset_s,
                    self.audio_duration_s,
                )
                proc = _run(cmd, _MUX_TIMEOUT_S)
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"ffmpeg failed to add the audio of {self._audio_source.name} to "
                        f"{self.path.name}: {_ffmpeg_log(proc.stderr)}"
                    )
                result = self._mux_tmp
            os.replace(result, self.path)
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        self._state = "closed"
        return self.path

    def _cleanup(self) -> None:
        """Kill ffmpeg if still running, close handles, delete temporary files."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            if self._proc.stdin is not None:
                try:
                    self._proc.stdin.close()
                except OSError:  # flushing buffered bytes into a killed process
                    pass
        if self._err_file is not None:
            self._err_file.close()
            self._err_file = None
        for tmp in (self._video_tmp, self._mux_tmp):
            tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Stop encoding and delete all temporary output; ``path`` is not created. Idempotent."""
        if self._state == "closed":
            return
        self._cleanup()
        self._state = "aborted"

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
    audio_from: str | os.PathLike | None = None,
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


def mux_audio(
    video_path: str | os.PathLike,
    audio_source: str | os.PathLike,
    out_path: str | os.PathLike,
    audio_offset_s: float = 0.0,
    audio_duration_s: float | None = None,
) -> Path:
    """Write ``out_path``: the video of ``video_path`` (stream-copied) + the audio of ``audio_source``.

    The audio (AAC) starts at ``audio_offset_s`` seconds into ``audio_source`` and is cut at the
    video's duration; ``+faststart`` is kept. ``out_path`` may equal ``video_path`` (written to a
    temporary file and renamed atomically). Raises :class:`InvalidInputError` if ``audio_source``
    has no audio stream or either file is unreadable.
    """
    _validate_audio_window(audio_offset_s, audio_duration_s)
    info = probe_video(video_path)
    audio = _check_file(audio_source, "audio source", _VIDEO_HINT)
    if not _probe_header(audio, "audio source").has_audio:
        raise InvalidInputError(
            f"audio source {audio.name!r} has no audio stream; pick a file with sound or skip the audio."
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(out, "muxing")
    try:
        cmd = _mux_audio_cmd(info.path, audio, tmp, info.duration_s, audio_offset_s, audio_duration_s)
        proc = _run(cmd, _MUX_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(
                f"ffmpeg failed to add the audio of {audio.name} to {out.name}: {_ffmpeg_log(proc.stderr)}"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedImage:
    """Result of :func:`load_image`.

    ``image``: ``(H, W, 3)`` uint8 RGB, upright (EXIF orientation applied). ``source_size``:
    ``(width, height)`` in pixels of the upright original, before any downscale. ``downscaled``:
    whether ``image`` is smaller than the original. ``name``: file name used in messages.
    """

    image: np.ndarray
    source_size: tuple[int, int]
    downscaled: bool
    name: str


_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited onto white (transparent background -> white)."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode == "F" and peak <= 1.0:
            arr = arr * 255.0  # float image in [0, 1]
        elif peak > 255.0:
            arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """``(H, W)``, ``(H, W, 1|3|4)`` array (uint8, uint16, bool or float in [0, 1]) -> PIL image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.size == 0:
        raise InvalidInputError(
            f"image array has shape {arr.shape}, expected (H, W), (H, W, 3) or (H, W, 4); {_IMAGE_HINT}."
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidInputError(f"image array contains NaN or infinity; {_IMAGE_HINT}.")
        scale = 255.0 if float(arr.max()) <= 1.0 else 1.0  # [0, 1] floats, else assume [0, 255]
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
        peak = int(arr.max())
        if int(arr.min()) < 0 or peak > 65535:
            raise InvalidInputError(f"image array values must be in 0..255 or 0..65535; {_IMAGE_HINT}.")
        arr = (arr if peak <= 255 else np.rint(arr / 257.0)).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InvalidInputError(f"image array has unsupported dtype {arr.dtype}; {_IMAGE_HINT}.")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2] if arr.ndim == 3 else 2]
    return Image.fromarray(np.ascontiguousarray(arr), mode)


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after applying the EXIF orientation (swapped for 90-degree orientations)."""
    width, height = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block must not make a fine photo unreadable
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _open_image_file(path: Path, max_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode an image file; returns (image, upright original (w, h))."""
    not_readable = f"{path.name} is not a readable image"
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise InvalidInputError(
            f"{not_readable} (unknown or unsupported image format); {_IMAGE_HINT}."
        ) from None
    except Image.DecompressionBombError as e:
        raise InvalidInputError(
            f"{path.name} is too large to load ({e}); {_IMAGE_HINT} under 50 MP."
        ) from None
    try:
        upright_size = _upright_size(img)  # before draft() shrinks img.size
        if max_side and img.format == "JPEG" and max(img.size) > max_side:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the final size): much faster.
            scale = max_side / max(img.size)
            img.draft(None, (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))))
        img.load()
    except Image.DecompressionBombError as e:
        img.close()
        raise InvalidInputError(
            f"{path.name} is too large to load ({e}); {_IMAGE_HINT} under 50 MP."
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
        img.close()
        raise InvalidInputError(f"{not_readable} ({e}); {_IMAGE_HINT}.") from None
    return img, upright_size


def load_image(
    source: str | os.PathLike | np.ndarray | Image.Image, max_side: int | None = DEFAULT_MAX_IMAGE_SIDE
) -> LoadedImage:
    """Load a photo as ``(H, W, 3)`` uint8 RGB, upright, at most ``max_side`` pixels on its long side.

    ``source`` is a file path, a numpy array (``(H, W)`` / ``(H, W, 1|3|4)``; uint8, uint16, bool, or
    float in [0, 1]) or a PIL image. Handling: EXIF orientation applied (``ImageOps.exif_transpose``);
    grayscale -> 3 identical channels; 16-bit -> 8-bit; alpha composited onto white (a cut-out
    portrait gets a white background instead of arbitrary colours under transparent pixels);
    CMYK / palette / other modes converted to RGB; multi-frame files (GIF, TIFF) use the first frame.
    If the long side exceeds ``max_side`` (None = never) the image is downscaled with Lanczos,
    aspect kept. Raises :class:`InvalidInputError` (missing, empty, not an image, truncated).
    """
    if isinstance(source, np.ndarray):
        name = "image array"
        img = _array_to_pil(source)
        source_size = img.size
    elif isinstance(source, Image.Image):
        name = Path(getattr(source, "filename", "") or "image").name
        try:
            source.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise InvalidInputError(f"{name} is not a readable image ({e}); {_IMAGE_HINT}.") from None
        img = source
        source_size = _upright_size(source)
    elif isinstance(source, (str, os.PathLike)):
        path = _check_file(source, "photo", _IMAGE_HINT)
        name = path.name
        img, source_size = _open_image_file(path, max_side)
    else:
        raise TypeError(f"expected a path, numpy array or PIL image, got {type(source).__name__}")

    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # corrupt EXIF: keep the stored orientation rather than fail
        upright = img
    rgb = _to_rgb(upright)
    downscaled = False
    if max_side is not None:
        if max_side <= 0:
            raise ValueError(f"max_side must be positive or None, got {max_side}")
        long_side = max(rgb.size)
        if max(source_size) > max_side or long_side > max_side:
            scale = max_side / max(source_size)
            target = (max(1, round(source_size[0] * scale)), max(1, round(source_size[1] * scale)))
            if rgb.size != target:
                rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            downscaled = True
    image = np.array(rgb, dtype=np.uint8)  # np.array copies: writable, independent of PIL
    if image.ndim != 3 or image.shape[2] != 3:  # defensive: _to_rgb always yields RGB
        raise InvalidInputError(f"{name} could not be converted to RGB; {_IMAGE_HINT}.")
    if img is not source:
        img.close()
    return LoadedImage(image=image, source_size=tuple(source_size), downscaled=downscaled, name=name)


def read_image(
    source: str | os.PathLike | np.ndarray | Image.Image, max_side: int | None = DEFAULT_MAX_IMAGE_SIDE
) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB array of a photo; see :func:`load_image` (which also says whether it
    was downscaled and the original size)."""
    return load_image(source, max_side).image

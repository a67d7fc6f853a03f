"""Media containers: opening inputs with clear errors, browser-ready MP4 output, AAC audio muxing.

* :func:`open_input`: a media file opened for reading, or InvalidInputError naming it.

* :func:`open_output` / :func:`temp_sibling`: an MP4 with ``moov`` before ``mdat`` (playback starts
  while downloading), written to a hidden temporary file that is renamed onto the destination.
* :class:`AudioTrack` adds an AAC stream to an output container (used by
  :class:`flexavatar.video.VideoWriter` as it writes) and encodes another file's first audio stream
  up to a time on demand, so audio and video packets interleave in the file and the audio ends
  exactly where the video ends.
* :func:`mux_audio` adds another file's audio to a finished video (its video stream copied).
"""

from __future__ import annotations

import math
import os
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from flexavatar.errors import InvalidInputError, require_file

__all__ = [
    "AUDIO_BIT_RATE",
    "AudioTrack",
    "ffmpeg_reason",
    "mux_audio",
    "open_input",
    "open_output",
    "temp_sibling",
    "validate_audio_window",
]

#: Bit rate of the AAC audio we write (bits per second).
AUDIO_BIT_RATE = 160_000
AUDIO_HINT = "pick a file with sound or skip the audio"
#: Sample rates (Hz) the AAC encoder accepts; other sources are resampled to 48 kHz.
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def open_output(path: Path) -> av.container.OutputContainer:
    """An MP4 (MOV for ``.mov``) with ``moov`` before ``mdat``, so browsers play it while loading."""
    container_format = "mov" if path.suffix.lower() == ".mov" else "mp4"
    return av.open(str(path), "w", format=container_format, options={"movflags": "+faststart"})


def temp_sibling(path: Path, tag: str) -> Path:
    """A hidden temporary path next to ``path`` (same filesystem, so ``os.replace`` is atomic)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:10]}.{tag}{path.suffix}")


def ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's short error text ("Invalid data found when processing input"), without the path."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def open_input(path: Path, what: str, hint: str) -> av.container.InputContainer:
    """Open a media file for reading; InvalidInputError ("'x.mp4' is not a decodable video (why);
    hint.") when FFmpeg cannot make sense of it. what: "video", "audio source"."""
    try:
        return av.open(str(path), metadata_errors="replace")
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise InvalidInputError(
            f"{path.name!r} is not a decodable {what} ({ffmpeg_reason(e)}); {hint}."
        ) from None


class AudioTrack:
    """The AAC audio of an output file, transcoded from ``source`` as the video is written.

    Output time 0 is ``offset_s`` seconds into the source (on the source file's own timeline, so an
    audio stream that starts late keeps its delay: silence is inserted). :meth:`pump` encodes up
    to a time, so audio packets interleave with the video packets (a browser streaming the file
    gets both as it downloads); :meth:`finish` ends the track at the video's duration.
    """

    def __init__(
        self, source: Path, output: av.container.OutputContainer, offset_s: float, max_s: float | None
    ):
        self._input = open_input(source, "audio source", AUDIO_HINT)
        try:
            in_stream = self._input.streams.audio[0]
            source_rate = in_stream.codec_context.sample_rate
            self.rate = source_rate if source_rate in AAC_RATES else 48000  # resampled to a rate AAC has
            layout = "mono" if in_stream.codec_context.channels == 1 else "stereo"  # AAC: keep it simple
            self._stream = output.add_stream("aac", rate=self.rate, layout=layout)
            self._stream.bit_rate = AUDIO_BIT_RATE
            self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.rate)
            self._frames = self._input.decode(in_stream)
            start = (self._input.start_time or 0) / av.time_base  # FFmpeg's zero: the file's start
            self._zero = start + offset_s
        except BaseException:
            self._input.close()
            raise
        self._output = output
        self._layout = layout
        self._channels = 1 if layout == "mono" else 2
        self._limit = math.inf if max_s is None else round(max_s * self.rate)  # samples
        self._written = 0  # samples sent to the encoder
        self._pending = np.zeros((self._channels, 0), np.float32)  # decoded, starting at _written
        self._exhausted = False

    def _next_chunk(self) -> None:
        """Decode one more source frame into ``_pending`` (silence for a gap, overlap dropped)."""
        try:
            frame = next(self._frames, None)
        except av.error.FFmpegError:  # damaged audio: keep what was decoded, the video matters more
            frame = None
        chunks = self._resampler.resample(frame)  # None flushes the resampler
        if frame is None:
            self._exhausted = True
        for chunk in chunks:
            samples = chunk.to_ndarray().astype(np.float32, copy=False).reshape(self._channels, -1)
            end = self._written + self._pending.shape[1]  # where the next samples belong
            if chunk.time is not None:
                at = round((chunk.time - self._zero) * self.rate)
                if at > end:  # a gap in the source (or a late start): silence
                    samples = np.concatenate([np.zeros((self._channels, at - end), np.float32), samples], 1)
                else:  # before the offset, or overlapping: drop what is already covered
                    samples = samples[:, end - at :]
            self._pending = np.concatenate([self._pending, samples], 1)

    def pump(self, until_s: float) -> None:
        """Encode the audio up to ``until_s`` seconds of output time (or the end of the source)."""
        target = min(round(until_s * self.rate), self._limit)
        while self._written < target and not (self._exhausted and self._pending.shape[1] == 0):
            if self._pending.shape[1] == 0:
                self._next_chunk()
                continue
            take = min(self._pending.shape[1], target - self._written)
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(self._pending[:, :take]), "fltp", self._layout
            )
            frame.sample_rate = self.rate
            frame.pts = self._written
            frame.time_base = Fraction(1, self.rate)
            self._output.mux(self._stream.encode(frame))
            self._pending = self._pending[:, take:]
            self._written += take

    def finish(self, end_s: float) -> None:
        """Encode up to ``end_s`` (the video's duration), flush the encoder, close the source."""
        try:
            self.pump(end_s)
            self._output.mux(self._stream.encode(None))
        finally:
            self.close()

    def close(self) -> None:
        self._input.close()


def validate_audio_window(audio_offset_s: float, audio_duration_s: float | None) -> None:
    """ValueError unless the offset is >= 0 s and the duration None or > 0 s."""
    if not (math.isfinite(audio_offset_s) and audio_offset_s >= 0):
        raise ValueError(f"audio_offset_s must be a finite number >= 0, got {audio_offset_s}")
    if audio_duration_s is not None and not (math.isfinite(audio_duration_s) and audio_duration_s > 0):
        raise ValueError(f"audio_duration_s must be None or > 0, got {audio_duration_s}")


def mux_audio(
    video: str | os.PathLike,
    audio_source: str | os.PathLike,
    out_path: str | os.PathLike,
    audio_offset_s: float = 0.0,
    audio_duration_s: float | None = None,
) -> Path:
    """Write ``out_path``: ``video``'s first video stream (copied, not re-encoded) + ``audio_source``'s audio.

    The audio (AAC) starts at ``audio_offset_s`` seconds into ``audio_source`` and is cut at the
    video's duration; ``+faststart`` is kept. ``out_path`` may equal ``video`` (written to a
    temporary file and renamed atomically). Raises :class:`InvalidInputError` if ``audio_source``
    has no audio stream or either file is unreadable.
    """
    validate_audio_window(audio_offset_s, audio_duration_s)
    video_hint = "pass an MP4 video"
    video_path = require_file(video, "video", video_hint)
    audio = require_file(audio_source, "audio source", AUDIO_HINT)
    with open_input(audio, "audio source", AUDIO_HINT) as probe:
        if not probe.streams.audio:
            raise InvalidInputError(f"audio source {audio.name!r} has no audio stream; {AUDIO_HINT}.")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out, "muxing")
    try:
        with open_input(video_path, "video", video_hint) as source, open_output(tmp) as output:
            if not source.streams.video:
                raise InvalidInputError(f"video {video_path.name!r} has no video stream; {video_hint}.")
            in_stream = source.streams.video[0]
            out_stream = output.add_stream_from_template(in_stream)
            track = AudioTrack(audio, output, audio_offset_s, audio_duration_s)
            try:
                for packet in source.demux(in_stream):
                    if packet.size == 0:  # the end-of-stream marker
                        continue
                    if packet.pts is not None:
                        track.pump(float(packet.pts * packet.time_base))
                    packet.stream = out_stream
                    output.mux(packet)
                track.finish(source.duration / av.time_base)
            finally:
                track.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out

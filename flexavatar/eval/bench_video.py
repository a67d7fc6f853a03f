"""``python -m flexavatar bench video``: probe, decode, encode and audio-mux speed of video I/O.

Uses the real 640x360 clip ``single_face.mp4`` (72 frames at 30 fps, with an audio track):
probe time, decode fps at the source size, encode fps of 256² and 512² frames (the Space's two
output sizes, x264 CRF 18 "fast" as the pipeline writes them) and the extra time that muxing the
clip's audio adds. Figures are medians of ``--repeats`` runs on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from flexavatar.eval.bench import median_ms
from flexavatar.mux import mux_audio
from flexavatar.video import iter_frames, probe_video, write_mp4

MEDIA = Path(__file__).resolve().parents[2].parent / "shared" / "media"


def _seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds, after one warm-up call."""
    return median_ms(fn, repeats=repeats, warmup=1) / 1000.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flexavatar bench video")
    parser.add_argument("--video", default=str(MEDIA / "single_face.mp4"), help="clip with an audio track")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    video = Path(args.video)

    info = probe_video(video)
    print(f"{video.name}: {info.width}x{info.height}, {info.frame_count} frames at {info.fps:.2f} fps, "
          f"{info.codec}, audio={info.has_audio}")  # fmt: skip
    probe_s = _seconds(lambda: probe_video(video), args.repeats)
    print(f"probe                 {probe_s * 1000:8.1f} ms")
    decode_s = _seconds(lambda: sum(1 for _ in iter_frames(video)), args.repeats)
    print(f"decode {info.width}x{info.height}      {info.frame_count / decode_s:8.1f} fps   "
          f"({decode_s * 1000:.0f} ms for {info.frame_count} frames)")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for side in (256, 512):
            frames = list(iter_frames(video, size=(side, side)))
            out = tmp / f"enc{side}.mp4"
            encode_s = _seconds(
                lambda frames=frames, out=out: write_mp4(out, frames, fps=info.fps), args.repeats
            )
            print(f"encode {side}²            {len(frames) / encode_s:8.1f} fps   "
                  f"({encode_s * 1000:.0f} ms for {len(frames)} frames)")  # fmt: skip
            with_audio = tmp / f"enc{side}_audio.mp4"
            both_s = _seconds(
                lambda frames=frames, out=with_audio: write_mp4(out, frames, fps=info.fps, audio_from=video),
                args.repeats,
            )
            print(f"encode {side}² + audio    {len(frames) / both_s:8.1f} fps   "
                  f"({both_s * 1000:.0f} ms; audio adds {(both_s - encode_s) * 1000:.0f} ms)")  # fmt: skip
        muxed = tmp / "muxed.mp4"
        mux_s = _seconds(lambda: mux_audio(tmp / "enc256.mp4", video, muxed), args.repeats)
        print(f"mux_audio (256²)      {mux_s * 1000:8.1f} ms")

"""``python -m flexavatar bench video``: probe, decode, encode and audio-mux speed of video I/O.

Uses the real 640x360 clip ``single_face.mp4`` (72 frames at 30 fps, with an audio track):
probe time, decode fps at the source size, encode fps of 256² and 512² frames (the Space's two
output sizes, x264 CRF 18 "fast" as the pipeline writes them) and the extra time that muxing the
clip's audio adds. Figures are medians of ``--repeats`` runs after one warm-up: wall time, and
CPU time of this process and its child processes (steadier than wall time on a busy machine).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flexavatar.mux import mux_audio
from flexavatar.video import iter_frames, probe_video, write_mp4

MEDIA = Path(__file__).resolve().parents[2].parent / "shared" / "media"


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process, all its threads, and its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _measure(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds) of ``fn()``, after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), _cpu_s()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_s() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _line(label: str, frames: int, wall_s: float, cpu_s: float) -> str:
    rate = f"{frames / wall_s:7.1f} fps" if frames else " " * 11
    return f"{label:<22} {rate}   wall {wall_s * 1000:6.0f} ms   CPU {cpu_s * 1000:6.0f} ms"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flexavatar bench video")
    parser.add_argument("--video", default=str(MEDIA / "single_face.mp4"), help="clip with an audio track")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    video = Path(args.video)

    info = probe_video(video)
    print(f"{video.name}: {info.width}x{info.height}, {info.frame_count} frames at {info.fps:.2f} fps, "
          f"{info.codec}, audio={info.has_audio}")  # fmt: skip
    print(_line("probe", 0, *_measure(lambda: probe_video(video), args.repeats)))
    decode = _measure(lambda: sum(1 for _ in iter_frames(video)), args.repeats)
    print(_line(f"decode {info.width}x{info.height}", info.frame_count, *decode))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for side in (256, 512):
            frames = list(iter_frames(video, size=(side, side)))
            out = tmp / f"enc{side}.mp4"
            encode = _measure(
                lambda frames=frames, out=out: write_mp4(out, frames, fps=info.fps), args.repeats
            )
            print(_line(f"encode {side}²", len(frames), *encode))
            both = _measure(
                lambda frames=frames: write_mp4(tmp / "audio.mp4", frames, fps=info.fps, audio_from=video),
                args.repeats,
            )
            print(_line(f"encode {side}² + audio", len(frames), *both))
        mux = _measure(lambda: mux_audio(tmp / "enc256.mp4", video, tmp / "muxed.mp4"), args.repeats)
        print(_line("mux_audio (256²)", 0, *mux))

"""``python -m flexavatar bench live``: live driving speed, the slider still and the blend.

* as fast as possible: every frame of a clip through one :class:`~flexavatar.live.LiveSession`
  (tracking + render per frame; the throughput ceiling);
* real time: the clip played at its own frame rate by the wall clock; the session takes the
  newest frame whenever it is free and drops the ones it missed, as the Space does. Latency is
  from a frame's capture time to its rendered frame (what a viewer sees, less the network);
* ``render_still`` with sliders (the Space's controls tab) and ``blend_avatars`` + still.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from flexavatar import pipeline
from flexavatar.eval.bench import median_ms
from flexavatar.live import LiveSession
from flexavatar.video import iter_frames, probe_video

MEDIA = Path(__file__).resolve().parents[2].parent / "shared" / "media"


def as_fast_as_possible(session: LiveSession, frames: list[np.ndarray], fps: float) -> dict:
    session.reset_neutral()
    base_ms, results = session.last_timestamp_ms + 1, []
    start = time.perf_counter()
    for index, frame in enumerate(frames):
        results.append(session.process(frame, base_ms + round(index * 1000 / fps)))
    seconds = time.perf_counter() - start
    return {"fps": len(frames) / seconds, "track_ms": float(np.median([r.track_ms for r in results])),
            "render_ms": float(np.median([r.render_ms for r in results]))}  # fmt: skip


def real_time(session: LiveSession, frames: list[np.ndarray], fps: float) -> dict:
    """Play ``frames`` at ``fps`` by the wall clock; process the newest available frame each time."""
    session.reset_neutral()
    base_ms = session.last_timestamp_ms + 1
    latencies, done, last = [], 0, -1
    start = time.perf_counter()
    while True:
        now = time.perf_counter() - start
        index = min(int(now * fps), len(frames) - 1)
        if index == last:
            if index == len(frames) - 1:
                break
            time.sleep(max(0.0, (index + 1) / fps - now))
            continue
        session.process(frames[index], base_ms + round(index * 1000 / fps))
        latencies.append((time.perf_counter() - start - index / fps) * 1000.0)
        done, last = done + 1, index
    seconds = time.perf_counter() - start
    return {"shown_fps": done / seconds, "shown": done, "dropped": len(frames) - done,
            "latency_ms": float(np.median(latencies)), "latency_p90_ms": float(np.percentile(latencies, 90))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flexavatar bench live")
    parser.add_argument("--media", default=str(MEDIA))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--loops", type=int, default=2, help="play the clip this many times")
    args = parser.parse_args(argv)
    media = Path(args.media)
    video = media / "single_face.mp4"
    model = pipeline.load_model(None, args.device)
    avatar = pipeline.create_avatar([media / "astronaut.png"], model=model)
    other = pipeline.create_avatar([media / "single_face.jpg"], model=model)
    fps = probe_video(video).fps
    frames = list(iter_frames(video)) * args.loops
    print(f"device={model.device} torch threads={torch.get_num_threads()} cpus={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.1f}; avatar astronaut.png; driver {video.name} x{args.loops} "
          f"({len(frames)} frames, {frames[0].shape[1]}x{frames[0].shape[0]}, {fps:g} fps)")  # fmt: skip
    with LiveSession(avatar, model=model) as session:
        session.process(frames[0], 0)  # warm-up: numba kernels, MediaPipe graph
        fast = as_fast_as_possible(session, frames, fps)
        print(f"live, as fast as possible: {fast['fps']:.1f} frames/s (tracking {fast['track_ms']:.1f} ms + "
              f"render {fast['render_ms']:.1f} ms per frame, median)")  # fmt: skip
        live = real_time(session, frames, fps)
        print(f"live, driver played in real time at {fps:g} fps: {live['shown_fps']:.1f} frames/s shown, "
              f"{live['dropped']} of {len(frames)} dropped; capture-to-render latency median "
              f"{live['latency_ms']:.0f} ms, p90 {live['latency_p90_ms']:.0f} ms")  # fmt: skip
    controls = {"smile": 0.7, "jaw_open": 0.3, "blink": 0.2}
    for resolution in (256, 512):
        ms = median_ms(lambda r=resolution: pipeline.render_still(avatar, controls, yaw_deg=20, pitch_deg=-5,
                                                                   resolution=r, model=model))  # fmt: skip
        print(f"render_still {resolution}² (sliders + yaw/pitch): {ms:.1f} ms (median of 10; target <= 150 ms)")
    ms = median_ms(lambda: pipeline.render_still(pipeline.blend_avatars(avatar, other, 0.5), model=model))
    print(f"blend_avatars + render_still 256²: {ms:.1f} ms")
    if fast["fps"] < 15:
        print("note: below the 15 frames/s target; on a shared machine, re-run when it is quiet")

"""``python -m flexavatar bench live``: live driving speed, the slider still and the blend.

* as fast as possible: every frame of a clip through one :class:`~flexavatar.live.LiveSession`
  (tracking + render per frame; the throughput ceiling);
* real time: the clip played at its own frame rate by the wall clock; the session takes the
  newest frame whenever it is free and drops the ones it missed, as the Space does. Latency is
  from a frame's capture time to its rendered frame (what a viewer sees, less the network);
* ``render_still`` with sliders (the Space's controls tab) and ``blend_avatars`` + still;
* ``--app``: the same through the Space: ``python app.py`` started on a free local port, the clip
  streamed to ``/live`` over Gradio's streaming protocol (:mod:`flexavatar.eval.live_client`),
  each frame sent when the previous answer is back: frames/s and round trip per frame (camera
  frame out to avatar frame back, JPEG both ways); then ``/render_still`` round trips (plain HTTP POST, PNG downloaded).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from flexavatar import pipeline
from flexavatar.eval.bench import median_ms
from flexavatar.eval.live_client import LiveStream
from flexavatar.live import TARGET_FPS, LiveSession
from flexavatar.video import iter_frames, probe_video

REPO = Path(__file__).resolve().parents[2]
MEDIA = REPO.parent / "shared" / "media"
APP_START_TIMEOUT_S = 180


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc; NaN elsewhere): a figure
    that, unlike frames/s, a busy machine does not inflate much."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def as_fast_as_possible(session: LiveSession, frames: list[np.ndarray], fps: float) -> dict:
    session.reset_neutral()
    base_ms, results = session.last_timestamp_ms + 1, []
    start, cpu_start = time.perf_counter(), time.process_time()
    for index, frame in enumerate(frames):
        results.append(session.process(frame, base_ms + round(index * 1000 / fps)))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"fps": len(frames) / seconds, "track_ms": float(np.median([r.track_ms for r in results])),
            "render_ms": float(np.median([r.render_ms for r in results])),
            "cpu_ms": cpu_seconds / len(frames) * 1000.0}  # fmt: skip


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


def through_the_space(frames: list[np.ndarray], repeats: int = 10) -> None:
    """Start ``python app.py`` on a free port, stream ``frames`` to /live, time /render_still."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="flexavatar-bench-") as tmp:
        env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
               "FLEXAVATAR_APP_TMP": tmp, "GRADIO_ANALYTICS_ENABLED": "False"}  # fmt: skip
        server = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + APP_START_TIMEOUT_S
            while True:
                try:
                    if httpx.get(url + "config", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the Space did not start (run `python app.py` to see why)")
                time.sleep(1)
            stream = LiveStream(url)
            stream.open(frames[0])
            stream.wait_outputs(1, timeout=120)  # the first frame also makes the example avatar
            server_cpu_s = process_cpu_seconds(server.pid)
            for index, frame in enumerate(frames[1:], start=2):
                stream.send(frame)
                stream.wait_outputs(index)
            server_cpu_s = process_cpu_seconds(server.pid) - server_cpu_s
            stream.close()
            arrived = np.array([t for t, _, _ in stream.outputs[1 : len(frames)]])
            round_trip = (arrived - np.array(stream.sent[1 : len(frames)])) * 1000.0
            fps = (len(frames) - 1) / (arrived[-1] - stream.sent[1])
            verdict = "meets" if fps >= TARGET_FPS else "BELOW"
            print(f"Space /live over HTTP (localhost), one frame in flight: {fps:.1f} frames/s ({verdict} the "
                  f"{TARGET_FPS:g} frames/s target; load {os.getloadavg()[0]:.1f}); camera frame out to avatar frame "
                  f"back: median {np.median(round_trip):.0f} ms, p90 {np.percentile(round_trip, 90):.0f} ms; server CPU "
                  f"{server_cpu_s / (len(frames) - 1) * 1000:.0f} ms per frame (all its threads)")  # fmt: skip
            http = httpx.Client(timeout=60)
            body = {"data": [None, 0.3, 0.7, 0.2, 0, 0, 0, 0, 20, 0]}  # example avatar, sliders, yaw 20°

            def still() -> None:
                reply = http.post(url + "gradio_api/run/render_still", json=body)
                http.get(reply.json()["data"][0]["url"]).raise_for_status()  # the PNG itself

            ms = median_ms(still, repeats=repeats)
            print(f"Space /render_still over HTTP (POST /gradio_api/run/render_still + PNG download): {ms:.0f} ms "
                  f"(median of {repeats}; target <= 150 ms)")  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flexavatar bench live")
    parser.add_argument("--media", default=str(MEDIA))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--loops", type=int, default=2, help="play the clip this many times")
    parser.add_argument("--app", action="store_true", help="also measure through the Space (starts app.py)")
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
              f"render {fast['render_ms']:.1f} ms per frame, median; {fast['cpu_ms']:.0f} ms CPU per frame)")  # fmt: skip
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
    if fast["fps"] < TARGET_FPS:
        print("note: below the 15 frames/s target; on a shared machine, re-run when it is quiet")
    if args.app:
        through_the_space(frames[: len(frames) // args.loops])

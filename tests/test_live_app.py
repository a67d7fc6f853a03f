"""The Space's play tabs through a real server on localhost: the ``/live`` stream fed frame by
frame over Gradio's own streaming protocol (what the browser does), ``/render_still`` and the
blend endpoints through gradio_client.

The stream client is :class:`flexavatar.eval.live_client.LiveStream` (the browser's protocol).
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest
from PIL import Image
from test_live import channel, mediapipe_scores

from flexavatar.eval.live_client import LiveStream, as_sent
from flexavatar.live import TARGET_FPS
from flexavatar.video import iter_frames


def frames_shown(stats: str) -> int:
    return int(re.search(r"(\d+) frames shown", stats).group(1))


@pytest.fixture(scope="module")
def driving_frames(shared_media):
    return list(iter_frames(shared_media / "single_face.mp4"))


@pytest.mark.slow
def test_live_endpoint_streams_in_order_and_follows_the_driver(app_url, driving_frames):
    """Each frame sent after the previous answer (a browser on a fast link): every frame comes
    back, in order; the re-tracked avatar blinks and smiles with the driver (r >= 0.8, see below)."""
    stream = LiveStream(app_url)
    stream.open(driving_frames[0])
    stream.wait_outputs(1, timeout=120)  # the first frame also makes the example avatar
    start = time.perf_counter()
    for index, frame in enumerate(driving_frames[1:], start=2):
        stream.send(frame)
        stream.wait_outputs(index)
    seconds = time.perf_counter() - start
    stream.close()
    counts = [frames_shown(stats) for _, _, stats in stream.outputs[: len(driving_frames)]]
    assert counts == list(range(1, len(driving_frames) + 1)), "outputs out of order or missing"
    fps, load = (len(driving_frames) - 1) / seconds, os.getloadavg()[0]
    print(f"/live over HTTP: {fps:.1f} frames/s, {1000 / fps:.0f} ms per frame end to end (target {TARGET_FPS:g}, "
          f"asserted when the load is below 1: load {load:.1f})")  # fmt: skip
    rendered = [stream.image(i) for i in range(len(driving_frames))]
    # the driver as the server saw it (JPEG, as a browser sends it) against the avatar it sent back
    driver, avatar = mediapipe_scores([as_sent(f) for f in driving_frames]), mediapipe_scores(rendered)
    # The frames reach the server at its own pace (a few per second on a loaded machine), and
    # MediaPipe's VIDEO-mode smoothing is time-based: at that pace the avatar may trail by one
    # frame (in-process, 150 ms steps: blink r 0.82 at lag 0, 0.87 at lag 1; 33 ms steps: 0.86;
    # test_live.py asserts lag 0 at camera pace). Followed = r >= 0.8 within one frame.
    for names in (("eyeBlinkLeft", "eyeBlinkRight"), ("mouthSmileLeft", "mouthSmileRight")):
        a, b = channel(driver, *names), channel(avatar, *names)
        r = [np.corrcoef(a[: len(a) - lag], b[lag:])[0, 1] for lag in (0, 1)]
        print(f"{names[0]}: r = {r[0]:.2f} (lag 0), {r[1]:.2f} (lag 1 frame)")
        assert max(r) >= 0.8, f"{names}: re-tracked avatar vs driver r = {r}"
    if load < 1.0:  # 2 shared cores: the speed target holds on a quiet machine (bench live --app prints it)
        assert fps >= TARGET_FPS, f"/live over HTTP: {fps:.1f} frames/s on a quiet machine (load {load:.1f})"


@pytest.mark.slow
def test_live_endpoint_drops_frames_instead_of_queueing(app_url, driving_frames):
    """A camera at 60 frames/s, faster than the server: frames are dropped, the answers stay in
    order, and when the camera stops the last answer comes at once (no backlog)."""
    stream = LiveStream(app_url)
    stream.open(driving_frames[0])
    stream.wait_outputs(1, timeout=120)
    sent = 0
    for frame in driving_frames[1:]:
        stream.send(frame)
        sent += 1
        time.sleep(1 / 60)
    stopped = time.perf_counter()
    time.sleep(0.5)
    stream.close()
    counts = [frames_shown(stats) for _, _, stats in stream.outputs]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert len(stream.outputs) - 1 < sent, "every frame was rendered: nothing was dropped"
    late = [t - stopped for t, _, _ in stream.outputs if t > stopped]
    assert len(late) <= 2 and all(t < 1.0 for t in late), f"answers after the camera stopped: {late}"


@pytest.mark.slow
def test_a_second_viewer_waits_for_the_first(app_url, driving_frames):
    """One live session at a time on 2 CPU cores: a second viewer queues (it is not served
    frames from a shared session), and starts as soon as the first one ends."""
    from flexavatar import space_live

    assert space_live.LIVE_SESSIONS == 1
    first, second = LiveStream(app_url), LiveStream(app_url)
    first.open(driving_frames[0])
    first.wait_outputs(1, timeout=120)
    second.open(driving_frames[10])
    for index, frame in enumerate(driving_frames[1:6], start=2):
        first.send(frame)
        first.wait_outputs(index)
    assert not second.started.wait(1.0), "the second viewer was served while the first one streamed"
    first.close()
    assert second.started.wait(30)
    second.wait_outputs(1)
    second.close()
    assert frames_shown(second.outputs[0][2]) == 1  # its own session, not the first viewer's


def test_live_endpoint_settings(app_module):
    """Live sessions: their own queue, a per-session time limit and a concurrency limit."""
    from flexavatar import space_live

    dependency = next(d for d in app_module.demo.config["dependencies"] if d.get("api_name") == "live")
    assert dependency["connection"] == "stream" and dependency["stream_every"] == space_live.STREAM_EVERY_S
    assert dependency["time_limit"] == space_live.LIVE_SECONDS
    fn = next(f for f in app_module.demo.fns.values() if f.api_name == "live")
    assert fn.concurrency_limit == space_live.LIVE_SESSIONS and fn.concurrency_id == "live"


def test_live_session_ends_after_its_time(app_module, driving_frames):
    """Per viewer: a session past its time limit is closed and a fresh one starts."""
    from flexavatar import space_live

    photo = app_module.EXAMPLES / "astronaut.png"
    _, _, state = space_live.live_frame(app_module.MODEL, driving_frames[0], None, None, photo, seconds=0.2)
    first = state.session
    time.sleep(0.3)
    _, stats, state = space_live.live_frame(app_module.MODEL, driving_frames[1], None, state, photo, seconds=0.2)
    assert state.session is not first and first.landmarker is None and "1 frames shown" in stats
    space_live.close_live(state)


@pytest.fixture(scope="module")
def client(app_url, tmp_path_factory):
    from gradio_client import Client

    return Client(app_url, verbose=False, download_files=str(tmp_path_factory.mktemp("play-downloads")))


def test_play_api_names_and_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = {name: [p["parameter_name"] for p in api[name]["parameters"]]
              for name in ("/render_still", "/blend_still", "/blend_turntable")}  # fmt: skip
    assert params == {
        "/render_still": ["avatar_file", "jaw_open", "smile", "blink", "brows_up", "frown", "pucker", "eyes_wide",
                          "yaw_deg", "pitch_deg", "gaze_left", "gaze_up"],
        "/blend_still": ["first_avatar", "second_avatar", "weight"],
        "/blend_turntable": ["first_avatar", "second_avatar", "weight", "turntable_frames"],
    }  # fmt: skip
    assert "/live" in api


def test_render_still_endpoint(client):
    """/render_still: sliders in, PNG out; the smile slider changes the mouth."""
    neutral = client.predict(avatar_file=None, api_name="/render_still")
    start = time.perf_counter()
    smiling = client.predict(avatar_file=None, smile=1.0, jaw_open=0.4, yaw_deg=10, api_name="/render_still")
    print(f"/render_still round trip: {(time.perf_counter() - start) * 1000:.0f} ms (load {os.getloadavg()[0]:.1f})")
    a, b = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (neutral, smiling))
    assert Image.open(smiling).format == "PNG" and a.shape == (256, 256, 3) and a.std() > 5
    assert np.abs(a - b).mean() > 1


def test_docs_snippets_for_the_play_endpoints(client, app_module, tmp_path):
    """README's /render_still and /blend_still snippets, verbatim, with an avatar made here."""
    from gradio_client import handle_file
    from test_app import doc_snippets

    from flexavatar import pipeline

    avatar_file = str(pipeline.create_avatar([app_module.EXAMPLES / "astronaut.png"], model=app_module.MODEL)
                      .save(tmp_path / "me.avatar"))  # fmt: skip
    ns = {"client": client, "handle_file": handle_file, "avatar_file": avatar_file}
    for snippet in doc_snippets()[4:]:
        exec(snippet, ns)  # noqa: S102 - our own documentation
    for key in ("still_png", "blend_png"):
        image = Image.open(ns[key])
        assert image.format == "PNG" and image.size == (256, 256) and np.asarray(image).std() > 5


@pytest.mark.slow
def test_blend_endpoints(client, app_module, shared_media, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from flexavatar import pipeline

    other = pipeline.create_avatar([shared_media / "single_face.jpg"], model=app_module.MODEL).save(tmp_path / "b.avatar")
    stills = [np.asarray(Image.open(client.predict(first_avatar=None, second_avatar=handle_file(str(other)),
                                                   weight=w, api_name="/blend_still")).convert("RGB")).astype(int)
              for w in (0.0, 0.5, 1.0)]  # fmt: skip
    assert np.abs(stills[0] - stills[2]).mean() > 2  # two different people
    assert min(np.abs(stills[1] - stills[0]).mean(), np.abs(stills[1] - stills[2]).mean()) > 1  # between them
    video = client.predict(first_avatar=None, second_avatar=handle_file(str(other)), weight=0.5, turntable_frames=8,
                           api_name="/blend_turntable")  # fmt: skip
    from flexavatar.video import probe_video

    assert probe_video(video).frame_count == 8
    with pytest.raises(AppError, match="No avatar file given"):
        client.predict(first_avatar=None, second_avatar=None, weight=0.5, api_name="/blend_still")

"""The Gradio app (app.py) through a real server on localhost and gradio_client.

Covers every named endpoint (the docs' snippets, run verbatim), bad input through the API
(the pipeline's message reaches the client, the app keeps serving), concurrent requests and
the cleanup of per-request files. Settings are kept small (few frames, short driving clips):
the pipeline is slow on a shared CPU.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "README.md"  # its "Calling it from code" snippets run verbatim
EXAMPLES = REPO / "examples"
TIMEOUT_S = 420


@pytest.fixture(scope="module")
def client(app_url, tmp_path_factory):
    from gradio_client import Client

    return Client(app_url, verbose=False, download_files=str(tmp_path_factory.mktemp("client-downloads")))


@pytest.fixture(scope="module")
def avatar_file(client) -> str:
    """An .avatar made by the app (downloaded to the client side)."""
    from gradio_client import handle_file

    avatar, _, _ = client.predict(
        photos=[handle_file(str(EXAMPLES / "astronaut.png"))], refine_seconds=0, api_name="/create_avatar"
    )
    return avatar


def frame_count(path) -> int:
    from flexavatar.video import probe_video

    return probe_video(path).frame_count


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def turntable_works(client, avatar_file) -> None:
    """The cheapest real request: the app still serves after whatever came before."""
    from gradio_client import handle_file

    video = client.predict(avatar_file=handle_file(avatar_file), turntable_frames=8, api_name="/turntable")
    assert frame_count(video) == 8


# ---------------------------------------------------------------------------------- fast units
def test_parse_colour():
    from flexavatar.errors import InvalidInputError
    from flexavatar.options import parse_colour

    assert parse_colour("#ffffff") == (255, 255, 255)
    assert parse_colour("#0a0") == (0, 170, 0)
    assert parse_colour("rgba(12, 34, 56, 1)") == (12, 34, 56)
    assert parse_colour(None) == (255, 255, 255)
    with pytest.raises(InvalidInputError, match="not a colour"):
        parse_colour("blue-ish")


def test_spaces_gpu_is_a_noop_off_zerogpu(app_module):
    import spaces

    @spaces.GPU(duration=10)
    def double(x):
        return 2 * x

    assert double(21) == 42
    assert not hasattr(app_module._generate, "zerogpu")  # plain function here, GPU wrapper on ZeroGPU


def test_sweep_keeps_running_requests_and_young_folders(tmp_path):
    from flexavatar import space

    with space.request_dir(root=tmp_path) as running:
        old = tmp_path / "req-old"
        old.mkdir()
        (old / "turntable.mp4").write_bytes(b"x")
        past = time.time() - 3600
        import os

        os.utime(old, (past, past))
        os.utime(running, (past, past))  # running for an hour: still kept
        young = tmp_path / "req-young"
        young.mkdir()
        assert space.sweep_outputs(max_age_s=600, root=tmp_path) == 1
        assert running.is_dir() and young.is_dir() and not old.exists()
    assert space.sweep_outputs(max_age_s=0, root=tmp_path) == 2  # finished: now both go


def test_example_files_are_small_and_trackable():
    from flexavatar.tracking import track_video
    from flexavatar.video import probe_video

    video = EXAMPLES / "driving.mp4"
    assert video.stat().st_size < 1_000_000 and (EXAMPLES / "astronaut.png").is_file()
    info = probe_video(video)
    assert info.codec == "h264" and info.duration_s == pytest.approx(3.0, abs=0.1)
    assert track_video(video).has_face.all()


def test_api_names_and_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    play = {"/live", "/render_still", "/blend_still", "/blend_turntable"}  # the play tabs: tests/test_live_app.py
    assert play <= set(api)
    api = {name: ep for name, ep in api.items() if name not in play}
    params = {name: [p["parameter_name"] for p in ep["parameters"]] for name, ep in api.items()}
    assert params == {
        "/create_avatar": ["photos", "refine_seconds"],
        "/turntable": ["avatar_file", "turntable_frames", "resolution", "background"],
        "/reenact": [
            "avatar_file",
            "driving_video",
            "relative_motion",
            "smoothing",
            "side_by_side",
            "resolution",
            "background",
            "max_seconds",
            "neutral_expression",
            "follow_translation",
        ],
        "/generate": [
            "photos",
            "driving_video",
            "refine_seconds",
            "resolution",
            "turntable_frames",
            "relative_motion",
            "smoothing",
            "side_by_side",
            "background",
            "max_seconds",
            "neutral_expression",
            "follow_translation",
        ],
    }
    returns = {name: [r["label"] for r in ep["returns"]] for name, ep in api.items()}
    assert returns == {
        "/create_avatar": ["Download the avatar (.avatar)", "Preview image (front view)", "Notes"],
        "/turntable": ["Turntable video"],
        "/reenact": ["Reenactment video", "Notes"],
        "/generate": [
            "Turntable video",
            "Reenactment video",
            "Download the Gaussian splat (.ply)",
            "Download the avatar (.avatar)",
            "Notes",
        ],
    }
    # resolution is an int choice; everything but the photos / avatar file has a default
    resolution = next(p for p in api["/turntable"]["parameters"] if p["parameter_name"] == "resolution")
    assert resolution["type"]["enum"] == [256, 512]
    optional = {n: [p["parameter_name"] for p in ep["parameters"] if not p["parameter_has_default"]]
                for n, ep in api.items()}  # fmt: skip
    assert optional == {"/create_avatar": ["photos"], "/turntable": ["avatar_file"],
                        "/reenact": ["avatar_file", "driving_video"], "/generate": ["photos"]}  # fmt: skip


# ------------------------------------------------------------------------ endpoints (docs snippets)
def doc_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)


@pytest.mark.slow
def test_docs_snippets_call_every_endpoint(app_url, monkeypatch, tmp_path):
    """Run the README snippets verbatim (Client redirected to the test server), check the files."""
    import gradio_client

    from flexavatar import pipeline

    real_client = gradio_client.Client
    monkeypatch.setattr(
        gradio_client,
        "Client",
        lambda src, **kw: real_client(app_url, verbose=False, download_files=str(tmp_path), **kw),
    )
    monkeypatch.chdir(REPO)
    snippets = doc_snippets()
    assert len(snippets) == 6  # the last two (play tabs) run in tests/test_live_app.py
    ns: dict = {}
    notes = []
    for snippet in snippets[:3]:  # create_avatar -> turntable, reenact with the created avatar
        exec(snippet, ns)  # noqa: S102 - our own documentation
        notes.append(ns.get("notes"))
    created = pipeline.read_avatar(ns["avatar_file"])
    preview = Image.open(ns["preview_png"])
    assert preview.format == "PNG" and preview.size == (256, 256)
    assert np.asarray(preview).std() > 5  # a rendered head, not a blank image
    assert frame_count(ns["turntable_mp4"]) == 24
    assert frame_count(ns["reenactment_mp4"]) == 24  # 1.0 s of the 24 fps example

    # the reenactment was cut at max_seconds: the notes say so, and where to change it
    assert "tracked the first 24 of 72 frames" in notes[2] and "max_seconds" in notes[2], notes
    exec(snippets[3], ns)  # noqa: S102 - /generate
    assert "Finished in" in ns["notes"]
    assert frame_count(ns["turntable_mp4"]) == 24
    assert frame_count(ns["reenactment_mp4"]) == 24
    generated = pipeline.read_avatar(ns["avatar_file"])
    assert generated.static_maps.shape == created.static_maps.shape
    header = Path(ns["ply_file"]).read_bytes()[:2000]
    assert header.startswith(b"ply") and b"f_dc_0" in header and b"opacity" in header


@pytest.mark.slow
def test_create_avatar_with_refinement(client, avatar_file):
    from gradio_client import handle_file

    from flexavatar import pipeline

    refined, preview, _ = client.predict(
        photos=[handle_file(str(EXAMPLES / "astronaut.png"))], refine_seconds=2, api_name="/create_avatar"
    )
    plain_maps = pipeline.read_avatar(avatar_file).static_maps
    refined_maps = pipeline.read_avatar(refined).static_maps
    assert refined_maps.shape == plain_maps.shape and not np.allclose(
        refined_maps.numpy(), plain_maps.numpy()
    )
    assert Image.open(preview).size == (256, 256)


# ------------------------------------------------------------------------------------ bad input
def _bad_inputs(tmp: Path, media: Path) -> dict:
    """name -> (endpoint, kwargs with paths, how the pipeline itself is called)."""
    plain = tmp / "plain_wall.png"
    ramp = np.linspace(60, 200, 320 * 240, dtype=np.float32).reshape(240, 320)
    Image.fromarray(np.stack([ramp, ramp * 0.9, ramp * 0.8], -1).astype(np.uint8)).save(plain)
    text = tmp / "holiday_notes.png"
    text.write_text("this is a text file, not a photo\n" * 20)
    many = []
    for i in range(5):
        many.append(tmp / f"photo_{i}.png")
        shutil.copy(EXAMPLES / "astronaut.png", many[-1])
    fake = tmp / "my_head.avatar"
    fake.write_bytes(b'{"not": "an avatar"}' * 10)
    return {
        "no_face_photo": ("/create_avatar", {"photos": [plain]}, "create", [plain]),
        "text_renamed_png": ("/create_avatar", {"photos": [text]}, "create", [text]),
        "five_photos": ("/create_avatar", {"photos": many}, "create", many),
        "fake_avatar": ("/turntable", {"avatar_file": fake}, "avatar", fake),
        "no_face_driving": (
            "/reenact",
            {"driving_video": media / "no_face.mp4", "max_seconds": 2.0},
            "reenact",
            media / "no_face.mp4",
        ),
    }


def _pipeline_message(kind: str, arg, avatar_file: str, tmp: Path, max_seconds=None) -> str:
    """What the pipeline itself says about this input (the client must get the same text)."""
    from flexavatar import pipeline
    from flexavatar.errors import InvalidInputError

    with pytest.raises(InvalidInputError) as info:
        if kind == "create":
            pipeline.create_avatar([str(p) for p in arg])
        elif kind == "avatar":
            pipeline.read_avatar(arg)
        else:
            avatar = pipeline.read_avatar(avatar_file)
            pipeline.reenact(avatar, arg, max_seconds=max_seconds, out_path=tmp / "never.mp4")
    return str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["no_face_photo", "text_renamed_png", "five_photos", "fake_avatar", "no_face_driving"]
)
def test_bad_input_gives_the_pipeline_message(client, avatar_file, shared_media, tmp_path, case):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    endpoint, kwargs, kind, arg = _bad_inputs(tmp_path, shared_media)[case]
    expected = _pipeline_message(kind, arg, avatar_file, tmp_path, kwargs.get("max_seconds"))
    call = {k: ([handle_file(str(p)) for p in v] if k == "photos" else v) for k, v in kwargs.items()}
    if "driving_video" in call:
        call["driving_video"] = handle_file(str(call["driving_video"]))
        call["avatar_file"] = handle_file(avatar_file)
    if "avatar_file" in call and isinstance(call["avatar_file"], Path):
        call["avatar_file"] = handle_file(str(call["avatar_file"]))
    with pytest.raises(AppError) as info:
        client.predict(**call, api_name=endpoint)
    assert str(info.value) == expected, (case, str(info.value))
    assert Path(str(arg if kind != "create" else arg[0])).name in str(info.value) or case == "five_photos"
    turntable_works(client, avatar_file)


def test_missing_inputs_are_explained(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No avatar file given"):
        client.predict(avatar_file=None, driving_video=None, api_name="/reenact")
    with pytest.raises(AppError, match="No photo given"):
        client.predict(photos=[], api_name="/create_avatar")


@pytest.mark.slow
def test_unexpected_error_is_generic_logged_and_app_keeps_serving(
    client, avatar_file, app_module, monkeypatch, caplog
):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded at 0xdeadbeef")

    monkeypatch.setattr(app_module.pipeline, "turntable", broken)
    with pytest.raises(AppError) as info:
        client.predict(avatar_file=handle_file(avatar_file), turntable_frames=8, api_name="/turntable")
    assert str(info.value) == app_module.GENERIC_ERROR.format(action="rendering the turntable")
    assert "deadbeef" not in str(info.value)
    assert "renderer exploded" in caplog.text  # traceback logged on the server
    monkeypatch.undo()
    turntable_works(client, avatar_file)


# ---------------------------------------------------------------------------- concurrency, cleanup
@pytest.mark.slow
def test_concurrent_generate_gets_separate_correct_results(
    app_url, app_module, shared_media, monkeypatch, tmp_path
):
    """Two clients at once: both run together (concurrency 2 in tests), each in its own folder,
    each gets the results of its own input."""
    from gradio_client import Client, handle_file

    from flexavatar import pipeline

    running, peak, folders = [0], [0], []
    lock = threading.Lock()
    real_generate = app_module._generate

    def counting(photos, driving, options, out, progress):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            folders.append(out)
        try:
            return real_generate(photos, driving, options, out, progress)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(app_module, "_generate", counting)
    jobs = {
        "a": dict(
            photos=[handle_file(str(EXAMPLES / "astronaut.png"))],
            driving_video=handle_file(str(shared_media / "single_face.mp4")),
            turntable_frames=8,
            max_seconds=0.5,
            background="#ffffff",
        ),
        "b": dict(
            photos=[handle_file(str(shared_media / "single_face.jpg"))],
            driving_video=handle_file(str(EXAMPLES / "driving.mp4")),
            turntable_frames=16,
            max_seconds=0.5,
            background="#000000",
        ),
    }
    submitted = {
        key: Client(app_url, verbose=False, download_files=str(tmp_path / key)).submit(
            **kw, api_name="/generate"
        )
        for key, kw in jobs.items()
    }
    results = {key: job.result(timeout=TIMEOUT_S) for key, job in submitted.items()}

    assert peak[0] == 2, "the two requests did not overlap"
    assert len({str(f) for f in folders}) == 2
    (tt_a, re_a, ply_a, av_a, _), (tt_b, re_b, ply_b, av_b, _) = results["a"], results["b"]
    assert (frame_count(tt_a), frame_count(tt_b)) == (8, 16)
    assert (frame_count(re_a), frame_count(re_b)) == (15, 12)  # 0.5 s at 30 fps / 24 fps
    from flexavatar.video import probe_video

    assert sha256(ply_a) != sha256(ply_b)
    assert probe_video(re_a).has_audio and not probe_video(re_b).has_audio
    avatar_a, avatar_b = pipeline.read_avatar(av_a), pipeline.read_avatar(av_b)
    assert not np.allclose(avatar_a.static_maps.cpu().numpy(), avatar_b.static_maps.cpu().numpy())
    # every downloaded file is byte-identical to the one its own request folder holds
    by_folder = {sha256(p): folder for folder in folders for p in Path(folder).iterdir()}
    for key, (*files, _notes) in results.items():
        owners = {by_folder[sha256(p)] for p in files}
        assert len(owners) == 1, f"{key}'s results come from several request folders"
    assert by_folder[sha256(tt_a)] != by_folder[sha256(tt_b)]


@pytest.mark.slow
def test_finished_request_files_are_cleaned_up(client, avatar_file, app_module, app_url, monkeypatch):
    """Own request folders: swept once older than OUTPUT_MAX_AGE_S. Gradio's cached copies of
    uploads and results: deleted by ``delete_cache``'s schedule."""
    from gradio import route_utils

    from flexavatar import space

    root = space.OUTPUT_ROOT
    monkeypatch.setattr(space, "OUTPUT_MAX_AGE_S", 0.0)
    for _ in range(2):
        turntable_works(client, avatar_file)
        left = sorted(root.glob("req-*"))
        assert len(left) == 1, left  # only the request that just finished (swept at the next one)
    assert space.sweep_outputs() == 1 and not list(root.glob("req-*"))

    demo = app_module.demo
    assert demo.delete_cache == app_module.DELETE_CACHE
    cached = [Path(f) for s in demo.temp_file_sets for f in s if Path(f).exists()]
    assert any(p.suffix == ".mp4" for p in cached)
    route_utils.delete_files_created_by_app(demo, 0)  # what the schedule runs every DELETE_CACHE[0] s
    examples = set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()))
    left = {f for s in demo.temp_file_sets for f in s if Path(f).exists()}
    assert left <= examples, left - examples  # only the gr.Examples files stay


@pytest.mark.slow
def test_repeated_generate_keeps_memory_and_folders_bounded(client, app_module, monkeypatch):
    """Five /generate requests after a first one: the server's RSS (this process) stays within
    a few MB per request and only the last request's folder is kept. The long version is
    ``python -m flexavatar bench soak`` (50 requests against ``python app.py``)."""
    import gc

    from gradio_client import handle_file

    from flexavatar import space
    from flexavatar.eval.bench_soak import process_rss_mb

    monkeypatch.setattr(space, "OUTPUT_MAX_AGE_S", 0.0)
    call = dict(photos=[handle_file(str(EXAMPLES / "astronaut.png"))],
                driving_video=handle_file(str(EXAMPLES / "driving.mp4")), turntable_frames=8, max_seconds=1.0)  # fmt: skip
    client.predict(**call, api_name="/generate")
    gc.collect()
    start = process_rss_mb(os.getpid())
    for _ in range(5):
        client.predict(**call, api_name="/generate")
        assert len(list(space.OUTPUT_ROOT.glob("req-*"))) == 1  # the previous request's folder is gone
    gc.collect()
    growth = process_rss_mb(os.getpid()) - start
    print(f"RSS growth over 5 /generate requests: {growth:+.1f} MiB")
    assert growth < 5 * 5.0, f"RSS grew {growth:.1f} MiB over 5 requests"

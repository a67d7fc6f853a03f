"""FlexAvatar Space: 1-4 portrait photos -> animatable 3D Gaussian head avatar.

A thin Gradio layer over :mod:`flexavatar.pipeline`: every button and API endpoint calls
the pipeline, maps bad input (:class:`~flexavatar.errors.InvalidInputError`) to a
``gr.Error`` with the pipeline's message and writes its files into a per-request folder.

Named API endpoints (``gradio_client``): ``/create_avatar``, ``/turntable``, ``/reenact``,
``/generate``; see README.md "Calling it from code". Run locally with ``python app.py``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see flexavatar/__init__.py
import gradio as gr  # noqa: E402
import spaces  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from flexavatar import pipeline  # noqa: E402
from flexavatar.errors import InvalidInputError  # noqa: E402
from flexavatar.export import load_ply, save_ply  # noqa: E402

log = logging.getLogger("flexavatar.app")

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"
ON_GPU = torch.cuda.is_available()

#: Where each request writes its files (one sub-folder per request).
OUTPUT_ROOT = Path(os.environ.get("FLEXAVATAR_APP_TMP") or Path(tempfile.gettempdir()) / "flexavatar-app")
#: Finished request folders older than this are deleted at the next request (Gradio has copied
#: the results into its own cache by then; ``delete_cache`` below ages those copies out).
OUTPUT_MAX_AGE_S = float(os.environ.get("FLEXAVATAR_OUTPUT_MAX_AGE_S", "600"))
#: Gradio's cache of uploads and results: swept every 15 min, files kept for 1 h.
DELETE_CACHE = (900, 3600)
#: Jobs run at once. The free Space has 2 vCPUs and one job already uses both.
CONCURRENCY = int(os.environ.get("FLEXAVATAR_CONCURRENCY", "1"))
QUEUE_MAX_SIZE = 20
MAX_UPLOAD = "200mb"  # per uploaded file

DEFAULT_FRAMES = 72 if ON_GPU else 48
DEFAULT_MAX_SECONDS = 30.0 if ON_GPU else 10.0
DEFAULT_REFINE_SECONDS = 10.0
PREVIEW_RESOLUTION = 256
#: The in-page 3D viewer (gsplat.js) orbits the origin at 5 units: show the ~0.3 m head 5x larger.
VIEWER_SCALE = 5.0
STAGES = {
    "tracking": "Finding the face in the photos",
    "encoding": "Building the 3D avatar",
    "refine": "Refining the avatar",
    "turntable": "Rendering the turntable",
    "tracking video": "Tracking the driving video",
    "rendering": "Rendering the reenactment",
}
GENERIC_ERROR = "Something went wrong while {action}. Please try again; if it keeps failing, try other photos or another video."

HEADER = """
# FlexAvatar: a 3D head avatar from 1–4 photos

**Upload** 1–4 clear, frontal-ish photos of **one person** (face visible, not too small; different
angles or expressions help) and a **short video of a talking face** to drive the avatar.
**You get** a 360° turntable video, the avatar re-enacting the video (with its sound), an interactive
3D Gaussian-splat view and downloads: a `.ply` splat for any 3DGS viewer and a `.avatar` file you can
upload again below to animate the same avatar without recomputing it.
No camera poses or expression labels needed. On the free CPU machine a run takes a minute or two.
"""

MODEL = pipeline.load_model()  # loaded once, at start-up


# ------------------------------------------------------------------------------------ helpers
def user_errors(action: str) -> Callable:
    """Decorator: pipeline input errors -> ``gr.Error(message)``; anything else -> a short
    generic ``gr.Error`` (traceback logged). The app keeps serving either way."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except InvalidInputError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            except Exception:
                log.exception("%s failed", fn.__name__)
                raise gr.Error(GENERIC_ERROR.format(action=action), print_exception=False) from None

        return wrapper

    return decorate


_active: set[Path] = set()
_active_lock = threading.Lock()


def sweep_outputs(max_age_s: float | None = None) -> int:
    """Delete request folders under :data:`OUTPUT_ROOT` not touched for ``max_age_s`` seconds
    (default :data:`OUTPUT_MAX_AGE_S`), except those of requests still running; returns how many."""
    max_age_s = OUTPUT_MAX_AGE_S if max_age_s is None else max_age_s
    if not OUTPUT_ROOT.is_dir():
        return 0
    now, removed = time.time(), 0
    with _active_lock:
        for folder in OUTPUT_ROOT.glob("req-*"):
            try:
                if folder in _active or now - folder.stat().st_mtime < max_age_s:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


@contextmanager
def request_dir() -> Iterator[Path]:
    """A fresh folder for one request's files (old ones are swept first). Its mtime is
    refreshed when the request ends, so the sweep's age counts from then."""
    sweep_outputs()
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="req-", dir=OUTPUT_ROOT))
    with _active_lock:
        _active.add(folder)
    try:
        yield folder
    finally:
        with _active_lock:
            _active.discard(folder)
        if folder.exists():
            os.utime(folder)


def progress_callback(progress: gr.Progress) -> pipeline.Progress:
    """Adapt Gradio's progress bar to the pipeline's ``progress(stage, fraction)``."""

    def report(stage: str, fraction: float) -> None:
        progress(fraction, desc=STAGES.get(stage, stage.capitalize()))

    return report


def show_warnings(report: dict) -> None:
    """Show the pipeline's warnings (blurry photo, video cut, ...) as toasts."""
    for message in report.get("warnings") or []:
        gr.Warning(str(message))


def parse_colour(value: str | None) -> tuple[int, int, int]:
    """``#rgb`` / ``#rrggbb`` / ``rgb(a)(r, g, b[, a])`` (what gr.ColorPicker sends) -> RGB 0-255."""
    text = (value or "#ffffff").strip()
    hex_match = re.fullmatch(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})", text)
    if hex_match:
        digits = hex_match.group(1)
        digits = "".join(c * 2 for c in digits) if len(digits) == 3 else digits[:6]
        return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))
    rgb_match = re.fullmatch(r"rgba?\(([^)]*)\)", text)
    if rgb_match:
        parts = [p.strip() for p in rgb_match.group(1).split(",")]
        if len(parts) >= 3:
            try:
                return tuple(int(round(min(max(float(p), 0.0), 255.0))) for p in parts[:3])
            except ValueError:
                pass
    raise InvalidInputError(f"Background colour {value!r} is not a colour. Use a hex colour such as #ffffff.")


def file_path(value) -> str | None:
    """A Gradio file value (path string or FileData-like) -> path string."""
    if value is None or isinstance(value, str):
        return value
    return getattr(value, "path", None) or getattr(value, "name", None) or str(value)


def photo_paths(photos) -> list[str]:
    """The uploaded photos as a list of paths (the pipeline checks the count and content)."""
    if photos is None:
        return []
    if isinstance(photos, (str, os.PathLike)):
        photos = [photos]
    return [file_path(p) for p in photos]


def require_avatar_file(avatar_file) -> str:
    """The uploaded .avatar path, or a clear error when none was given."""
    path = file_path(avatar_file)
    if not path:
        raise InvalidInputError(
            "No avatar file given. Create an avatar first, or upload a .avatar file saved earlier."
        )
    return path


def require_video(driving_video) -> str:
    """The uploaded driving video path, or a clear error when none was given."""
    path = file_path(driving_video)
    if not path:
        raise InvalidInputError(
            "No driving video given. Upload a short video of a talking face (MP4, MOV, WebM)."
        )
    return path


def save_preview(avatar, path: Path) -> Path:
    """A cheap PNG preview: the first frame of the turntable (front view, neutral expression)."""
    camera = pipeline.turntable_cameras(MODEL, 1, 10.0, PREVIEW_RESOLUTION)
    with torch.no_grad():
        rgb, _ = MODEL.render(avatar.to(MODEL.device), camera, torch.zeros(1, 57, device=MODEL.device))
    Image.fromarray((rgb[0].clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()).save(path)
    return path


@user_errors("showing the 3D view")
def viewer_ply(ply_file) -> str | None:
    """A copy of the avatar's ``.ply`` for the in-page viewer (Gradio's gsplat.js renderer), which
    orbits the origin from 5 units away: the ~0.3 m head (already centred and upright, see
    ``pipeline.export_ply``) is scaled by :data:`VIEWER_SCALE` to fill the view."""
    path = file_path(ply_file)
    if not path:
        return None
    means, quats, scales, opacities, colors = load_ply(path)
    with request_dir() as out:
        return str(save_ply(out / "avatar_view.ply", means * VIEWER_SCALE, quats, scales * VIEWER_SCALE, opacities, colors))


# ------------------------------------------------------------------------------- GPU-bound work
# On ZeroGPU, @spaces.GPU runs these in a GPU worker; only gr.Error crosses back with its message,
# hence @user_errors inside it too. Off ZeroGPU, spaces.GPU returns the function unchanged.
@spaces.GPU(duration=120)
@user_errors("creating the avatar")
def _create(photos: list[str], refine_seconds: float, out: Path, progress) -> tuple[str, str]:
    report: dict = {}
    avatar = pipeline.create_avatar(
        photos,
        refine_seconds=float(refine_seconds or 0),
        model=MODEL,
        progress=progress_callback(progress),
        report=report,
    )
    show_warnings(report)
    return str(avatar.save(out / "avatar.avatar")), str(save_preview(avatar, out / "preview.png"))


@spaces.GPU(duration=60)
@user_errors("rendering the turntable")
def _turntable(avatar_file: str, frames: int, resolution: int, background, out: Path, progress) -> str:
    avatar = pipeline.read_avatar(avatar_file, model=MODEL)
    return str(
        pipeline.turntable(
            avatar,
            frames=int(frames),
            resolution=int(resolution),
            background=background,
            out_path=out / "turntable.mp4",
            progress=progress_callback(progress),
            model=MODEL,
        )
    )


@spaces.GPU(duration=180)
@user_errors("animating the avatar")
def _reenact(avatar_file: str, driving: str, options: dict, out: Path, progress) -> str:
    avatar = pipeline.read_avatar(avatar_file, model=MODEL)
    report: dict = {}
    path = pipeline.reenact(
        avatar,
        driving,
        out_path=out / "reenactment.mp4",
        progress=progress_callback(progress),
        model=MODEL,
        report=report,
        **options,
    )
    show_warnings(report)
    return str(path)


@spaces.GPU(duration=240)
@user_errors("generating the avatar and videos")
def _generate(photos: list[str], driving: str | None, options: dict, out: Path, progress) -> dict:
    report: dict = {}
    paths = pipeline.run(
        photos, driving, out, progress=progress_callback(progress), model=MODEL, report=report, **options
    )
    show_warnings(report)
    return {k: str(v) for k, v in paths.items()}


# ------------------------------------------------------------------------------------ endpoints
@user_errors("creating the avatar")
def create_avatar(photos, refine_seconds: float = 0.0, progress=gr.Progress()) -> tuple[str, str]:
    """1-4 photos (+ refinement seconds, 0 = off) -> (.avatar file, PNG preview)."""
    with request_dir() as out:
        return _create(photo_paths(photos), refine_seconds, out, progress)


@user_errors("rendering the turntable")
def turntable(
    avatar_file,
    turntable_frames: int = DEFAULT_FRAMES,
    resolution: int = 256,
    background: str = "#ffffff",
    progress=gr.Progress(),
) -> str:
    """.avatar file (+ frames, resolution, background colour) -> 360° turntable mp4."""
    path, rgb = require_avatar_file(avatar_file), parse_colour(background)
    with request_dir() as out:
        return _turntable(path, turntable_frames, resolution, rgb, out, progress)


@user_errors("animating the avatar")
def reenact(
    avatar_file,
    driving_video,
    relative_motion: bool = True,
    smoothing: float = 0.5,
    side_by_side: bool = False,
    resolution: int = 256,
    background: str = "#ffffff",
    max_seconds: float = DEFAULT_MAX_SECONDS,
    progress=gr.Progress(),
) -> str:
    """.avatar file + driving video (+ options) -> reenactment mp4 (with the video's audio)."""
    path, driving = require_avatar_file(avatar_file), require_video(driving_video)
    options = dict(
        relative=bool(relative_motion),
        smoothing=float(smoothing),
        side_by_side=bool(side_by_side),
        resolution=int(resolution),
        background=parse_colour(background),
        max_seconds=float(max_seconds),
    )
    with request_dir() as out:
        return _reenact(path, driving, options, out, progress)


@user_errors("generating the avatar and videos")
def generate(
    photos,
    driving_video,
    refine_seconds: float = 0.0,
    resolution: int = 256,
    turntable_frames: int = DEFAULT_FRAMES,
    relative_motion: bool = True,
    smoothing: float = 0.5,
    side_by_side: bool = False,
    background: str = "#ffffff",
    max_seconds: float = DEFAULT_MAX_SECONDS,
    progress=gr.Progress(),
) -> tuple[str, str | None, str, str]:
    """Photos + driving video (+ options) -> (turntable mp4, reenactment mp4, .ply, .avatar).

    Without a driving video only the reenactment is skipped (None)."""
    options = dict(
        refine_seconds=float(refine_seconds or 0),
        resolution=int(resolution),
        turntable_frames=int(turntable_frames),
        relative=bool(relative_motion),
        smoothing=float(smoothing),
        side_by_side=bool(side_by_side),
        background=parse_colour(background),
        max_seconds=float(max_seconds),
    )
    driving = file_path(driving_video)
    with request_dir() as out:
        paths = _generate(photo_paths(photos), driving, options, out, progress)
    if driving is None:
        gr.Info("No driving video was given, so only the turntable was made.")
    return paths["turntable"], paths.get("reenactment"), paths["ply"], paths["avatar"]


# ------------------------------------------------------------------------------------------- UI
def _refine_toggled(enabled: bool) -> dict:
    return gr.update(value=DEFAULT_REFINE_SECONDS if enabled else 0, interactive=enabled)


def _example_rows() -> list[list]:
    photo, video = EXAMPLES / "astronaut.png", EXAMPLES / "driving.mp4"
    return [[[str(photo)], str(video)]] if photo.is_file() and video.is_file() else []


def build_demo() -> gr.Blocks:
    """The Blocks app: inputs left, results right; four named API endpoints."""
    private = dict(api_visibility="private", queue=False)
    with gr.Blocks(title="FlexAvatar", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(HEADER)
        with gr.Row():
            with gr.Column(scale=1):
                photos = gr.File(
                    label="Photos of one person (1–4)",
                    file_count="multiple",
                    file_types=["image"],
                    elem_id="photos",
                )
                gallery = gr.Gallery(
                    label="Your photos",
                    columns=4,
                    rows=1,
                    height=120,
                    object_fit="contain",
                    allow_preview=False,
                    interactive=False,
                    show_label=False,
                    elem_id="photo-gallery",
                )
                driving = gr.Video(
                    label="Driving video (a short clip of a talking face)",
                    sources=["upload"],
                    elem_id="driving",
                )
                with gr.Row():
                    refine = gr.Checkbox(label="Refine (sharper likeness, slower)", value=False)
                    refine_seconds = gr.Slider(
                        0,
                        60,
                        value=0,
                        step=5,
                        label="Refine seconds",
                        interactive=False,
                        elem_id="refine-seconds",
                    )
                with gr.Accordion("Advanced", open=False):
                    resolution = gr.Radio([256, 512], value=256, label="Video resolution (px)")
                    frames = gr.Slider(
                        8,
                        240,
                        value=DEFAULT_FRAMES,
                        step=8,
                        label="Turntable frames (24 fps)",
                        elem_id="turntable-frames",
                    )
                    max_seconds = gr.Slider(
                        0.5,
                        60,
                        value=DEFAULT_MAX_SECONDS,
                        step=0.5,
                        label="Use at most this many seconds of the driving video",
                        elem_id="max-seconds",
                    )
                    relative = gr.Checkbox(
                        value=True, label="Relative motion (transfer changes of expression and pose)"
                    )
                    smoothing = gr.Slider(0, 1, value=0.5, step=0.05, label="Motion smoothing")
                    side_by_side = gr.Checkbox(value=False, label="Side by side with the driving video")
                    background = gr.ColorPicker(value="#ffffff", label="Background colour")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    create_btn = gr.Button("Create avatar only", elem_id="create")
                with gr.Accordion("Animate a saved avatar", open=False):
                    avatar_in = gr.File(label="Avatar (.avatar)", file_types=[".avatar"], elem_id="avatar-in")
                    with gr.Row():
                        turntable_btn = gr.Button("Turntable", elem_id="turntable-btn")
                        reenact_btn = gr.Button("Reenact with the driving video", elem_id="reenact-btn")
                if _example_rows():
                    gr.Examples(
                        _example_rows(),
                        inputs=[photos, driving],
                        label="Example (photo: NASA, public domain; video: generated by FlexAvatar)",
                        cache_examples=False,
                    )
            with gr.Column(scale=2):
                with gr.Row():
                    turntable_out = gr.Video(
                        label="Turntable", autoplay=True, loop=True, elem_id="turntable-video"
                    )
                    reenact_out = gr.Video(label="Reenactment", autoplay=True, elem_id="reenact-video")
                viewer = gr.Model3D(
                    label="3D Gaussian avatar (drag to rotate, scroll to zoom)", height=420, elem_id="viewer"
                )
                with gr.Row():
                    preview_out = gr.Image(
                        label="Preview (front view)",
                        type="filepath",
                        height=200,
                        visible=False,
                        elem_id="preview",
                    )
                    ply_out = gr.File(label="Gaussian splat (.ply)", elem_id="ply-file")
                    avatar_out = gr.File(label="Avatar (.avatar, reusable)", elem_id="avatar-file")

        photos.change(lambda files: photo_paths(files) or None, photos, gallery, **private)
        refine.input(_refine_toggled, refine, refine_seconds, **private)
        refine_seconds.release(lambda s: gr.update(value=s > 0), refine_seconds, refine, **private)
        options = [resolution, frames, relative, smoothing, side_by_side, background, max_seconds]
        generate_btn.click(
            generate,
            [photos, driving, refine_seconds, *options],
            [turntable_out, reenact_out, ply_out, avatar_out],
            api_name="generate",
            concurrency_id="gpu",
        ).success(
            lambda ply, avatar: (viewer_ply(ply), avatar),
            [ply_out, avatar_out],
            [viewer, avatar_in],
            **private,
        )
        create_btn.click(
            create_avatar,
            [photos, refine_seconds],
            [avatar_out, preview_out],
            api_name="create_avatar",
            concurrency_id="gpu",
        ).success(
            lambda avatar: (avatar, gr.update(visible=True)), avatar_out, [avatar_in, preview_out], **private
        )
        turntable_btn.click(
            turntable,
            [avatar_in, frames, resolution, background],
            turntable_out,
            api_name="turntable",
            concurrency_id="gpu",
        )
        reenact_btn.click(
            reenact,
            [avatar_in, driving, relative, smoothing, side_by_side, resolution, background, max_seconds],
            reenact_out,
            api_name="reenact",
            concurrency_id="gpu",
        )
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo


sweep_outputs()  # leftovers of an earlier run
demo = build_demo()

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME") or None, max_file_size=MAX_UPLOAD)

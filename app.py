"""FlexAvatar Space: 1-4 portrait photos -> animatable 3D Gaussian head avatar.

Layout and thin handlers only: every endpoint calls :mod:`flexavatar.space` (gradio-free
request handling over :mod:`flexavatar.pipeline`), maps bad input
(:class:`~flexavatar.errors.InvalidInputError`) to a ``gr.Error`` with the pipeline's message
and ``gr.Progress`` to the pipeline's progress callback. Defaults come from
:mod:`flexavatar.options`, shared with the pipeline and the CLI.

Named API endpoints (``gradio_client``): ``/create_avatar``, ``/turntable``, ``/reenact``,
``/generate``; the play tabs (app_live.py) add ``/live`` (streaming), ``/render_still``,
``/blend_still``, ``/blend_turntable``; see README.md "Calling it from code". Run locally with
``python app.py``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see flexavatar/__init__.py
import gradio as gr  # noqa: E402
import spaces  # noqa: E402

from app_live import build_play_tabs  # noqa: E402
from flexavatar import pipeline, space  # noqa: E402
from flexavatar.errors import InvalidInputError  # noqa: E402
from flexavatar.options import DEFAULTS, RESOLUTIONS, RequestOptions, hex_colour  # noqa: E402

log = logging.getLogger("flexavatar.app")

EXAMPLES = Path(__file__).resolve().parent / "examples"
#: Gradio's cache of uploads and results: swept every 15 min, files kept for 1 h.
DELETE_CACHE = (900, 3600)
#: Jobs run at once. The free Space has 2 vCPUs and one job already uses both.
CONCURRENCY = int(os.environ.get("FLEXAVATAR_CONCURRENCY", "1"))
QUEUE_MAX_SIZE = 20
DEFAULT_REFINE_SECONDS = 10.0  # what ticking "Refine" sets (refinement is off by default)
GENERIC_ERROR = "Something went wrong while {action}. Please try again; if it keeps failing, try other photos or another video."
#: The in-page splat viewer draws on a black canvas by default; a light one matches the page.
#: Photo thumbnails: always four to a row (Gradio widens one photo to the full column, cropped).
CSS = """
#viewer canvas { background: #f3f4f6 !important; }
#photo-gallery .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
"""
LAUNCH = dict(css=CSS, max_file_size="200mb")  # what demo.launch() needs besides host and port

HEADER = """
# FlexAvatar: a 3D head avatar from 1–4 photos

**Upload** 1–4 clear, frontal-ish photos of **one person** (face visible, not too small; different
angles or expressions help) and a **short video of a talking face** to drive the avatar.
**You get** a 360° turntable video, the avatar re-enacting the video (with its sound), an interactive
3D Gaussian-splat view and downloads: a `.ply` splat for any 3DGS viewer and a `.avatar` file you can
upload again below to animate the same avatar without recomputing it.
No camera poses or expression labels needed. On the free CPU machine a run takes about half a minute.
"""

space.limit_malloc_arenas()  # before any worker thread starts: RSS stays flat over many requests
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


def progress_callback(progress: gr.Progress) -> pipeline.Progress:
    """Adapt Gradio's progress bar to the pipeline's ``progress(stage, fraction)``."""
    return lambda stage, fraction: progress(fraction, desc=space.STAGES.get(stage, stage.capitalize()))


def toast(warnings: list[str]) -> None:
    """Point at the notes above the results (where the warnings are written out in full)."""
    if warnings:
        gr.Warning(f"{len(warnings)} note{'s' if len(warnings) > 1 else ''} about your input: see above the results.")


# ------------------------------------------------------------------------------- GPU-bound work
# On ZeroGPU, @spaces.GPU runs these in a GPU worker; only gr.Error crosses back with its message,
# hence @user_errors inside it too. Off ZeroGPU, spaces.GPU returns the function unchanged.
@spaces.GPU(duration=120)
@user_errors("creating the avatar")
def _create(photos, refine_seconds, out: Path, progress) -> space.Created:
    return space.create_avatar(MODEL, photos, refine_seconds, out, progress_callback(progress))


@spaces.GPU(duration=60)
@user_errors("rendering the turntable")
def _turntable(avatar_file, options: RequestOptions, out: Path, progress) -> str:
    return space.turntable(MODEL, avatar_file, options, out, progress_callback(progress))


@spaces.GPU(duration=180)
@user_errors("animating the avatar")
def _reenact(avatar_file, driving, options: RequestOptions, out: Path, progress) -> space.Reenacted:
    return space.reenact(MODEL, avatar_file, driving, options, out, progress_callback(progress))


@spaces.GPU(duration=240)
@user_errors("generating the avatar and videos")
def _generate(photos, driving, options: RequestOptions, out: Path, progress) -> space.Generated:
    return space.generate(MODEL, photos, driving, options, out, progress_callback(progress))


# ------------------------------------------------------------------------------------ endpoints
@user_errors("creating the avatar")
def create_avatar(photos, refine_seconds: float = DEFAULTS.refine_seconds, progress=gr.Progress()):
    """1-4 photos (+ refinement seconds, 0 = off) -> (.avatar file, PNG preview, notes)."""
    with space.request_dir() as out:
        created = _create(photos, refine_seconds, out, progress)
    toast(created.warnings)
    return created.avatar_file, created.preview_png, created.notes


@user_errors("rendering the turntable")
def turntable(avatar_file, turntable_frames: int = DEFAULTS.turntable_frames, resolution: int = DEFAULTS.resolution,
              background: str = hex_colour(DEFAULTS.background), progress=gr.Progress()) -> str:  # fmt: skip
    """.avatar file (+ frames, resolution, background colour) -> 360° turntable mp4."""
    space.require_avatar_file(avatar_file)
    options = RequestOptions.from_values(turntable_frames=turntable_frames, resolution=resolution, background=background)
    with space.request_dir() as out:
        return _turntable(avatar_file, options, out, progress)


@user_errors("animating the avatar")
def reenact(avatar_file, driving_video, relative_motion: bool = DEFAULTS.relative,
            smoothing: float = DEFAULTS.smoothing, side_by_side: bool = DEFAULTS.side_by_side,
            resolution: int = DEFAULTS.resolution, background: str = hex_colour(DEFAULTS.background),
            max_seconds: float = DEFAULTS.max_seconds, neutral_expression: bool = DEFAULTS.neutralise,
            follow_translation: bool = DEFAULTS.follow_translation, progress=gr.Progress()):  # fmt: skip
    """.avatar file + driving video (+ options) -> (reenactment mp4 with the video's sound, notes)."""
    space.require_avatar_file(avatar_file), space.require_video(driving_video)
    options = RequestOptions.from_values(relative=relative_motion, smoothing=smoothing, side_by_side=side_by_side,
                                         resolution=resolution, background=background, max_seconds=max_seconds,
                                         neutralise=neutral_expression, follow_translation=follow_translation)  # fmt: skip
    with space.request_dir() as out:
        reenacted = _reenact(avatar_file, driving_video, options, out, progress)
    toast(reenacted.warnings)
    return reenacted.reenactment_mp4, reenacted.notes


@user_errors("generating the avatar and videos")
def generate(photos, driving_video=None, refine_seconds: float = DEFAULTS.refine_seconds,
             resolution: int = DEFAULTS.resolution, turntable_frames: int = DEFAULTS.turntable_frames,
             relative_motion: bool = DEFAULTS.relative, smoothing: float = DEFAULTS.smoothing,
             side_by_side: bool = DEFAULTS.side_by_side, background: str = hex_colour(DEFAULTS.background),
             max_seconds: float = DEFAULTS.max_seconds, neutral_expression: bool = DEFAULTS.neutralise,
             follow_translation: bool = DEFAULTS.follow_translation, progress=gr.Progress()):  # fmt: skip
    """Photos + driving video (+ options) -> (turntable mp4, reenactment mp4 or None, .ply,
    .avatar, notes) and, for the page only, the viewer's .ply."""
    options = RequestOptions.from_values(
        refine_seconds=refine_seconds or 0, resolution=resolution, turntable_frames=turntable_frames,
        relative=relative_motion, smoothing=smoothing, side_by_side=side_by_side, background=background,
        max_seconds=max_seconds, neutralise=neutral_expression, follow_translation=follow_translation,
    )  # fmt: skip
    with space.request_dir() as out:
        made = _generate(photos, driving_video, options, out, progress)
    toast(made.warnings)
    return made.turntable_mp4, made.reenactment_mp4, made.ply_file, made.avatar_file, made.notes, made.viewer_ply


# ------------------------------------------------------------------------------------------- UI
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
                photos = gr.File(label="Photos of one person (1–4)", file_count="multiple", file_types=["image"],
                                 elem_id="photos")  # fmt: skip
                gallery = gr.Gallery(label="Your photos", columns=4, rows=1, height=140, object_fit="contain",
                                     allow_preview=False, interactive=False, visible=False,
                                     elem_id="photo-gallery")  # fmt: skip
                driving = gr.Video(label="Driving video (a short clip of a talking face; optional)",
                                   sources=["upload"], elem_id="driving")  # fmt: skip
                with gr.Row():
                    refine = gr.Checkbox(label="Refine hair, ears and neck to the photos (slower; the face stays as predicted)", value=DEFAULTS.refine_seconds > 0)
                    refine_seconds = gr.Slider(0, 60, value=DEFAULTS.refine_seconds, step=5, label="Refine seconds",
                                               interactive=False, elem_id="refine-seconds")  # fmt: skip
                with gr.Accordion("Advanced", open=False):
                    resolution = gr.Radio(list(RESOLUTIONS), value=DEFAULTS.resolution, label="Video resolution (px)")
                    frames = gr.Slider(8, 240, value=DEFAULTS.turntable_frames, step=8, elem_id="turntable-frames",
                                       label=f"Turntable frames ({DEFAULTS.turntable_fps:g} fps)")  # fmt: skip
                    max_seconds = gr.Slider(0.5, 60, value=DEFAULTS.max_seconds, step=0.5, elem_id="max-seconds",
                                            label="Use at most this many seconds of the driving video")  # fmt: skip
                    relative = gr.Checkbox(value=DEFAULTS.relative,
                                           label="Relative motion (transfer changes of expression and pose)")  # fmt: skip
                    smoothing = gr.Slider(0, 1, value=DEFAULTS.smoothing, step=0.05, label="Motion smoothing")
                    neutral_expression = gr.Checkbox(value=DEFAULTS.neutralise,
                                                     label="Start from a neutral face (remove the photo's expression)")  # fmt: skip
                    follow_translation = gr.Checkbox(value=DEFAULTS.follow_translation,
                                                     label="Follow head translation fully (default: damped, kept in frame)")  # fmt: skip
                    side_by_side = gr.Checkbox(value=DEFAULTS.side_by_side, label="Side by side with the driving video")
                    background = gr.ColorPicker(value=hex_colour(DEFAULTS.background), label="Background colour")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    create_btn = gr.Button("Create avatar only", elem_id="create")
                with gr.Accordion("Animate a saved avatar", open=False):
                    avatar_in = gr.File(label="Avatar (.avatar)", file_types=[".avatar"], elem_id="avatar-in")
                    with gr.Row():
                        turntable_btn = gr.Button("Turntable", elem_id="turntable-btn")
                        reenact_btn = gr.Button("Reenact with the driving video", elem_id="reenact-btn")
            with gr.Column(scale=2):
                notes = gr.Markdown(label="Notes", elem_id="notes")
                with gr.Row():
                    turntable_out = gr.Video(label="Turntable video", autoplay=True, loop=True,
                                             interactive=False, elem_id="turntable-video")  # fmt: skip
                    reenact_out = gr.Video(label="Reenactment video", autoplay=True, interactive=False,
                                           elem_id="reenact-video")  # fmt: skip
                viewer = gr.Model3D(label="3D Gaussian avatar (drag to rotate, scroll to zoom)", height=420,
                                    interactive=False, elem_id="viewer")  # fmt: skip
                viewer_file = gr.State()
                with gr.Row():
                    preview_out = gr.Image(label="Preview image (front view)", type="filepath", height=200,
                                           interactive=False, visible=False, elem_id="preview")  # fmt: skip
                    # downloads, shown once there is something to download
                    ply_out = gr.DownloadButton("Download the Gaussian splat (.ply)", visible=False,
                                                elem_id="ply-file")  # fmt: skip
                    avatar_out = gr.DownloadButton("Download the avatar (.avatar)", visible=False,
                                                   elem_id="avatar-file")  # fmt: skip
        if _example_rows():
            gr.Examples(_example_rows(), inputs=[photos, driving], cache_examples=False,
                        label="Example (photo: NASA, public domain; video: generated by FlexAvatar)")  # fmt: skip
        build_play_tabs(MODEL, avatar_out, EXAMPLES / "astronaut.png", user_errors)

        photos.change(lambda files: gr.update(value=space.photo_paths(files) or None, visible=bool(files)),
                      photos, gallery, **private)  # fmt: skip
        refine.input(lambda on: gr.update(value=DEFAULT_REFINE_SECONDS if on else 0, interactive=on),
                     refine, refine_seconds, **private)  # fmt: skip
        refine_seconds.release(lambda s: gr.update(value=s > 0), refine_seconds, refine, **private)
        options = [resolution, frames, relative, smoothing, side_by_side, background, max_seconds, neutral_expression,
                   follow_translation]  # fmt: skip
        generate_btn.click(generate, [photos, driving, refine_seconds, *options],
                           [turntable_out, reenact_out, ply_out, avatar_out, notes, viewer_file],
                           api_name="generate", concurrency_id="gpu").success(
            lambda view, avatar: (view, avatar, gr.update(visible=True), gr.update(visible=True)),
            [viewer_file, avatar_out], [viewer, avatar_in, ply_out, avatar_out], **private,
        )  # fmt: skip
        create_btn.click(create_avatar, [photos, refine_seconds], [avatar_out, preview_out, notes],
                         api_name="create_avatar", concurrency_id="gpu").success(
            lambda avatar: (avatar, gr.update(visible=True), gr.update(visible=True)), avatar_out,
            [avatar_in, preview_out, avatar_out], **private,
        )  # fmt: skip
        turntable_btn.click(turntable, [avatar_in, frames, resolution, background], turntable_out,
                            api_name="turntable", concurrency_id="gpu")  # fmt: skip
        reenact_btn.click(reenact, [avatar_in, driving, relative, smoothing, side_by_side, resolution, background,
                                    max_seconds, neutral_expression, follow_translation], [reenact_out, notes],
                          api_name="reenact", concurrency_id="gpu")  # fmt: skip
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo


space.sweep_outputs()  # leftovers of an earlier run
demo = build_demo()

if __name__ == "__main__":
    print(f"warm start: one small request done in {space.warm_up(MODEL, EXAMPLES / 'astronaut.png'):.1f} s", flush=True)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME") or None, **LAUNCH)

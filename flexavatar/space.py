"""The Space's request handling, without gradio: request folders, input values, one function
per endpoint (run the pipeline, collect its files and notes), warm start.

``app.py`` keeps the layout and thin wrappers around these functions (InvalidInputError ->
``gr.Error``, ``gr.Progress`` -> the pipeline's ``progress(stage, fraction)``). Every endpoint
function takes plain values as the widgets send them (paths, numbers, colour strings) and
returns paths plus ``notes``: Markdown for the status box beside the results (warnings such
as a blurry photo or a driving video cut at the seconds limit, and how to change that).
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from flexavatar import pipeline
from flexavatar.errors import InvalidInputError
from flexavatar.model import FlexAvatarModel
from flexavatar.options import RequestOptions

#: Where each request writes its files (one sub-folder per request).
OUTPUT_ROOT = Path(os.environ.get("FLEXAVATAR_APP_TMP") or Path(tempfile.gettempdir()) / "flexavatar-app")
#: Finished request folders older than this are deleted at the next request (Gradio has copied
#: the results into its own cache by then, and ages those copies out itself).
OUTPUT_MAX_AGE_S = float(os.environ.get("FLEXAVATAR_OUTPUT_MAX_AGE_S", "120"))
PREVIEW_RESOLUTION = 256
#: Gradio's 3D viewer (gsplat.js) orbits the origin from 5 units away: the ~0.3 m head is
#: shown this much larger so that head and neck fill the view.
VIEWER_SCALE = 3.5
#: Where gsplat.js's orbit camera starts (alpha, beta; radians, its OrbitControls defaults);
#: Model3D's camera_position is not applied to splats, so the .ply is turned to face it instead.
VIEWER_START_ORBIT = (0.5, 0.5)
#: Pipeline stage -> what the progress bar says.
STAGES = {
    "tracking": "Finding the face in the photos",
    "encoding": "Building the 3D avatar",
    "refine": "Refining the avatar",
    "turntable": "Rendering the turntable",
    "tracking video": "Tracking the driving video",
    "rendering": "Rendering the reenactment",
}
SECONDS_LIMIT_WIDGET = "Advanced → “Use at most this many seconds of the driving video”"
M_ARENA_MAX = -8  # glibc's mallopt() parameter number
MALLOC_ARENAS = 2
_CUT_WARNING = re.compile(r"tracked the first (\d+) of (\d+) frames")


# --------------------------------------------------------------------------- request folders
_active: set[Path] = set()
_active_lock = threading.Lock()


def sweep_outputs(max_age_s: float | None = None, root: Path | None = None) -> int:
    """Delete request folders under ``root`` (default :data:`OUTPUT_ROOT`) not touched for
    ``max_age_s`` seconds (default :data:`OUTPUT_MAX_AGE_S`), except those of requests still
    running; returns how many were deleted."""
    max_age_s = OUTPUT_MAX_AGE_S if max_age_s is None else max_age_s
    root = OUTPUT_ROOT if root is None else root
    if not root.is_dir():
        return 0
    now, removed = time.time(), 0
    with _active_lock:
        for folder in root.glob("req-*"):
            try:
                if folder in _active or now - folder.stat().st_mtime < max_age_s:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


@contextmanager
def request_dir(root: Path | None = None) -> Iterator[Path]:
    """A fresh folder for one request's files (old ones are swept first). Its mtime is
    refreshed when the request ends, so the sweep's age counts from then."""
    root = OUTPUT_ROOT if root is None else root
    sweep_outputs(root=root)
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="req-", dir=root))
    with _active_lock:
        _active.add(folder)
    try:
        yield folder
    finally:
        with _active_lock:
            _active.discard(folder)
        if folder.exists():
            os.utime(folder)
        release_freed_memory()


# ------------------------------------------------------------------------------- input values
def file_path(value) -> str | None:
    """A Gradio file value (path string or FileData-like) -> path string (None when empty)."""
    if value is None or isinstance(value, str):
        return value or None
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
        raise InvalidInputError("No driving video given. Upload a short video of a talking face (MP4, MOV, WebM).")
    return path


# ------------------------------------------------------------------------------------- notes
def explain_warning(message: str, options: RequestOptions) -> str:
    """A pipeline warning in the Space's words: a driving video cut at the seconds limit says
    that it was the limit and where to change it."""
    cut = _CUT_WARNING.search(message)
    if cut:
        return (
            f"{message}: only the first {options.max_seconds:g} s of the driving video are used. "
            f"To use more, raise {SECONDS_LIMIT_WIDGET} (or `max_seconds` in the API)."
        )
    return message


def notes_markdown(warnings: list[str], extra: tuple[str, ...] = ()) -> str:
    """Markdown for the status box: the (explained) warnings as a list, then ``extra`` lines."""
    return "\n".join([f"- ⚠️ {w}" for w in warnings] + [f"- {line}" for line in extra])


def _notes(report: dict, options: RequestOptions, start: float, extra: tuple[str, ...] = ()) -> tuple[list, str]:
    """(explained warnings, status Markdown ending with the request's duration)."""
    warnings = [explain_warning(str(w), options) for w in report.get("warnings", [])]
    return warnings, notes_markdown(warnings, (*extra, f"Finished in {time.perf_counter() - start:.0f} s."))


# ---------------------------------------------------------------------------------- endpoints
@dataclass
class Created:
    avatar_file: str
    preview_png: str
    warnings: list[str]
    notes: str  # Markdown: the warnings and the time taken


@dataclass
class Reenacted:
    reenactment_mp4: str
    warnings: list[str]
    notes: str


@dataclass
class Generated:
    turntable_mp4: str
    reenactment_mp4: str | None  # None without a driving video
    ply_file: str  # metres, splat-viewer axes
    viewer_ply: str  # the same, VIEWER_SCALE times larger, for Gradio's in-page viewer
    avatar_file: str
    warnings: list[str]
    notes: str


def viewer_rotation(alpha: float, beta: float) -> torch.Tensor:
    """[3,3] rotation of gsplat.js's orbit camera at (alpha, beta): R_y(-alpha) R_x(-beta).

    The camera sits at 5·(sin α cos β, -sin β, -cos α cos β) looking at the origin with this
    rotation; turning the scene by it shows what the camera at (0, 0) shows unturned: the face
    of an ``export_ply(axes="viewer")`` head (+y down, looking along -z), upright and frontal."""
    cy, sy, cx, sx = math.cos(-alpha), math.sin(-alpha), math.cos(-beta), math.sin(-beta)
    rot_y = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rot_x = torch.tensor([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return rot_y @ rot_x


def save_viewer_ply(model: FlexAvatarModel, avatar, path: Path) -> Path:
    """The avatar's .ply for the in-page viewer: pipeline's splat-viewer axes and
    :data:`VIEWER_SCALE`, turned to face the viewer's starting camera."""
    return pipeline.export_ply(avatar, path, model=model, scale=VIEWER_SCALE, rotation=viewer_rotation(*VIEWER_START_ORBIT))


def save_preview(model: FlexAvatarModel, avatar, path: Path) -> Path:
    """A cheap PNG preview: the first frame of the turntable (``pipeline.preview_image``)."""
    Image.fromarray(pipeline.preview_image(avatar, PREVIEW_RESOLUTION, model=model)).save(path)
    return path


def create_avatar(model: FlexAvatarModel, photos, refine_seconds, out: Path, progress=None) -> Created:
    """1-4 photos (+ refinement seconds, 0 = off) -> .avatar file and a PNG preview in ``out``."""
    start = time.perf_counter()
    options = RequestOptions.from_values(refine_seconds=refine_seconds or 0)
    report: dict = {}
    avatar = pipeline.create_avatar(photo_paths(photos), model=model, progress=progress, report=report,
                                    **options.step_kwargs("create"))  # fmt: skip
    avatar_file = avatar.save(out / "avatar.avatar")
    preview = save_preview(model, avatar, out / "preview.png")
    return Created(str(avatar_file), str(preview), *_notes(report, options, start))


def turntable(model: FlexAvatarModel, avatar_file, options: RequestOptions, out: Path, progress=None) -> str:
    """.avatar file -> 360° turntable mp4 in ``out``."""
    avatar = pipeline.read_avatar(require_avatar_file(avatar_file), model=model)
    path = pipeline.turntable(avatar, out_path=out / "turntable.mp4", progress=progress, model=model,
                              **options.step_kwargs("turntable"))  # fmt: skip
    return str(path)


def reenact(model: FlexAvatarModel, avatar_file, driving_video, options: RequestOptions, out: Path,
            progress=None) -> Reenacted:  # fmt: skip
    """.avatar file + driving video -> reenactment mp4 (with the video's sound) in ``out``."""
    start = time.perf_counter()
    avatar = pipeline.read_avatar(require_avatar_file(avatar_file), model=model)
    report: dict = {}
    path = pipeline.reenact(avatar, require_video(driving_video), out_path=out / "reenactment.mp4",
                            progress=progress, model=model, report=report,
                            **options.step_kwargs("reenact"))  # fmt: skip
    return Reenacted(str(path), *_notes(report, options, start))


def generate(model: FlexAvatarModel, photos, driving_video, options: RequestOptions, out: Path,
             progress=None) -> Generated:  # fmt: skip
    """Photos + driving video -> turntable, reenactment, .ply (plus one scaled for the in-page
    viewer) and .avatar in ``out``. Without a driving video only the reenactment is skipped."""
    start = time.perf_counter()
    driving = file_path(driving_video)
    report: dict = {}
    paths = pipeline.run(photo_paths(photos), driving, out, options, progress=progress, model=model, report=report)
    avatar = pipeline.read_avatar(paths["avatar"], model=model)
    viewer = save_viewer_ply(model, avatar, out / "avatar_view.ply")
    extra = () if driving else ("No driving video was given, so only the turntable was made.",)
    reenactment = str(paths["reenactment"]) if "reenactment" in paths else None
    return Generated(str(paths["turntable"]), reenactment, str(paths["ply"]), str(viewer), str(paths["avatar"]),
                     *_notes(report, options, start, extra))  # fmt: skip


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return None


_LIBC = _glibc()


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this long-running process; True when applied.

    Every request starts new threads (MediaPipe's VIDEO-mode graph, x264's frame threads), and
    glibc gives new threads new arenas that keep their freed memory: the server's RSS grew by
    ~13 MB per /generate without the cap (``python -m flexavatar bench soak``). With the cap
    and :func:`release_freed_memory` after each request it stays flat."""
    return bool(_LIBC is not None and _LIBC.mallopt(M_ARENA_MAX, int(arenas)))


def release_freed_memory() -> None:
    """Hand memory freed by the finished request back to the OS (glibc ``malloc_trim``)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def warm_up(model: FlexAvatarModel, photo) -> float:
    """Run one small request at start-up so that the first visitor does not wait for it:
    loads MediaPipe's models, compiles the renderer's numba kernels (one preview render) and
    runs the encoder once. Returns the seconds it took."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flexavatar-warm-") as folder:
        create_avatar(model, [str(photo)], 0, Path(folder))
    return time.perf_counter() - start

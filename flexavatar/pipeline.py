"""The public API: photos -> Avatar -> turntable / reenactment videos and exports.

Every function takes and returns plain data (paths, numpy arrays, tensors, dataclasses); the
Gradio app, the CLI and the tests call these same functions. ``progress(stage, fraction)`` is
the one callback type for long steps.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from flexavatar import assets
from flexavatar.camera import Camera, focal_from_fov, orbit_camera
from flexavatar.closed_loop import avatar_calibration, closed_loop_expressions, driver_targets
from flexavatar.errors import InvalidInputError
from flexavatar.export import save_ply
from flexavatar.framing import driving_cameras, face_landmark_points
from flexavatar.head.blendshapes import EXPRESSION_INDEX, NUM_EXPRESSIONS
from flexavatar.model import Avatar, FlexAvatarModel, load_avatar
from flexavatar.model.network import DeformCache
from flexavatar.motion import MotionCalibration, driving_expressions
from flexavatar.options import DEFAULTS, RESOLUTIONS, RequestOptions
from flexavatar.refine import refine
from flexavatar.rest import rest_expression
from flexavatar.rotations import matrix_to_quat, quat_to_matrix
from flexavatar.tracking import different_people_warnings, fit_head, track_video, warp_crop
from flexavatar.video import VideoWriter, iter_frames, probe_video

Progress = Callable[[str, float], None]

MAX_IMAGES = 4
TURNTABLE_FOV_DEG = 20.0
TURNTABLE_DISTANCE_M = 0.85
RENDER_CHUNK = 8  # frames rendered per deformer batch: bounds memory, whatever the video length


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, float(min(max(fraction, 0.0), 1.0)))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=2)
def load_model(weights: str | None = None, device: str | None = None) -> FlexAvatarModel:
    """The network, loaded once per (weights, device).

    weights: a folder or Hub repo id with ``config.json`` + ``model.safetensors``; default: see
    :func:`flexavatar.assets.resolve_weights_dir` (``$FLEXAVATAR_WEIGHTS`` > shipped ``weights/``
    > Hub). Falls back to the untrained network, with a warning, when no checkpoint exists.
    """
    device = torch.device(device) if device else default_device()
    try:
        folder = weights if weights and not Path(weights).is_dir() else str(assets.resolve_weights_dir(weights))
        model = FlexAvatarModel.from_pretrained(folder)
    except assets.AssetNotFoundError as exc:
        warnings.warn(f"no trained FlexAvatar checkpoint found; using the untrained network.\n{exc}", stacklevel=2)
        torch.manual_seed(0)
        model = FlexAvatarModel()
    return model.to(device).eval()


def _as_model(model: FlexAvatarModel | None) -> FlexAvatarModel:
    return model if model is not None else load_model()


# ---------------------------------------------------------------------------------------- create
def _image_list(images) -> list:
    if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "getbands"):
        images = [images]  # one photo
    images = list(images) if images is not None else []
    if not images:
        raise InvalidInputError("No photo given. Upload 1 to 4 photos of the same person.")
    if len(images) > MAX_IMAGES:
        raise InvalidInputError(
            f"{len(images)} photos were given; at most {MAX_IMAGES} are supported. "
            f"Keep the {MAX_IMAGES} clearest photos of the person."
        )
    return images


def create_avatar(
    images,
    refine_seconds: float = DEFAULTS.refine_seconds,
    progress: Progress | None = None,
    model: FlexAvatarModel | None = None,
    report: dict | None = None,
) -> Avatar:
    """1–4 photos of one person (paths, PIL images or uint8 HWC arrays) -> :class:`Avatar`.

    No camera poses or expression labels: tracking estimates them. ``refine_seconds`` > 0 runs
    test-time refinement for that long. ``report``, if given, receives plain facts: warnings,
    per-image fit residual (px), refinement PSNR before/after and seconds per stage.
    """
    model = _as_model(model)
    images = _image_list(images)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    _report(progress, "tracking", 0.0)
    fit = fit_head(images, resolution=model.config.crop_size, num_identity=model.config.num_identity)
    fit_warnings = list(fit.warnings) + different_people_warnings(fit)
    timings["tracking_s"] = time.perf_counter() - start
    _report(progress, "tracking", 1.0)
    device = model.device
    crops = torch.from_numpy(np.stack([c.masked for c in fit.crops])).permute(0, 3, 1, 2).float().div(255).to(device)
    masks = torch.from_numpy(np.stack([c.mask for c in fit.crops]))[:, None].float().to(device)
    openings = torch.from_numpy(np.stack([c.mouth_opening for c in fit.crops])).to(device)  # [V,20,2] crop px
    cameras = [c.to(device) for c in fit.cameras]
    identity = fit.identity.to(device)
    expressions = fit.expressions.to(device)
    start = time.perf_counter()
    _report(progress, "encoding", 0.0)
    with torch.no_grad():
        avatar = model.encode(crops, masks, cameras, identity, expressions, openings)
    timings["encode_s"] = time.perf_counter() - start
    _report(progress, "encoding", 1.0)
    refined = None
    if refine_seconds and refine_seconds > 0:
        refined = refine(model, avatar, crops, cameras, expressions, seconds=float(refine_seconds), progress=progress,
                         masks=masks)  # fmt: skip
        avatar = refined.avatar
        timings["refine_s"] = refined.seconds
    if report is not None:
        report.update(
            warnings=fit_warnings,
            residual_px=[float(r) for r in fit.residual_px],
            timings=timings,
            num_images=len(images),
        )
        if refined is not None:
            report.update(refine_psnr_before=refined.psnr_before, refine_psnr_after=refined.psnr_after,
                          refine_steps=refined.steps)  # fmt: skip
    return avatar


def read_avatar(path: str | os.PathLike, model: FlexAvatarModel | None = None) -> Avatar:
    """Load a ``.avatar`` file for ``model`` (validated; clear error if it is not one)."""
    model = _as_model(model)
    return load_avatar(path, model.avatar_shapes()).to(model.device)


# ---------------------------------------------------------------------------------------- render
def _to_uint8(rgb: torch.Tensor) -> np.ndarray:
    return (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def _background(background) -> tuple[float, float, float]:
    values = tuple(float(v) for v in background)
    if len(values) != 3:
        raise ValueError(f"background must be an RGB triple, got {background!r}")
    return tuple(v / 255.0 for v in values) if max(values) > 1.0 else values


def _expression_code(avatar: Avatar, expression) -> torch.Tensor:
    """[1,57] on the avatar's device: ``expression`` or, if None, the source photo's."""
    if expression is None:
        return avatar.source_expression.reshape(1, NUM_EXPRESSIONS)
    code = torch.as_tensor(np.asarray(expression, dtype=np.float32)).reshape(1, NUM_EXPRESSIONS)
    return code.clamp(0, 1).to(avatar.device)


def _out_path(out_path, suffix: str) -> Path:
    if out_path is not None:
        return Path(out_path)
    handle, name = tempfile.mkstemp(suffix=suffix, prefix="flexavatar-")
    os.close(handle)
    os.unlink(name)  # the writer creates it atomically
    return Path(name)


def turntable_cameras(model: FlexAvatarModel, frames: int, elevation_deg: float, resolution: int) -> list[Camera]:
    """``frames`` cameras on a full 360° orbit (frame i at 360·i/frames degrees) around the head."""
    centre = model.head.head_centre().cpu()
    focal = focal_from_fov(TURNTABLE_FOV_DEG, resolution)
    return [
        orbit_camera(360.0 * i / frames, elevation_deg, TURNTABLE_DISTANCE_M, centre, focal, resolution, resolution)
        for i in range(frames)
    ]


def _check_resolution(resolution) -> int:
    if int(resolution) not in RESOLUTIONS:
        raise InvalidInputError(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got {resolution}")
    return int(resolution)


def turntable(
    avatar: Avatar,
    frames: int = DEFAULTS.turntable_frames,
    fps: float = DEFAULTS.turntable_fps,
    elevation_deg: float = DEFAULTS.elevation_deg,
    expression=None,
    resolution: int = DEFAULTS.resolution,
    background=DEFAULTS.background,
    out_path=None,
    progress: Progress | None = None,
    model: FlexAvatarModel | None = None,
) -> Path:
    """A looping 360° orbit video (H.264 mp4) of ``avatar`` at a fixed expression.

    expression: [57] ICT weights (default: the expression of the first input photo, which its
    colours were lifted with). Frame i is at azimuth 360·i/frames, so the frame after the last
    is the first again. Returns the mp4 path.
    """
    model = _as_model(model)
    if not 1 <= int(frames) <= 1440:
        raise InvalidInputError(f"turntable frames must be between 1 and 1440, got {frames}")
    frames, resolution = int(frames), _check_resolution(resolution)
    avatar = avatar.to(model.device)
    code = _expression_code(avatar, expression)
    cameras = turntable_cameras(model, frames, elevation_deg, resolution)
    out_path = _out_path(out_path, ".mp4")
    with torch.no_grad():
        gaussians = model.deform(avatar, code)
        with VideoWriter(out_path, fps) as writer:
            for start in range(0, frames, RENDER_CHUNK):
                chunk = cameras[start : start + RENDER_CHUNK]
                rgb, _ = model.render_gaussians(gaussians, chunk, background=_background(background))
                for frame in _to_uint8(rgb):
                    writer.write(frame)
                _report(progress, "turntable", (start + len(chunk)) / frames)
    return out_path


# ---------------------------------------------------------------------------------------- stills
#: Slider name -> the ICT blendshapes it sets (both sides for paired shapes).
EXPRESSION_CONTROLS: dict[str, tuple[str, ...]] = {
    "jaw_open": ("jawOpen",),
    "smile": ("mouthSmile_L", "mouthSmile_R"),
    "blink": ("eyeBlink_L", "eyeBlink_R"),
    "brows_up": ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R"),
    "frown": ("browDown_L", "browDown_R"),
    "pucker": ("mouthPucker",),
    "eyes_wide": ("eyeWide_L", "eyeWide_R"),
}


#: Gaze control name -> the ICT eyeLook shapes its positive and its negative values set: the eyes
#: turn to the avatar's own left (+) or right (-), up (+) or down (-) (:mod:`flexavatar.head.gaze`).
GAZE_CONTROLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gaze_left": (("eyeLookOut_L", "eyeLookIn_R"), ("eyeLookIn_L", "eyeLookOut_R")),
    "gaze_up": (("eyeLookUp_L", "eyeLookUp_R"), ("eyeLookDown_L", "eyeLookDown_R")),
}


def expression_from_controls(avatar: Avatar, controls: dict[str, float] | None) -> np.ndarray:
    """[57] ICT weights: the avatar's source expression with each named control's blendshapes
    set to its value in [0,1] (see :data:`EXPRESSION_CONTROLS`); the gaze controls
    (:data:`GAZE_CONTROLS`) take values in [-1,1] and set both directions of their axis."""
    code = avatar.source_expression.detach().cpu().numpy().astype(np.float32).copy()
    for name, value in (controls or {}).items():
        if name in GAZE_CONTROLS:
            value = float(np.clip(value, -1.0, 1.0))
            positive, negative = GAZE_CONTROLS[name]
            code[[EXPRESSION_INDEX[shape] for shape in positive]] = max(value, 0.0)
            code[[EXPRESSION_INDEX[shape] for shape in negative]] = max(-value, 0.0)
        elif name in EXPRESSION_CONTROLS:
            code[[EXPRESSION_INDEX[shape] for shape in EXPRESSION_CONTROLS[name]]] = float(np.clip(value, 0.0, 1.0))
        else:
            known = ", ".join([*EXPRESSION_CONTROLS, *GAZE_CONTROLS])
            raise InvalidInputError(f"unknown expression control {name!r}; use one of {known}")
    return code


def render_still(
    avatar: Avatar,
    expression_controls: dict[str, float] | None = None,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    resolution: int = 256,
    background=DEFAULTS.background,
    model: FlexAvatarModel | None = None,
    deform_cache: DeformCache | None = None,
) -> np.ndarray:
    """One frame [S,S,3] uint8 of ``avatar`` with expression and gaze controls and a head turn.

    yaw_deg > 0 turns the head to its own left, pitch_deg > 0 lifts the chin (degrees, within
    ±90 / ±60); the camera is the turntable's. Controls as in :func:`expression_from_controls`.
    deform_cache: ``model.prepare_deform(avatar)``, when the same avatar is rendered again and again.
    """
    model = _as_model(model)
    if not (64 <= int(resolution) <= 1024):
        raise InvalidInputError(f"resolution must be between 64 and 1024 pixels, got {resolution}")
    if abs(yaw_deg) > 90 or abs(pitch_deg) > 60:
        raise InvalidInputError(f"head yaw must be within ±90° and pitch within ±60°, got {yaw_deg}, {pitch_deg}")
    avatar, size = avatar.to(model.device), int(resolution)
    code = torch.from_numpy(expression_from_controls(avatar, expression_controls))[None]
    camera = orbit_camera(-yaw_deg, -pitch_deg, TURNTABLE_DISTANCE_M, model.head.head_centre().cpu(),
                          focal_from_fov(TURNTABLE_FOV_DEG, size), size, size)  # fmt: skip
    with torch.no_grad():
        rgb, _ = model.render(avatar, [camera], code, background=_background(background), cache=deform_cache)
    return _to_uint8(rgb[0])


def blend_avatars(first: Avatar, second: Avatar, t: float) -> Avatar:
    """The avatar a fraction ``t`` in [0,1] of the way from ``first`` to ``second`` (identity,
    UV maps and F_id interpolated; source camera and expression from ``first``)."""
    if not 0.0 <= float(t) <= 1.0:
        raise InvalidInputError(f"the blend weight must be between 0 and 1, got {t}")
    try:
        return first.lerp(second, float(t))
    except ValueError:
        raise InvalidInputError(
            f"the two avatars were made by different networks ({first.config_name!r}, {second.config_name!r}) "
            "and cannot be blended; create both with the same FlexAvatar version"
        ) from None


def preview_image(avatar: Avatar, resolution: int = 256, background=DEFAULTS.background, model=None) -> np.ndarray:
    """The first turntable frame (front view, source photo's expression): uint8 [S,S,3], S = resolution."""
    return render_still(avatar, pitch_deg=-DEFAULTS.elevation_deg, resolution=_check_resolution(resolution),
                        background=background, model=model)  # fmt: skip


# ---------------------------------------------------------------------------------------- reenact
def reenact(
    avatar: Avatar,
    driving_video,
    relative: bool = DEFAULTS.relative,
    smoothing: float = DEFAULTS.smoothing,
    side_by_side: bool = DEFAULTS.side_by_side,
    max_seconds: float = DEFAULTS.max_seconds,
    resolution: int = DEFAULTS.resolution,
    background=DEFAULTS.background,
    out_path=None,
    progress: Progress | None = None,
    model: FlexAvatarModel | None = None,
    report: dict | None = None,
    neutralise: bool = DEFAULTS.neutralise,
    follow_translation: bool = DEFAULTS.follow_translation,
    calibration: MotionCalibration | str | os.PathLike | None = None,
) -> Path:
    """Drive ``avatar`` with the expressions and head motion of a video; returns an mp4 path.

    ``driving_video``: a path or the :class:`~flexavatar.video.VideoInfo` of one (not probed again).

    The output keeps the driving video's fps and its audio track (trimmed to the rendered
    length). Videos longer than ``max_seconds`` are cut (said in ``report['warnings']``).
    ``side_by_side`` puts the driving crop left of the avatar. Frames stream from decoder to
    encoder in chunks of :data:`RENDER_CHUNK`: memory does not grow with the video's length.
    Motion (:mod:`flexavatar.motion`): ``relative`` transfers the driver's changes since its
    first frame; ``neutralise`` starts from a neutral face instead of the source photo's
    expression; ``follow_translation`` follows the driver's translation and distance fully
    instead of damped (both stay bounded to keep the head framed); ``calibration``: a
    :class:`~flexavatar.motion.MotionCalibration`, used as is, or its file (default: the shipped
    one), then fitted to the avatar's own responses (:func:`~flexavatar.motion.calibration_for_avatar`).
    The clip's expressions are then corrected on the avatar in closed loop (16 sampled frames
    rendered and re-tracked twice, and once more for the head rotation of the result,
    :func:`~flexavatar.closed_loop.closed_loop_expressions`).
    """
    model = _as_model(model)
    resolution = _check_resolution(resolution)
    # Probed once (clear errors for missing / empty / broken files); the VideoInfo goes on down.
    info = probe_video(driving_video)
    max_frames = max(1, int(math.floor(max_seconds * info.fps + 1e-6))) if max_seconds else None
    track = track_video(
        info,
        max_frames=max_frames,
        smoothing=smoothing,
        progress=(lambda stage, f: _report(progress, "tracking video", f)) if progress else None,
    )
    warnings = list(track.warnings)  # includes the cut, when the video was longer than max_seconds
    avatar = avatar.to(model.device)
    head_centre = model.head.head_centre().double().cpu().numpy()
    calibration = avatar_calibration(model, avatar, calibration)
    expressions = driving_expressions(avatar, track.expressions, relative, neutralise, calibration, track.fps,
                                      lip_gaps=track.lip_gaps)  # fmt: skip
    targets = driver_targets(track.expressions, calibration, relative, track.fps)
    expressions, bias = closed_loop_expressions(model, avatar, expressions, rest_expression(avatar, neutralise, calibration),
                                                targets, calibration, relative, track.lip_gaps)  # fmt: skip
    cameras = driving_cameras(avatar, head_centre, track.rotations, track.translations, relative, resolution,
                              follow_translation=follow_translation, rotation_bias=bias, calibration=calibration,
                              face_points=face_landmark_points(model.head, avatar.identity, expressions))  # fmt: skip
    expressions = torch.from_numpy(expressions)
    bg = _background(background)
    total = len(cameras)
    out_path = _out_path(out_path, ".mp4")
    frames_iter = iter_frames(info, max_frames=total) if side_by_side else None
    try:
        with torch.no_grad(), VideoWriter(out_path, track.fps, audio_from=info) as writer:
            for start in range(0, total, RENDER_CHUNK):
                stop = min(total, start + RENDER_CHUNK)
                rgb, _ = model.render(
                    avatar, cameras[start:stop], expressions[start:stop].to(model.device), background=bg
                )
                for offset, frame in enumerate(_to_uint8(rgb)):
                    if frames_iter is not None:
                        driving = next(frames_iter)
                        frame = np.concatenate([warp_crop(driving, track.crop_boxes[start + offset], resolution), frame], 1)
                    writer.write(frame)
                _report(progress, "rendering", stop / total)
    finally:
        if frames_iter is not None:
            frames_iter.close()
    if report is not None:
        report.update(warnings=warnings, frames=total, fps=track.fps,
                      frames_without_face=int((~track.has_face).sum()))  # fmt: skip
    return out_path


# ---------------------------------------------------------------------------------------- export
def export_ply(
    avatar: Avatar,
    path,
    expression=None,
    model: FlexAvatarModel | None = None,
    axes: str = "viewer",
    scale: float = 1.0,
    rotation: torch.Tensor | None = None,
) -> Path:
    """The avatar's Gaussians at ``expression`` ([57], default: the source photo's) as a 3DGS .ply.

    axes="viewer" (default): centred on the head, +y down and +z away from the viewer — the
    axes of COLMAP-made 3DGS scenes that splat viewers (SuperSplat, gsplat.js, Gradio's
    Model3D) assume, so the head opens upright and facing you. axes="head": canonical head
    space (+y up, +z out of the face). ``scale`` multiplies positions and sizes (metres at 1);
    ``rotation`` [3,3], if given, turns the splat about the origin after the axes change.
    """
    if axes not in ("viewer", "head"):
        raise ValueError(f"axes must be 'viewer' or 'head', got {axes!r}")
    model = _as_model(model)
    code = _expression_code(avatar.to(model.device), expression)
    with torch.no_grad():
        gaussians = {k: v[0].cpu() for k, v in model.deform(avatar.to(model.device), code).items()}
    means, quats = gaussians["means"], gaussians["quats"]
    if axes == "viewer":
        # a 180° turn about x: (x, y, z) -> (x, -y, -z); as a quaternion (0,1,0,0) ⊗ q
        means = (means - model.head.head_centre().cpu()) * torch.tensor([1.0, -1.0, -1.0])
        w, x, y, z = quats.unbind(-1)
        quats = torch.stack([-x, w, -z, y], -1)
    if rotation is not None:
        rotation = rotation.to(means)
        means, quats = means @ rotation.T, matrix_to_quat(rotation @ quat_to_matrix(quats))
    path = Path(path)
    save_ply(path, means * scale, quats, gaussians["scales"] * scale, gaussians["opacities"], gaussians["colors"])
    return path


def run(
    images,
    driving_video,
    out_dir,
    options: RequestOptions = DEFAULTS,
    progress: Progress | None = None,
    model: FlexAvatarModel | None = None,
    report: dict | None = None,
    **changes,
) -> dict[str, Path]:
    """Everything at once: avatar, .avatar, .ply, turntable and reenactment in ``out_dir``.

    options: the request's settings (:class:`~flexavatar.options.RequestOptions`); keyword
    ``changes`` by option name (``turntable_frames=24``) override single ones. Without a
    driving video only the reenactment is skipped.
    Returns {"avatar", "ply", "turntable", "reenactment"} -> paths.
    """
    options = options.replace(**changes) if changes else options
    model = _as_model(model)
    _image_list(images)  # fail on bad counts before any work
    if driving_video is not None:
        driving_video = probe_video(driving_video)  # fail on a broken video before any work; probed once
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report if report is not None else {}
    create_report: dict = {}
    avatar = create_avatar(images, progress=progress, model=model, report=create_report, **options.step_kwargs("create"))
    paths = {"avatar": avatar.save(out_dir / "avatar.avatar")}
    paths["ply"] = export_ply(avatar, out_dir / "avatar.ply", model=model)
    paths["turntable"] = turntable(avatar, out_path=out_dir / "turntable.mp4", progress=progress, model=model,
                                   **options.step_kwargs("turntable"))  # fmt: skip
    reenact_report: dict = {}
    if driving_video is not None:
        paths["reenactment"] = reenact(avatar, driving_video, out_path=out_dir / "reenactment.mp4", progress=progress,
                                       model=model, report=reenact_report, **options.step_kwargs("reenact"))  # fmt: skip
    report.update(create=create_report, reenact=reenact_report,
                  warnings=create_report.get("warnings", []) + reenact_report.get("warnings", []))  # fmt: skip
    return paths

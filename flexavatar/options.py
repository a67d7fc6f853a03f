"""One request's options with their defaults, written once for the pipeline, the app and the CLI.

:class:`RequestOptions` holds every knob of a request (turntable frames, resolution, motion
smoothing, seconds of driving video, ...). Each field says which pipeline step takes it, under
which keyword, its command-line flag and its help text, so the pipeline's signatures
(``DEFAULTS.smoothing``), the CLI's flags (:func:`add_arguments`) and the Space's widgets
read the same values. Defaults that depend on the hardware (turntable frames, seconds of
driving video) are chosen here too: a free 2-vCPU Space must answer in a minute or two.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field

import torch

from flexavatar.errors import InvalidInputError

ON_GPU = torch.cuda.is_available()
#: CPU vs GPU: a 360° turntable of this many frames, and at most this many seconds of driving video.
CPU_TURNTABLE_FRAMES, GPU_TURNTABLE_FRAMES = 48, 72
CPU_MAX_SECONDS, GPU_MAX_SECONDS = 10.0, 30.0
RESOLUTIONS = (256, 512)
MAX_TURNTABLE_FRAMES = 1440
MAX_REFINE_SECONDS = 600.0
WHITE = (255, 255, 255)


def _option(default, step: str, help: str, arg: str | None = None, flag: str | None = None, flag_help: str = ""):
    """A field used by pipeline step ``step`` ("create", "turntable", "reenact"; "render": both
    turntable and reenact) as keyword ``arg`` (default: the field's name), given on the command
    line as ``flag`` (for a boolean: the flag that flips the default, described by ``flag_help``)."""
    metadata = {"step": step, "help": help, "arg": arg, "flag": flag, "flag_help": flag_help or help}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RequestOptions:
    """Everything a request may set besides its photos and driving video (plain values)."""

    refine_seconds: float = _option(0.0, "create", "seconds of test-time refinement (0 = off)", flag="--refine")
    turntable_frames: int = _option(
        GPU_TURNTABLE_FRAMES if ON_GPU else CPU_TURNTABLE_FRAMES, "turntable", "turntable frames (one 360° orbit)",
        arg="frames", flag="--frames",
    )  # fmt: skip
    turntable_fps: float = _option(24.0, "turntable", "turntable frames per second", arg="fps", flag="--fps")
    elevation_deg: float = _option(10.0, "turntable", "turntable camera elevation in degrees", flag="--elevation")
    resolution: int = _option(256, "render", "output frame size in pixels (256 or 512)")
    relative: bool = _option(
        True, "reenact", "transfer the driver's changes of expression and pose since its first frame",
        flag="--absolute", flag_help="copy the driver's expression and pose instead of their changes",
    )  # fmt: skip
    smoothing: float = _option(0.5, "reenact", "temporal smoothing of the tracked motion, 0 (off) .. 1 (strong)")
    # chosen by the cross-reenactment table of ``python -m flexavatar eval --motion`` (README, Motion)
    neutralise: bool = _option(
        True, "reenact", "start from a neutral face: the source photo's expression is removed",
        flag="--keep-expression", flag_help="keep the source photo's expression as the avatar's rest expression",
    )  # fmt: skip
    follow_translation: bool = _option(
        False, "reenact", "follow the driver's head translation and distance fully (default: damped and bounded)",
    )  # fmt: skip
    side_by_side: bool = _option(False, "reenact", "put the driving face left of the avatar")
    max_seconds: float = _option(
        GPU_MAX_SECONDS if ON_GPU else CPU_MAX_SECONDS, "reenact", "use at most this many seconds of the driving video (0 = all)",
    )  # fmt: skip
    background: tuple[int, int, int] = _option(WHITE, "render", "background colour, e.g. '#ffffff'")

    def __post_init__(self) -> None:
        if int(self.resolution) not in RESOLUTIONS:
            raise InvalidInputError(f"Resolution must be 256 or 512 pixels, got {self.resolution}.")
        if not 1 <= int(self.turntable_frames) <= MAX_TURNTABLE_FRAMES:
            raise InvalidInputError(
                f"Turntable frames must be between 1 and {MAX_TURNTABLE_FRAMES}, got {self.turntable_frames}."
            )
        if not 0.0 <= float(self.smoothing) <= 1.0:
            raise InvalidInputError(f"Smoothing must be between 0 and 1, got {self.smoothing}.")
        if not 0.0 <= float(self.refine_seconds) <= MAX_REFINE_SECONDS:
            raise InvalidInputError(
                f"Refinement must take 0 to {MAX_REFINE_SECONDS:.0f} seconds, got {self.refine_seconds}."
            )
        if float(self.max_seconds) < 0:
            raise InvalidInputError(f"Max seconds of driving video must be 0 (all) or more, got {self.max_seconds}.")
        if float(self.turntable_fps) <= 0:
            raise InvalidInputError(f"Turntable fps must be above 0, got {self.turntable_fps}.")

    @classmethod
    def from_values(cls, **values) -> RequestOptions:
        """Options from loosely typed values (widgets, JSON, argparse): numbers as strings or
        floats, the background as a colour string; ``None`` means the default."""
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(values) - set(kinds)
        if unknown:
            raise TypeError(f"unknown request options: {sorted(unknown)}")
        typed = {}
        for name, value in values.items():
            if value is None:
                continue
            kind = kinds[name]
            if name == "background":
                typed[name] = parse_colour(value)
            elif kind == "bool":
                typed[name] = bool(value)
            elif kind == "int":
                typed[name] = int(round(float(value)))
            else:
                typed[name] = float(value)
        return cls(**typed)

    def replace(self, **changes) -> RequestOptions:
        """A copy with some options changed (same coercion as :meth:`from_values`)."""
        return self.from_values(**{**dataclasses.asdict(self), **changes})

    def step_kwargs(self, step: str) -> dict:
        """The keyword arguments of pipeline step ``step`` ("create", "turntable", "reenact");
        "render" options (resolution, background) go to both turntable and reenact."""
        steps = {step, "render"} if step in ("turntable", "reenact") else {step}
        return {
            f.metadata["arg"] or f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata["step"] in steps
        }


DEFAULTS = RequestOptions()


def parse_colour(value) -> tuple[int, int, int]:
    """``#rgb`` / ``#rrggbb`` / ``rgb(a)(r, g, b[, a])`` (what gr.ColorPicker sends) or an RGB
    triple -> RGB 0-255; ``None`` / empty -> white."""
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return tuple(int(round(min(max(float(v), 0.0), 255.0))) for v in value)
    text = str(value or "#ffffff").strip()
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


def hex_colour(rgb: tuple[int, int, int]) -> str:
    """RGB 0-255 -> ``"#rrggbb"`` (what colour widgets and the API take)."""
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def add_arguments(parser: argparse.ArgumentParser, *steps: str) -> None:
    """Add the flags of the options used by ``steps`` to a CLI sub-command, defaults from
    :data:`DEFAULTS` (a boolean's flag flips its default)."""
    wanted = set(steps) | ({"render"} if {"turntable", "reenact"} & set(steps) else set())
    for f in dataclasses.fields(RequestOptions):
        if f.metadata["step"] not in wanted:
            continue
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        default = getattr(DEFAULTS, f.name)
        if f.type == "bool":  # a flag that turns the default off, e.g. --absolute
            flag = f.metadata["flag"] or ("--no-" if default else "--") + f.name.replace("_", "-")
            parser.add_argument(flag, dest=f.name, action="store_false" if default else "store_true",
                                help=f.metadata["flag_help"])  # fmt: skip
            continue
        kwargs = dict(dest=f.name, metavar=flag[2:].upper().replace("-", "_"), default=default)
        if f.name == "resolution":
            kwargs.update(type=int, choices=RESOLUTIONS, metavar="{256,512}")
        elif f.name == "background":
            kwargs.update(type=parse_colour, metavar="COLOUR")
            default = hex_colour(default)
        else:
            kwargs.update(type=int if f.type == "int" else float)
        parser.add_argument(flag, help=f"{f.metadata['help']} (default {default})", **kwargs)


def from_arguments(args: argparse.Namespace) -> RequestOptions:
    """The :class:`RequestOptions` that :func:`add_arguments` flags were parsed into."""
    names = {f.name for f in dataclasses.fields(RequestOptions)}
    return RequestOptions.from_values(**{k: v for k, v in vars(args).items() if k in names})

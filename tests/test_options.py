"""flexavatar.options: one request's options, defaults written once for pipeline, app and CLI."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from flexavatar import pipeline
from flexavatar.__main__ import build_parser
from flexavatar.errors import InvalidInputError
from flexavatar.options import DEFAULTS, RequestOptions, from_arguments, hex_colour

STEP_FUNCTIONS = {"create": pipeline.create_avatar, "turntable": pipeline.turntable, "reenact": pipeline.reenact}


@pytest.mark.parametrize("step", sorted(STEP_FUNCTIONS))
def test_pipeline_signatures_take_their_defaults_from_options(step):
    """Every option of a step is a keyword of its pipeline function, with the same default."""
    parameters = inspect.signature(STEP_FUNCTIONS[step]).parameters
    kwargs = DEFAULTS.step_kwargs(step)
    assert kwargs, step
    for name, value in kwargs.items():
        assert name in parameters, f"pipeline.{STEP_FUNCTIONS[step].__name__} has no {name!r}"
        assert parameters[name].default == value, (step, name)


def test_every_option_reaches_a_step():
    used = {name for step in STEP_FUNCTIONS for name in DEFAULTS.step_kwargs(step)}
    fields = {f.metadata["arg"] or f.name for f in dataclasses.fields(RequestOptions)}
    assert used == fields


def test_cpu_and_gpu_defaults():
    import torch

    on_gpu = torch.cuda.is_available()
    assert DEFAULTS.turntable_frames == (72 if on_gpu else 48)
    assert DEFAULTS.max_seconds == (30.0 if on_gpu else 10.0)


def test_values_from_widgets_are_coerced_and_checked():
    options = RequestOptions.from_values(resolution="512", turntable_frames=24.0, smoothing="0.25",
                                         background="rgba(0, 128, 255, 1)", side_by_side=1, max_seconds=None)  # fmt: skip
    assert (options.resolution, options.turntable_frames, options.smoothing) == (512, 24, 0.25)
    assert options.background == (0, 128, 255) and options.side_by_side is True
    assert options.max_seconds == DEFAULTS.max_seconds  # None means the default
    assert options.replace(resolution=256).resolution == 256 and options.resolution == 512
    assert hex_colour(options.background) == "#0080ff"
    for bad, match in (({"resolution": 300}, "256 or 512"), ({"smoothing": 2}, "between 0 and 1"),
                       ({"turntable_frames": 0}, "between 1 and"), ({"background": "teal-ish"}, "not a colour"),
                       ({"max_seconds": -1}, "0 \\(all\\) or more")):  # fmt: skip
        with pytest.raises(InvalidInputError, match=match):
            RequestOptions.from_values(**bad)
    with pytest.raises(TypeError, match="frames"):
        RequestOptions.from_values(frames=3)


def test_cli_flags_parse_into_the_same_options():
    parser = build_parser()
    args, _ = parser.parse_known_args(["run", "a.jpg", "--driving", "d.mp4", "--out-dir", "o"])
    assert from_arguments(args) == DEFAULTS
    args, _ = parser.parse_known_args(
        ["run", "a.jpg", "--driving", "d.mp4", "--out-dir", "o", "--frames", "24", "--absolute", "--side-by-side",
         "--max-seconds", "2.5", "--background", "#000", "--resolution", "512", "--refine", "3"]
    )  # fmt: skip
    assert from_arguments(args) == DEFAULTS.replace(
        turntable_frames=24, relative=False, side_by_side=True, max_seconds=2.5, background=(0, 0, 0),
        resolution=512, refine_seconds=3,
    )  # fmt: skip
    args, _ = parser.parse_known_args(["turntable", "me.avatar", "--out", "t.mp4", "--fps", "30"])
    assert from_arguments(args).step_kwargs("turntable")["fps"] == 30.0
    with pytest.raises(SystemExit):
        parser.parse_args(["reenact", "me.avatar", "d.mp4", "--out", "x.mp4", "--frames", "3"])  # not a reenact flag

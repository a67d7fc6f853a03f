"""Command line: ``python -m flexavatar {create,turntable,reenact,run,live,train,eval,calibrate,bench,publish} --help``."""

from __future__ import annotations

import argparse
import json
import sys

from flexavatar import options as request_options
from flexavatar.assets import AssetNotFoundError
from flexavatar.errors import InvalidInputError
from flexavatar.eval.bench import TOPICS, run_topic

# Each subcommand imports the modules it runs when it runs (pipeline, live, publish): importing
# them up front costs every start, `--help`, train and eval included, about 1 s of CPU (measured:
# 1.9 s -> 2.9 s user+sys for the imports alone). tests/test_structure.py allow-lists these.


class _Bar:
    """tqdm progress bar fed by the pipeline's (stage, fraction) callback."""

    def __init__(self):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, fraction: float) -> None:
        if stage != self.stage:
            self.close()
            self.bar = self._tqdm(total=100, desc=stage, leave=True, bar_format="{desc:>16}: {bar} {percentage:3.0f}%")
            self.stage = stage
        self.bar.n = round(100 * fraction)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _model(args):
    from flexavatar.pipeline import load_model

    return load_model(args.weights, args.device)


def _print_report(report: dict) -> None:
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)


def _create(args, rest) -> None:
    from flexavatar.pipeline import create_avatar

    bar, report = _Bar(), {}
    kwargs = request_options.from_arguments(args).step_kwargs("create")
    avatar = create_avatar(args.images, progress=bar, model=_model(args), report=report, **kwargs)
    bar.close()
    path = avatar.save(args.out)
    _print_report(report)
    print(f"wrote {path}")


def _turntable(args, rest) -> None:
    from flexavatar.pipeline import read_avatar, turntable

    model = _model(args)
    bar = _Bar()
    kwargs = request_options.from_arguments(args).step_kwargs("turntable")
    path = turntable(read_avatar(args.avatar, model), out_path=args.out, progress=bar, model=model, **kwargs)
    bar.close()
    print(f"wrote {path}")


def _reenact(args, rest) -> None:
    from flexavatar.pipeline import read_avatar, reenact

    model = _model(args)
    bar, report = _Bar(), {}
    kwargs = request_options.from_arguments(args).step_kwargs("reenact")
    path = reenact(read_avatar(args.avatar, model), args.driving, out_path=args.out, progress=bar, model=model,
                   report=report, **kwargs)  # fmt: skip
    bar.close()
    _print_report(report)
    print(f"wrote {path}")


def _run(args, rest) -> None:
    from flexavatar.pipeline import run

    bar, report = _Bar(), {}
    paths = run(args.images, args.driving, args.out_dir, request_options.from_arguments(args), progress=bar,
                model=_model(args), report=report)  # fmt: skip
    bar.close()
    _print_report(report)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


def _publish(args, rest) -> None:
    from flexavatar.publish import plan_publish, publish

    plan = plan_publish(args.repo_id, args.folder)
    print(plan.describe())
    if args.dry_run:
        print("dry run: nothing uploaded")
        return
    print(f"uploaded: {publish(plan, private=args.private)}")


def _live(args, rest) -> None:
    from flexavatar.live import LiveSession, require_display, run_camera_window
    from flexavatar.pipeline import read_avatar

    require_display()  # before loading anything
    model = _model(args)
    camera = int(args.camera) if str(args.camera).isdigit() else args.camera
    with LiveSession(read_avatar(args.avatar, model), model=model, resolution=args.resolution,
                     smoothing=args.smoothing) as session:  # fmt: skip
        stats = run_camera_window(session, camera)
    print(f"{stats['frames']} frames, {stats['fps']:.1f} frames/s, median latency {stats['latency_ms']:.0f} ms")


def _bench(args, rest) -> None:
    run_topic(args.topic, rest)


def _dispatch(module: str, rest: list[str]) -> None:
    """Hand the remaining arguments to ``module.main``; ``eval --motion`` is the motion evaluation."""
    if module == "flexavatar.eval.evaluate" and "--motion" in rest:
        module = "flexavatar.eval.motion"
    __import__(module, fromlist=["main"]).main(rest)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help="checkpoint folder or Hub repo id (default: shipped weights/)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flexavatar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create", help="photos -> .avatar file")
    p.add_argument("images", nargs="+", help="1-4 photos of one person")
    p.add_argument("--out", required=True, help="output .avatar path")
    request_options.add_arguments(p, "create")
    _add_common(p)
    p.set_defaults(func=_create)

    p = sub.add_parser("turntable", help=".avatar -> 360° turntable mp4")
    p.add_argument("avatar")
    p.add_argument("--out", required=True)
    request_options.add_arguments(p, "turntable")
    _add_common(p)
    p.set_defaults(func=_turntable)

    p = sub.add_parser("reenact", help=".avatar + driving video -> reenactment mp4 (keeps the audio)")
    p.add_argument("avatar")
    p.add_argument("driving")
    p.add_argument("--out", required=True)
    request_options.add_arguments(p, "reenact")
    _add_common(p)
    p.set_defaults(func=_reenact)

    p = sub.add_parser("run", help="photos + driving video -> avatar, .ply, turntable and reenactment")
    p.add_argument("images", nargs="+")
    p.add_argument("--driving", required=True)
    p.add_argument("--out-dir", required=True)
    request_options.add_arguments(p, "create", "turntable", "reenact")
    _add_common(p)
    p.set_defaults(func=_run)

    for name, module, helptext in (("train", "flexavatar.train.trainer", "train the network"),
                                   ("eval", "flexavatar.eval.evaluate", "self-reenactment evaluation table")):  # fmt: skip
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.set_defaults(func=lambda args, rest, module=module: _dispatch(module, rest))

    p = sub.add_parser("publish", help="upload weights, model card and assets to a Hub model repo")
    p.add_argument("repo_id", help="Hub model repo, 'user-or-org/name' (created if missing)")
    p.add_argument("--folder", default=None, help="folder laid out like weights/ (default: the shipped weights/)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    p.set_defaults(func=_publish)

    p = sub.add_parser("live", help="drive an avatar from your camera, live, in a desktop window")
    p.add_argument("avatar", help=".avatar file (python -m flexavatar create ...)")
    p.add_argument("--camera", default="0", help="camera index (0 = default webcam) or a video file")
    p.add_argument("--smoothing", type=float, default=0.3, help="temporal smoothing 0 (off) .. 1 (strong)")
    p.add_argument("--resolution", type=int, choices=request_options.RESOLUTIONS, default=256, help="avatar frame size")
    _add_common(p)
    p.set_defaults(func=_live)

    p = sub.add_parser("calibrate", help="fit the motion calibration in closed loop", add_help=False)
    p.set_defaults(func=lambda args, rest: _dispatch("flexavatar.calibration", rest))

    p = sub.add_parser("bench", help="print speed/memory figures for one part")
    p.add_argument("topic", choices=TOPICS)
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command not in ("bench", "train", "eval", "calibrate") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.func(args, rest)
    except (InvalidInputError, AssetNotFoundError) as exc:  # bad input, or a broken install: a message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

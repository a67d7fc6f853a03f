"""Command line: ``python -m flexavatar {create,turntable,reenact,run,train,eval,bench} --help``."""

from __future__ import annotations

import argparse
import sys


def _bench(args: argparse.Namespace, rest: list[str]) -> None:
    from flexavatar.eval.bench import run_topic

    run_topic(args.topic, rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flexavatar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="print speed/memory figures for one part (see flexavatar/eval)")
    bench.add_argument("topic", choices=["head", "render", "tracking", "model", "pipeline"])
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.func(args, rest)


if __name__ == "__main__":
    main(sys.argv[1:])

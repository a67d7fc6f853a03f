"""Benchmark harness: ``python -m flexavatar bench TOPIC`` runs ``flexavatar.eval.bench_TOPIC.main``.

Each topic prints its own figures (median of repeats, on the current device); none is a test.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable

TOPICS = ("head", "render", "tracking", "model", "pipeline", "live", "video", "soak", "motion")


def run_topic(topic: str, argv: list[str] | None = None) -> None:
    if topic not in TOPICS:
        raise SystemExit(f"unknown benchmark '{topic}'; choose one of: {', '.join(TOPICS)}")
    importlib.import_module(f"flexavatar.eval.bench_{topic}").main(argv or [])


def median_ms(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux ru_maxrss is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

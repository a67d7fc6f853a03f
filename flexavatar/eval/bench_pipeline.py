"""``python -m flexavatar bench pipeline``: wall time and peak RSS of ``run`` end to end.

Each measurement runs in a fresh subprocess so its peak RSS is its own. ``--long SECONDS``
also reenacts a driving clip looped to that length and compares peak RSS with the 2.4 s
clip: frames stream in chunks, so memory should not grow with the video's length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from flexavatar.video import iter_frames, probe_video, write_mp4

MEDIA = Path(__file__).resolve().parents[2].parent / "shared" / "media"

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from flexavatar import pipeline
model = pipeline.load_model()
t1 = time.perf_counter()
mode, image, video, out = sys.argv[1:5]
if mode == "run":
    pipeline.run([image], video, out, turntable_frames=72, resolution=256, model=model)
else:
    avatar = pipeline.create_avatar([image], model=model)
    pipeline.reenact(avatar, video, out_path=out + "/r.mp4", max_seconds=1e9, model=model)
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "work_s": t2 - t1,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(mode: str, image: Path, video: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(image), str(video), str(out)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flexavatar bench pipeline")
    parser.add_argument("--media", default=str(MEDIA))
    parser.add_argument("--long", type=float, default=0.0, help="also reenact a clip looped to this many seconds")
    args = parser.parse_args(argv)
    image, video = Path(args.media) / "astronaut.png", Path(args.media) / "single_face.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = _child("run", image, video, tmp)
        print(f"run (1 image, no refinement, 72-frame turntable + {video.name} reenactment, 256²): "
              f"{result['work_s']:.1f} s wall (+ {result['load_s']:.1f} s model load), "
              f"peak RSS {result['peak_rss_mb']:.0f} MiB")  # fmt: skip
        if args.long:
            looped = tmp / "long.mp4"
            info = probe_video(video)
            clip = list(iter_frames(info))
            count = round(args.long * info.fps)
            write_mp4(looped, (clip[i % len(clip)] for i in range(count)), fps=info.fps)
            for clip in (video, looped):
                out = tmp / clip.stem
                out.mkdir()
                r = _child("reenact", image, clip, out)
                print(f"reenact {probe_video(clip).duration_s:6.1f} s clip: {r['work_s']:.1f} s wall, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MiB")  # fmt: skip

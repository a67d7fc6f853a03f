"""Tracking benchmark: ``python -m flexavatar bench tracking [--media DIR] [--repeats N]``.

Prints the one-time load time (MediaPipe models, landmark correspondence, ICT landmark bases,
first torch call), then, warm: frames/s of :func:`track_video` on ``single_face.mp4``
(target >= 30) and seconds of :func:`fit_head` for 1 and 4 photos (target <= 1 s for 4).
Medians over ``--repeats`` runs; detection and cropping are included in the fit times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from flexavatar.images import read_image
from flexavatar.tracking import crop_head, detect, fit, track_video
from flexavatar.tracking.correspondence import load_correspondence
from flexavatar.video import probe_video

DEFAULT_MEDIA = Path(__file__).resolve().parents[2].parent / "shared" / "media"
FIT_PHOTOS = ("astronaut.png", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "single_face.jpg")
VIDEO = "single_face.mp4"


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flexavatar bench tracking", description=__doc__)
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA, help="folder with the test media")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv or [])
    photos = [read_image(args.media / name) for name in FIT_PHOTOS]
    video = args.media / VIDEO

    start = time.perf_counter()
    detect.image_models()
    load_correspondence()
    fit.landmark_bases(fit.DEFAULT_NUM_IDENTITY)
    fit.fit_head(photos[:1])  # first torch autograd/Adam call pays a one-time setup cost
    track_video(video, max_frames=2)  # VIDEO-mode graph, decoder setup
    load_s = time.perf_counter() - start
    print(f"one-time load (models, correspondence, first calls): {load_s:.2f} s")

    frames = probe_video(video).frame_count
    track_s = _median_seconds(lambda: track_video(video), args.repeats)
    print(
        f"track_video {VIDEO}: {frames} frames in {track_s:.2f} s = {frames / track_s:.1f} frames/s "
        "(target >= 30; includes decode, a fresh VIDEO landmarker, smoothing)"
    )
    fit1_s = _median_seconds(lambda: fit.fit_head(photos[:1]), args.repeats)
    print(f"fit_head 1 image ({FIT_PHOTOS[0]}): {fit1_s:.2f} s")
    fit4_s = _median_seconds(lambda: fit.fit_head(photos), args.repeats)
    print(f"fit_head 4 images ({', '.join(FIT_PHOTOS)}): {fit4_s:.2f} s (target <= 1 s)")
    detections = [detect.detect_face(image) for image in photos]
    crops = [crop_head(image, det) for image, det in zip(photos, detections, strict=True)]
    detect4_s = _median_seconds(
        lambda: [crop_head(im, detect.detect_face(im)) for im in photos], args.repeats
    )
    solve4_s = _median_seconds(lambda: fit.fit_crops(crops, detections, list(FIT_PHOTOS)), args.repeats)
    print(
        f"  of which detect + segment + crop: {detect4_s:.2f} s, optimisation ({fit.ITERATIONS} steps): "
        f"{solve4_s:.2f} s"
    )
    print(f"torch threads: {torch.get_num_threads()} (the fit itself runs single-threaded)")


if __name__ == "__main__":
    main()

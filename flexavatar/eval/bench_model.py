"""``python -m flexavatar bench model``: avatar creation, deform+render and refinement speed."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from flexavatar.eval.bench import median_ms, peak_rss_mb
from flexavatar.head.blendshapes import NUM_EXPRESSIONS
from flexavatar.options import DEFAULTS
from flexavatar.pipeline import load_model, turntable_cameras
from flexavatar.refine import refine
from flexavatar.tracking import fit_head

MEDIA = Path(__file__).resolve().parents[2].parent / "shared" / "media"
PHOTOS = ["astronaut.png", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "single_face.jpg"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flexavatar bench model")
    parser.add_argument("--media", default=str(MEDIA), help="folder with the benchmark photos")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--refine-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = load_model(args.weights)
    print(f"device={model.device} threads={torch.get_num_threads()} config={model.config.name} "
          f"gaussians={model.atlas.num_texels} model load {time.perf_counter() - start:.2f} s")  # fmt: skip
    paths = [str(Path(args.media) / name) for name in PHOTOS]
    size = model.config.crop_size
    for count in (1, 4):
        # the 4-image case uses different people: speed only, not quality
        start = time.perf_counter()
        fit = fit_head(paths[:count], resolution=size, num_identity=model.config.num_identity)
        tracking_s = time.perf_counter() - start
        crops = torch.from_numpy(np.stack([c.masked for c in fit.crops])).permute(0, 3, 1, 2).float() / 255
        masks = torch.from_numpy(np.stack([c.mask for c in fit.crops]))[:, None].float()
        inputs = (crops.to(model.device), masks.to(model.device), [c.to(model.device) for c in fit.cameras],
                  fit.identity.to(model.device), fit.expressions.to(model.device))  # fmt: skip
        with torch.no_grad():
            ms = median_ms(lambda inputs=inputs: model.encode(*inputs), args.repeats, warmup=1)
        print(f"create avatar, {count} image(s): feed-forward {ms / 1000:.3f} s   (tracking+fit {tracking_s:.2f} s)")
    # speed of animation and refinement on the single-photo avatar (astronaut.png)
    fit = fit_head(paths[:1], resolution=size, num_identity=model.config.num_identity)
    crops = torch.from_numpy(np.stack([c.masked for c in fit.crops])).permute(0, 3, 1, 2).float().to(model.device) / 255
    masks = torch.from_numpy(np.stack([c.mask for c in fit.crops]))[:, None].float().to(model.device)
    cameras = [c.to(model.device) for c in fit.cameras]
    with torch.no_grad():
        avatar = model.encode(crops, masks, cameras, fit.identity.to(model.device), fit.expressions.to(model.device))
        gen = torch.Generator().manual_seed(0)
        expressions = (torch.rand(8, NUM_EXPRESSIONS, generator=gen) * 0.5).to(model.device)
        counter = iter(range(10**9))

        def one_frame():
            i = next(counter) % 8
            model.render(avatar, cameras, expressions[i : i + 1])

        ms = median_ms(one_frame, max(args.repeats, 10), warmup=2)
        batch_ms = median_ms(lambda: model.render(avatar, cameras * 8, expressions), args.repeats, warmup=1) / 8
        deform_ms = median_ms(lambda: model.deform(avatar, expressions[:1]), max(args.repeats, 10), warmup=1)
        orbit = turntable_cameras(model, 8, DEFAULTS.elevation_deg, size)
        orbit_ms = median_ms(lambda: model.render(avatar, orbit, expressions[:1]), args.repeats, warmup=1) / 8
    print(f"deform+render {size}²: {ms:.1f} ms/frame ({1000 / ms:.1f} FPS) one frame at a time "
          f"(deform {deform_ms:.1f} ms); {batch_ms:.1f} ms/frame ({1000 / batch_ms:.1f} FPS) in batches of 8 "
          "as reenact() renders")  # fmt: skip
    print(f"one expression from 8 turntable cameras (deformed once, one rasterize call): {orbit_ms:.1f} ms/frame")
    refine(model, avatar, crops, cameras, fit.expressions, steps=2)  # compile the kernels first
    result = refine(model, avatar, crops, cameras, fit.expressions, seconds=args.refine_seconds)
    print(f"refinement (1 view): {result.steps / result.seconds:.1f} steps/s ({result.steps} steps in "
          f"{result.seconds:.1f} s), head-region PSNR {result.psnr_before:.2f} -> {result.psnr_after:.2f} dB")  # fmt: skip
    print(f"peak RSS {peak_rss_mb():.0f} MiB")

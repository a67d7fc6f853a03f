"""Renderer benchmark: ``python -m flexavatar bench render``.

Renders a head-like scene (Gaussians on the surface of a 0.09 x 0.12 x 0.10 m ellipsoid, scales
2-4 mm, opacities 0.5-1, camera 0.7 m away with a 25° field of view so the head fills most of
the frame) at 10k/40k Gaussians and 256²/512², forward and forward+backward, with

- ``numba``: our CPU backend with the compiled compositing kernel (the default on CPU);
- ``torch``: our pure-PyTorch tile backend;
- ``naive``: gsplat's pure-torch projection (``_fully_fused_projection``) and dense compositing
  of every Gaussian at every pixel, sorted by depth, in pixel chunks (checkpointed for the
  backward so it fits in memory). Slow cases are timed on a band of image rows and scaled to
  the full image (marked ``est.``): its cost is linear in the number of pixels.

Prints the median ms/frame over repeats and the ratio naive / ours, then a stage breakdown for
10k @ 256² and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from flexavatar.camera import focal_from_fov, orbit_camera, stack_cameras
from flexavatar.render import rasterize
from flexavatar.render.numba_backend import (
    bin_gaussians_to_tiles_numba,
    composite_tiles_numba,
    numba_available,
)
from flexavatar.render.projection import bin_gaussians_to_tiles, project_gaussians
from flexavatar.render.torch_backend import composite_tiles_torch


def head_scene(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """n Gaussians on a head-sized ellipsoid: (means, quats, scales, opacities, colors), float32."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, 3, generator=g)
    direction = direction / direction.norm(dim=1, keepdim=True)
    means = direction * torch.tensor([0.09, 0.12, 0.10])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.empty(n, 3).uniform_(0.002, 0.004, generator=g)
    opacities = torch.empty(n).uniform_(0.5, 1.0, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opacities, colors


def head_camera(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    camera = orbit_camera(20.0, 5.0, 0.7, (0.0, 0.0, 0.0), focal_from_fov(25.0, size), size, size)
    return stack_cameras([camera])


# ----------------------------------------------------------------------------------------------
# Naive baseline
# ----------------------------------------------------------------------------------------------


def _dense_chunk(means2d, conics, opacities, features, pix_x, pix_y):
    """Composite all (depth-sorted) Gaussians [N] over pixels [P]: ([P,D], alpha [P]).

    Pixels x Gaussians layout so the transmittance cumprod runs along contiguous memory.
    """
    dx = means2d[None, :, 0] - pix_x[:, None]  # [P,N]
    dy = means2d[None, :, 1] - pix_y[:, None]
    sigma = 0.5 * (conics[None, :, 0] * dx * dx + conics[None, :, 2] * dy * dy) + conics[None, :, 1] * dx * dy
    alpha = torch.clamp_max(opacities[None, :] * torch.exp(-sigma), 0.999)
    with torch.no_grad():
        accepted = (alpha >= 1.0 / 255.0) & (sigma >= 0)
        t_incl = torch.cumprod(torch.where(accepted, 1 - alpha, torch.ones_like(alpha)), dim=1)
        used = accepted & (t_incl > 1e-4)
    alpha = torch.where(used, alpha, torch.zeros_like(alpha))
    t_incl = torch.cumprod(1 - alpha, dim=1)
    t_excl = torch.cat([torch.ones_like(t_incl[:, :1]), t_incl[:, :-1]], dim=1)
    weights = alpha * t_excl
    return weights @ features, 1 - t_incl[:, -1]


def render_naive(means, quats, scales, opacities, colors, viewmats, Ks, width, height, rows=None, chunk=128):
    """Dense reference renderer on top of gsplat's pure-torch projection.

    ``rows``: optional (first, last) band of image rows to render (for estimating slow cases).
    Returns (features [rows*W, 4] = rgb + accumulated depth, alpha [rows*W]) for camera 0.
    """
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, width, height)
    visible = (radii[0] > 0).all(-1)
    order = torch.argsort(torch.where(visible, depths[0], torch.full_like(depths[0], math.inf)))
    order = order[: int(visible.sum())]
    m2, con, op = means2d[0][order], conics[0][order], opacities[order]
    feats = torch.cat([colors[order], depths[0][order, None]], dim=-1)
    first, last = rows if rows is not None else (0, height)
    ys, xs = torch.meshgrid(torch.arange(first, last), torch.arange(width), indexing="ij")
    pix_x, pix_y = xs.flatten().float() + 0.5, ys.flatten().float() + 0.5
    outs, alphas = [], []
    for start in range(0, pix_x.numel(), chunk):
        px, py = pix_x[start : start + chunk], pix_y[start : start + chunk]
        if torch.is_grad_enabled():
            f, a = checkpoint(_dense_chunk, m2, con, op, feats, px, py, use_reentrant=False)
        else:
            f, a = _dense_chunk(m2, con, op, feats, px, py)
        outs.append(f)
        alphas.append(a)
    if not outs:  # empty band: projection only (used to time the fixed cost)
        return feats[:0] * 0, op[:0] * 0
    return torch.cat(outs), torch.cat(alphas)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def _time_ms(fn: Callable[[], None], repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()  # numba compile, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _ours(backend: str, scene, viewmats, Ks, size: int, backward: bool) -> Callable[[], None]:
    def run() -> None:
        if backward:
            inputs = [t.clone().requires_grad_(True) for t in scene]
            rgb, alpha, depth = rasterize(*inputs, viewmats, Ks, size, size, backend=backend)
            (rgb.sum() + alpha.sum() + depth.sum()).backward()
        else:
            with torch.no_grad():
                rasterize(*scene, viewmats, Ks, size, size, backend=backend)

    return run


def _naive(scene, viewmats, Ks, size: int, backward: bool, rows) -> Callable[[], None]:
    def run() -> None:
        if backward:
            inputs = [t.clone().requires_grad_(True) for t in scene]
            feats, alpha = render_naive(*inputs, viewmats, Ks, size, size, rows=rows)
            (feats.sum() + alpha.sum()).backward()
        else:
            with torch.no_grad():
                render_naive(*scene, viewmats, Ks, size, size, rows=rows)

    return run


def stage_breakdown(n: int = 10_000, size: int = 256, repeats: int = 7) -> list[tuple[str, float]]:
    """Median ms of each stage of the numba backend (forward and backward)."""
    scene = head_scene(n)
    viewmats, Ks = head_camera(size)
    means, quats, scales, opacities, colors = (t.clone().requires_grad_(True) for t in scene)
    state = {}

    def project():
        state["p"] = project_gaussians(means, quats, scales, opacities, viewmats, Ks, size, size)

    def bins():
        state["b"] = bin_gaussians_to_tiles_numba(state["p"], size, size, 16)

    def composite():
        p = state["p"]
        features = torch.cat([colors, p.depths[0, :, None]], dim=-1)
        state["out"] = composite_tiles_numba(
            p.means2d[0], p.conics[0], opacities, features, state["b"], 1, size, size
        )

    def backward():
        project()
        composite()
        feat, alpha = state["out"]
        (feat.sum() + alpha.sum()).backward()

    rows = [("project", _time_ms(project, repeats)), ("bin", _time_ms(bins, repeats))]
    rows.append(("composite fwd", _time_ms(composite, repeats)))
    rows.append(("project+composite fwd+bwd", _time_ms(backward, repeats)))
    rows.append(("(tile, Gaussian) pairs, 16 px", float(state["b"].pair_gaussian.numel())))
    return rows


def frame_batch_comparison(backend: str, n: int = 10_000, size: int = 256, frames: int = 8, repeats: int = 5):
    """ms/frame for ``frames`` per-frame Gaussian sets [F,N,...] (as a reenactment renders them)
    in one rasterize call and in one call per frame, forward only: {(way, "wall"|"cpu"): ms}.
    CPU time (all threads) is steadier than wall time on a shared machine."""
    scenes = [head_scene(n, seed) for seed in range(frames)]
    batch = [torch.stack(parts) for parts in zip(*scenes, strict=True)]  # [F,N,...] each
    cameras = [orbit_camera(20.0 + 5 * f, 5.0, 0.7, (0.0, 0.0, 0.0), focal_from_fov(25.0, size), size, size)
               for f in range(frames)]  # fmt: skip
    viewmats, Ks = stack_cameras(cameras)
    ways = {
        "one call": lambda: rasterize(*batch, viewmats, Ks, size, size, backend=backend),
        "per frame": lambda: [
            rasterize(*scenes[f], viewmats[f : f + 1], Ks[f : f + 1], size, size, backend=backend)
            for f in range(frames)
        ],
    }
    result = {}
    with torch.no_grad():
        for way, fn in ways.items():
            fn()  # warm-up
            wall, cpu = [], []
            for _ in range(repeats):
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                fn()
                wall.append(time.perf_counter() - start_wall)
                cpu.append(time.process_time() - start_cpu)
            result[way, "wall"] = 1e3 * statistics.median(wall) / frames
            result[way, "cpu"] = 1e3 * statistics.median(cpu) / frames
    return result


# Gaussian-pixel pairs the naive baseline is timed on per case (about a second or two).
NAIVE_ELEMENTS = 1.5e7


def torch_breakdown(n: int = 10_000, size: int = 256, repeats: int = 3) -> list[tuple[str, float]]:
    """Median ms of the pure-torch backend's stages (forward) and its padded work size."""
    scene = head_scene(n)
    means, quats, scales, opacities, colors = scene
    viewmats, Ks = head_camera(size)
    state = {}

    def project():
        state["p"] = project_gaussians(means, quats, scales, opacities, viewmats, Ks, size, size)

    def bins():
        state["b"] = bin_gaussians_to_tiles(state["p"], size, size, 8)

    def composite():
        p = state["p"]
        features = torch.cat([colors, p.depths[0, :, None]], dim=-1)
        composite_tiles_torch(p.means2d[0], p.conics[0], opacities, features, state["b"], 1, size, size)

    with torch.no_grad():
        rows = [("project", _time_ms(project, repeats)), ("bin (8 px tiles)", _time_ms(bins, repeats))]
        rows.append(("composite fwd", _time_ms(composite, repeats)))
    rows.append(("alpha evaluations (M)", state["b"].pair_gaussian.numel() * 64 / 1e6))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flexavatar bench render", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats for our backends (median)")
    parser.add_argument("--quick", action="store_true", help="10k @ 256² only")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    backends = (["numba"] if numba_available() else []) + ["torch"]
    cases = [(10_000, 256)] if args.quick else [(10_000, 256), (10_000, 512), (40_000, 256), (40_000, 512)]
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(
        f"flexavatar render benchmark: head scene, torch {torch.__version__}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={policy}"
    )
    if policy.upper() != "PASSIVE" and args.threads > 1:
        print(
            "note: on a shared CPU, OpenMP threads that busy-wait (the default policy) can slow every "
            "PyTorch op by 10x or more; run with OMP_WAIT_POLICY=PASSIVE set before Python starts."
        )
    header = f"{'case':<16}{'pass':<9}" + "".join(f"{b + ' ms':>12}" for b in backends)
    header += f"{'naive ms':>14}" + "".join(f"{'x vs ' + b:>12}" for b in backends)
    print(header)
    print("-" * len(header))
    bench_start = time.perf_counter()
    for n, size in cases:
        scene = head_scene(n)
        viewmats, Ks = head_camera(size)
        for backward in (False, True):
            ours = {}
            for backend in backends:
                work = n * size * size * (3 if backward else 1)
                if backend == "torch" and work > 10_000 * 256 * 256:  # seconds per frame: run once
                    ours[backend] = _time_ms(
                        _ours(backend, scene, viewmats, Ks, size, backward), 1, warmup=False
                    )
                else:
                    ours[backend] = _time_ms(
                        _ours(backend, scene, viewmats, Ks, size, backward), args.repeats
                    )
            naive_text, naive_ms = "-", None
            if not args.no_naive:
                # The dense baseline costs ~N x pixels; time a central band of about
                # NAIVE_ELEMENTS Gaussian-pixel pairs once and scale to the full image.
                band = max(2, min(size, int(NAIVE_ELEMENTS / (n * size * (3 if backward else 1)))))
                rows = (size // 2 - band // 2, size // 2 - band // 2 + band)
                band_ms = _time_ms(_naive(scene, viewmats, Ks, size, backward, rows), 1, warmup=False)
                # Projection (and its backward) is paid once per frame, not per row.
                fixed_ms = _time_ms(_naive(scene, viewmats, Ks, size, backward, (0, 0)), 1, warmup=False)
                naive_ms = fixed_ms + max(band_ms - fixed_ms, 0.0) * size / band
                naive_text = f"{naive_ms:.0f}" + (" est." if band < size else "")
            line = f"{f'{n // 1000}k @ {size}²':<16}{'fwd+bwd' if backward else 'fwd':<9}"
            line += "".join(f"{ours[b]:>12.1f}" for b in backends) + f"{naive_text:>14}"
            line += "".join(f"{naive_ms / ours[b]:>11.0f}x" if naive_ms else f"{'-':>12}" for b in backends)
            print(line, flush=True)
    if "numba" in backends:
        ms = frame_batch_comparison("numba", repeats=args.repeats)
        print(
            "\n8 frames of 10k per-frame Gaussians @ 256², numba fwd, ms/frame (wall / CPU of all threads):"
        )
        for way in ("one call", "per frame"):
            print(f"  {way:<28}{ms[way, 'wall']:>10.1f}{ms[way, 'cpu']:>10.1f}")
        print("\nstage breakdown, numba backend, 10k @ 256² (median ms):")
        for name, value in stage_breakdown(repeats=args.repeats):
            print(f"  {name:<28}{value:>10.1f}")
    print("\nstage breakdown, torch backend, 10k @ 256² forward (median ms):")
    for name, value in torch_breakdown():
        print(f"  {name:<28}{value:>10.1f}")
    print(
        "  (every (tile, Gaussian) pair is evaluated at all 64 pixels of its tile with ~25 full-tensor\n"
        "   passes; the numba kernel visits only the pixels inside each Gaussian's 1/255 ellipse)"
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mb:.0f} MB; benchmark took {time.perf_counter() - bench_start:.0f} s")
    print(
        "naive 'est.': projection timed alone plus compositing timed on a band of rows at the image "
        "centre, scaled to the full image."
    )


if __name__ == "__main__":
    main()

"""CPU backend with a compiled binning and compositing kernel (numba), same math as the torch one.

:func:`~.rasterizer.rasterize` projects with the vectorised PyTorch code of :mod:`.projection`
(autograd carries its gradients) and calls the two steps here. Tile binning (a counting sort)
and the per-pixel compositing run in :mod:`.numba_kernels`; the compositing is wrapped in an ``autograd.Function`` with a hand-written
backward (gsplat's backward, race-free because every (tile, Gaussian) pair gets its own gradient
row). Tiles are split over ``torch.get_num_threads()`` Python threads (the kernels release the
GIL). Needs numba and CPU tensors; float32 or float64 (half types are rendered in float32).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from .projection import (
    ALPHA_THRESHOLD,
    MAX_ALPHA,
    TRANSMITTANCE_STOP,
    Projected,
    TileBins,
    tile_ranges,
)

# numba_kernels is imported where it is used, not above: numba is optional (numba_available()
# decides, the torch compositor is the fallback) and importing it costs ~0.5 s that the CUDA and
# torch paths never need. tests/test_structure.py allow-lists these imports.
_numba_available: bool | None = None


def numba_available() -> bool:
    """True when numba can be imported (the kernels compile lazily on first use)."""
    global _numba_available
    if _numba_available is None:
        try:
            import numba  # noqa: F401

            _numba_available = True
        except ImportError:
            _numba_available = False
    return _numba_available


_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None  # a forked child (DataLoader worker) must not reuse the parent's pool
_pool_lock = threading.Lock()


def _run_split(kernel, tile_ids: torch.Tensor, *args) -> None:
    """Run ``kernel(*args[:6], tile_ids_part, *args[6:])`` over ``torch.get_num_threads()`` threads.

    The kernels are serial and release the GIL, so Python threads give real parallelism. We do
    not use numba's own parallel layer: its OpenMP pool and PyTorch's spin against each other
    and slowed the PyTorch ops that follow by >10x on a 2-core machine.
    """
    global _pool, _pool_pid
    n_threads = max(1, min(torch.get_num_threads(), tile_ids.numel()))
    head, tail = args[:6], args[6:]
    if n_threads == 1:
        kernel(*head, tile_ids.numpy(), *tail)
        return
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid() or _pool._max_workers < n_threads - 1:
            _pool = ThreadPoolExecutor(max_workers=n_threads - 1, thread_name_prefix="flexavatar-raster")
            _pool_pid = os.getpid()
    # Interleaved split: neighbouring tiles cost about the same, so each thread gets a fair share.
    parts = [tile_ids[i::n_threads].contiguous().numpy() for i in range(n_threads)]
    futures = [_pool.submit(kernel, *head, part, *tail) for part in parts[1:]]
    kernel(*head, parts[0], *tail)  # the caller's share: one thread hand-off less per call
    for future in futures:
        future.result()


@torch.no_grad()
def bin_gaussians_to_tiles_numba(projected: Projected, width: int, height: int, tile_size: int) -> TileBins:
    """Same lists as :func:`~.projection.bin_gaussians_to_tiles`, by a compiled counting sort."""
    from . import numba_kernels as nk

    C, N = projected.depths.shape
    (x0, x1, y0, y1), counts, order = tile_ranges(projected, width, height, tile_size)
    tiles_x = -(-width // tile_size)
    tiles_y = -(-height // tile_size)
    flat_order = (order + torch.arange(C)[:, None] * N).flatten()
    flat_order = flat_order[counts.flatten()[flat_order] > 0].contiguous()
    tile_offsets = torch.empty(C * tiles_x * tiles_y + 1, dtype=torch.int64)
    pair_gaussian = nk.bin_pairs(
        flat_order.numpy(), *(t.flatten().contiguous().numpy() for t in (x0, x1, y0, y1)),
        N, tiles_x, tiles_x * tiles_y, tile_offsets.numpy(),
    )  # fmt: skip
    return TileBins(torch.from_numpy(pair_gaussian), tile_offsets, tile_size, tiles_x, tiles_y)


class _CompositeNumba(torch.autograd.Function):
    """(means2d [G,2], conics [G,3], opacities [G], features [G,D]) -> ([C,H,W,D], alpha [C,H,W,1])."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, bins: TileBins, num_cameras, width, height):
        from . import numba_kernels as nk

        dtype = means2d.dtype
        means2d, conics, opacities, features = (
            t.detach().contiguous() for t in (means2d, conics, opacities, features)
        )
        D = features.shape[1]
        if D != 4:
            raise ValueError(f"the numba kernels composite RGB + depth (4 channels), got {D}")
        np_dtype = means2d.numpy().dtype
        consts = nk.make_consts(np_dtype, ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_STOP)
        centres = nk.make_pixel_centres(np_dtype, width, height)
        out_features = torch.zeros(num_cameras, height, width, D, dtype=dtype)
        out_transmittance = torch.ones(num_cameras, height, width, dtype=dtype)
        out_last = torch.zeros(num_cameras, height, width, dtype=torch.int32)
        active_tiles = torch.nonzero(bins.tile_counts > 0).flatten()
        _run_split(
            nk.composite_forward, active_tiles,
            means2d.numpy(), conics.numpy(), opacities.numpy(), features.numpy(),
            bins.pair_gaussian.numpy(), bins.tile_offsets.numpy(),
            bins.tiles_x, bins.tile_size, width, height, consts, centres,
            out_features.numpy(), out_transmittance.numpy(), out_last.numpy(),
        )  # fmt: skip
        ctx.save_for_backward(means2d, conics, opacities, features, out_transmittance, out_last)
        ctx.bins = bins
        ctx.active_tiles = active_tiles
        ctx.image = (width, height)
        alpha = (1.0 - out_transmittance)[..., None]
        return out_features, alpha

    @staticmethod
    def backward(ctx, v_features_img, v_alpha_img):
        from . import numba_kernels as nk

        means2d, conics, opacities, features, transmittance, last = ctx.saved_tensors
        bins: TileBins = ctx.bins
        width, height = ctx.image
        dtype = means2d.dtype
        D = features.shape[1]
        if v_features_img is None:
            v_features_img = torch.zeros_like(transmittance)[..., None].expand(-1, -1, -1, D)
        if v_alpha_img is None:
            v_alpha_img = torch.zeros_like(transmittance)[..., None]
        v_features_img = v_features_img.to(dtype).contiguous()
        v_alpha_img = v_alpha_img.to(dtype).reshape(transmittance.shape).contiguous()
        np_dtype = means2d.numpy().dtype
        consts = nk.make_consts(np_dtype, ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_STOP)
        centres = nk.make_pixel_centres(np_dtype, width, height)
        n_pairs = bins.pair_gaussian.numel()
        v_pairs = torch.zeros(n_pairs, 6 + D, dtype=dtype)
        _run_split(
            nk.composite_backward, ctx.active_tiles,
            means2d.numpy(), conics.numpy(), opacities.numpy(), features.numpy(),
            bins.pair_gaussian.numpy(), bins.tile_offsets.numpy(),
            bins.tiles_x, bins.tile_size, width, height, consts, centres,
            transmittance.numpy(), last.numpy(), v_features_img.numpy(), v_alpha_img.numpy(),
            v_pairs.numpy(),
        )  # fmt: skip
        G = means2d.shape[0]
        v_gauss = torch.zeros(G, 6 + D, dtype=dtype).index_add_(0, bins.pair_gaussian, v_pairs)
        return v_gauss[:, 0:2], v_gauss[:, 2:5], v_gauss[:, 5], v_gauss[:, 6:], None, None, None, None


def composite_tiles_numba(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    bins: TileBins,
    num_cameras: int,
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back alpha compositing by the compiled kernels, differentiable.

    Same contract as :func:`~.torch_backend.composite_tiles_torch`: means2d [G,2] px, conics
    [G,3] 1/px², opacities [G], features [G,4] (RGB + depth), indexed by the flat Gaussian ids
    of ``bins`` (G = C*N); CPU float32 or float64 tensors. Returns accumulated features
    [C,H,W,4] (no background) and alpha [C,H,W,1].
    """
    if means2d.device.type != "cpu":
        raise ValueError(f"the numba backend needs CPU tensors, got {means2d.device}")
    if not numba_available():
        raise ImportError("backend='numba' needs numba (pip install numba); backend='torch' works without it")
    return _CompositeNumba.apply(means2d, conics, opacities, features, bins, num_cameras, width, height)

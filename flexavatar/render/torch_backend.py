"""Pure-PyTorch tile compositing: any device, differentiable by autograd, no compiled code.

The "torch" backend of :func:`~.rasterizer.rasterize` (all vectorised, the only Python loop is
over a few chunks of tiles):

1. :func:`~flexavatar.render.projection.project_gaussians` (EWA, gsplat math);
2. :func:`~flexavatar.render.projection.bin_gaussians_to_tiles`: (tile, Gaussian) pairs sorted
   by tile then depth;
3. tiles are ordered by their pair count and cut into chunks whose padded size
   ``tiles x max_count x pixels_per_tile`` stays under an element budget (sorting by count is
   the bucketing: a chunk pads only to its own maximum);
4. per chunk: alpha ``[tiles, K, pixels]``, the 1/255 skip, transmittance by ``cumprod`` over
   K, the early-stop mask (a Gaussian counts only while the inclusive transmittance stays above
   1e-4, which is gsplat's "stop before the Gaussian that makes T <= 1e-4" because T never
   increases), weights = alpha * exclusive T, and one batched matmul for colour and depth.

The compositing order of multiplications is the same as gsplat's sequential loop, so results
agree with it to float32 rounding.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .projection import (
    ALPHA_THRESHOLD,
    MAX_ALPHA,
    TRANSMITTANCE_STOP,
    TileBins,
)

# Upper bound on elements of one [tiles, K, pixels] tensor; autograd keeps about ten of them
# per chunk, so 2**22 float32 elements is ~170 MB of live tensors per chunk at most.
DEFAULT_CHUNK_ELEMENTS = 1 << 22
# Above this many (pair, pixel) elements in total, chunks are checkpointed when gradients are
# needed: their intermediates are recomputed in the backward instead of kept (~40 B/element),
# which bounds memory (512² with 100k Gaussians) at the cost of a second forward.
CHECKPOINT_ABOVE_ELEMENTS = 1 << 24


def composite_tiles_torch(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    bins: TileBins,
    num_cameras: int,
    width: int,
    height: int,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back alpha compositing of binned screen-space Gaussians.

    means2d [G,2] px, conics [G,3] 1/px², opacities [G], features [G,D] (colour channels and
    depth), indexed by the flat Gaussian ids of ``bins`` (G = C*N).
    Returns accumulated features [C,H,W,D] (sum of w_i f_i, no background) and alpha [C,H,W,1].
    """
    device, dtype = means2d.device, means2d.dtype
    D = features.shape[-1]
    ts = bins.tile_size
    P = ts * ts
    n_tiles = bins.tiles_x * bins.tiles_y
    padded_w, padded_h = bins.tiles_x * ts, bins.tiles_y * ts

    counts = bins.tile_counts
    active = torch.nonzero(counts > 0).flatten()
    out_feat = torch.zeros(num_cameras * padded_h * padded_w, D, device=device, dtype=dtype)
    out_alpha = torch.zeros(num_cameras * padded_h * padded_w, device=device, dtype=dtype)
    if active.numel() == 0:
        return _crop(out_feat, out_alpha, num_cameras, padded_h, padded_w, height, width)

    # Busiest tiles first, so each chunk pads only to a similar count.
    active_counts, order = torch.sort(counts[active], descending=True)
    active = active[order]
    active_counts_list = active_counts.tolist()

    # Pixel offsets inside a tile and the flat output index of every pixel of every tile.
    local = torch.arange(P, device=device)
    local_x = (local % ts).to(dtype)
    local_y = (local // ts).to(dtype)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, features)
    )
    use_checkpoint = needs_grad and int(counts.sum()) * P > CHECKPOINT_ABOVE_ELEMENTS

    start = 0
    n_active = active.numel()
    while start < n_active:
        k_max = active_counts_list[start]
        n_chunk = max(1, min(n_active - start, chunk_elements // max(1, k_max * P)))
        tiles = active[start : start + n_chunk]
        start += n_chunk
        chunk_args = (tiles, k_max, means2d, conics, opacities, features, bins, local_x, local_y)
        if use_checkpoint:
            feat_chunk, alpha_chunk = checkpoint(_composite_chunk, *chunk_args, use_reentrant=False)
        else:
            feat_chunk, alpha_chunk = _composite_chunk(*chunk_args)
        # Scatter the tile pixels into the padded images.
        cam = tiles // n_tiles
        tile_in_cam = tiles % n_tiles
        tile_y0 = (tile_in_cam // bins.tiles_x) * ts
        tile_x0 = (tile_in_cam % bins.tiles_x) * ts
        pix = (cam[:, None] * padded_h + tile_y0[:, None] + local[None] // ts) * padded_w + (
            tile_x0[:, None] + local[None] % ts
        )  # [T,P]
        out_feat = out_feat.index_copy(0, pix.flatten(), feat_chunk.reshape(-1, D))
        out_alpha = out_alpha.index_copy(0, pix.flatten(), alpha_chunk.flatten())
    return _crop(out_feat, out_alpha, num_cameras, padded_h, padded_w, height, width)


def _crop(out_feat, out_alpha, C, padded_h, padded_w, height, width):
    feat = out_feat.reshape(C, padded_h, padded_w, -1)[:, :height, :width]
    alpha = out_alpha.reshape(C, padded_h, padded_w, 1)[:, :height, :width]
    return feat, alpha


def _composite_chunk(tiles, k_max, means2d, conics, opacities, features, bins, local_x, local_y):
    """Composite ``tiles`` [T] (flat ids) with up to ``k_max`` Gaussians each: ([T,P,D], [T,P])."""
    device, dtype = means2d.device, means2d.dtype
    ts = bins.tile_size
    n_tiles = bins.tiles_x * bins.tiles_y
    k_range = torch.arange(k_max, device=device)
    begin = bins.tile_offsets[tiles]
    count = bins.tile_offsets[tiles + 1] - begin
    in_list = k_range[None] < count[:, None]  # [T,K]
    slot = torch.where(in_list, begin[:, None] + k_range[None], begin[:, None])
    gid = bins.pair_gaussian[slot]  # [T,K]

    tile_in_cam = tiles % n_tiles
    px = ((tile_in_cam % bins.tiles_x) * ts).to(dtype)[:, None] + local_x[None] + 0.5  # [T,P]
    py = ((tile_in_cam // bins.tiles_x) * ts).to(dtype)[:, None] + local_y[None] + 0.5

    mean = means2d[gid]  # [T,K,2]
    conic = conics[gid]  # [T,K,3]
    dx = mean[..., 0, None] - px[:, None, :]  # [T,K,P]
    dy = mean[..., 1, None] - py[:, None, :]
    sigma = (
        0.5 * (conic[..., 0, None] * dx * dx + conic[..., 2, None] * dy * dy) + conic[..., 1, None] * dx * dy
    )
    opac = torch.where(in_list, opacities[gid], torch.zeros((), device=device, dtype=dtype))
    alpha = torch.clamp_max(opac[..., None] * torch.exp(-sigma), MAX_ALPHA)

    with torch.no_grad():
        accepted = (alpha >= ALPHA_THRESHOLD) & (sigma >= 0)
        # Inclusive transmittance over accepted Gaussians, in gsplat's multiplication order.
        t_incl = torch.cumprod(torch.where(accepted, 1.0 - alpha, torch.ones_like(alpha)), dim=1)
        used = accepted & (t_incl > TRANSMITTANCE_STOP)
    alpha_used = torch.where(used, alpha, torch.zeros((), device=device, dtype=dtype))
    one_minus = 1.0 - alpha_used
    t_incl_used = torch.cumprod(one_minus, dim=1)  # [T,K,P]
    t_excl = torch.cat([torch.ones_like(t_incl_used[:, :1]), t_incl_used[:, :-1]], dim=1)
    weights = alpha_used * t_excl  # [T,K,P]
    feat = torch.bmm(weights.transpose(1, 2), features[gid])  # [T,P,D]
    alpha_out = 1.0 - t_incl_used[:, -1]  # [T,P]
    return feat, alpha_out

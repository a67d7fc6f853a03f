"""Compiled CPU compositing kernels (numba): forward and hand-written backward.

Results are those of gsplat's ``rasterize_to_pixels_3dgs_fwd/bwd`` kernels: each pixel walks
its tile's front-to-back list, skips Gaussians with alpha < 1/255 and stops before the one that
would bring its transmittance to <= 1e-4. The loop order differs for speed: per tile, the
*Gaussians* are the outer loop and each one visits only the pixels of the tile where it can
reach alpha >= 1/255 (per row, the span of the ellipse ``sigma <= ln(255 * opacity)`` plus a
safety margin; inside it the exact test runs). A pixel still sees the Gaussians in list order,
so its arithmetic, and result, is the same as the per-pixel loop. A tile stops early once all
its pixels are saturated.

Backward: the same spans, walked back to front from each pixel's last used Gaussian (gsplat's
backward). Each (tile, Gaussian) pair owns one gradient row, so tiles never write to the same
memory; the reduction to Gaussians is a ``torch.index_add_`` by the caller.

Arithmetic stays in the input dtype (float32 or float64): every constant comes from the
``consts`` array of that dtype, because a Python float literal would promote to float64.
The kernels are serial and release the GIL; the caller runs tile subsets on threads.
Importing this module needs numba; it compiles on first use (a few seconds per dtype, cached
on disk afterwards).
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Indices into the ``consts`` array (built by :func:`make_consts`).
_ALPHA_THRESHOLD, _MAX_ALPHA, _T_STOP, _ONE, _ZERO, _HALF, _SIGMA_MARGIN, _TWO = range(8)


def make_consts(dtype, alpha_threshold: float, max_alpha: float, t_stop: float) -> np.ndarray:
    """The kernels' constants in the compute dtype.

    The sigma margin (0.01, i.e. 1% in alpha) widens the visited spans far beyond rounding
    error, so no pixel that passes the exact 1/255 test is ever left out.
    """
    return np.array([alpha_threshold, max_alpha, t_stop, 1.0, 0.0, 0.5, 0.01, 2.0], dtype=dtype)


def make_pixel_centres(dtype, width: int, height: int) -> np.ndarray:
    """[max(W,H)] pixel-centre coordinates i + 0.5 in the compute dtype."""
    return (np.arange(max(width, height), dtype=np.float64) + 0.5).astype(dtype)


@numba.njit(inline="always")
def _clamp_index(value, low, high):
    """int(value) clamped to [low, high]; value may be any float (also huge)."""
    if not (value > low):  # also catches NaN
        return low
    if value > high:
        return high
    return int(value)


@numba.njit(inline="always")
def _row_range(my, a, b, c, cut, y_base, rows, consts):
    """Rows [first, last] (tile-local, inclusive) whose centres can have sigma <= cut."""
    det = a * c - b * b
    if not (det > consts[_ZERO]):
        return 0, rows - 1
    half_height = math.sqrt(consts[_TWO] * cut * a / det)  # sqrt(2 cut Σ_yy), Σ = conic^-1
    first = _clamp_index(np.floor(my - half_height - consts[_HALF]) - y_base, 0, rows - 1)
    last = _clamp_index(np.ceil(my - consts[_HALF] + half_height) - y_base, -1, rows - 1)
    return first, last


@numba.njit(inline="always")
def _column_span(mx, dy, a, b, c, cut, x_base, cols, consts):
    """Columns [first, last] (tile-local, inclusive) of the row at offset dy = my - py where
    sigma(dx) = a/2 dx² + b dx dy + c/2 dy² <= cut; first > last when the row misses."""
    disc = (b * dy) * (b * dy) - a * (c * dy * dy - consts[_TWO] * cut)
    if not (disc >= consts[_ZERO]):
        return 0, -1
    root = math.sqrt(disc)
    dx_low = (-b * dy - root) / a
    dx_high = (-b * dy + root) / a
    # dx = mx - px and px = x_base + col + 0.5
    first = _clamp_index(np.floor(mx - dx_high - consts[_HALF]) - x_base, 0, cols - 1)
    last = _clamp_index(np.ceil(mx - dx_low - consts[_HALF]) - x_base, -1, cols - 1)
    return first, last


@numba.njit(cache=True, nogil=True)
def composite_forward(
    means2d,  # [G,2]
    conics,  # [G,3]
    opacities,  # [G]
    features,  # [G,4]: r, g, b, camera-space depth
    pair_gaussian,  # [M] int64
    tile_offsets,  # [C*tiles+1] int64
    tile_ids,  # [T] int64: the flat tiles this call renders
    tiles_x,
    tile_size,
    width,
    height,
    consts,
    pixel_centres,  # [max(W,H)] i + 0.5 in the compute dtype
    out_features,  # [C,H,W,4] zero-initialised
    out_transmittance,  # [C,H,W] one-initialised
    out_last,  # [C,H,W] int32 zero-initialised: list entries up to the last one used
):
    tiles_y = (height + tile_size - 1) // tile_size
    n_tiles = tiles_x * tiles_y
    P = tile_size * tile_size
    dtype = means2d.dtype
    alpha_threshold = consts[_ALPHA_THRESHOLD]
    max_alpha = consts[_MAX_ALPHA]
    t_stop = consts[_T_STOP]
    one = consts[_ONE]
    zero = consts[_ZERO]
    half = consts[_HALF]
    sigma_margin = consts[_SIGMA_MARGIN]
    T = np.empty(P, dtype)
    acc = np.empty((4, P), dtype)  # r, g, b, depth per pixel (structure of arrays)
    last = np.empty(P, np.int32)
    done = np.empty(P, np.bool_)
    for i in range(tile_ids.shape[0]):
        t = tile_ids[i]
        start = tile_offsets[t]
        count = tile_offsets[t + 1] - start
        cam = t // n_tiles
        y_base = ((t % n_tiles) // tiles_x) * tile_size
        x_base = ((t % n_tiles) % tiles_x) * tile_size
        rows = min(tile_size, height - y_base)
        cols = min(tile_size, width - x_base)
        T[:] = one
        acc[:] = zero
        last[:] = 0
        done[:] = False
        n_done = 0
        for k in range(count):
            g = pair_gaussian[start + k]
            mx = means2d[g, 0]
            my = means2d[g, 1]
            a = conics[g, 0]
            b = conics[g, 1]
            c = conics[g, 2]
            o = opacities[g]
            if o < alpha_threshold:
                continue
            f0 = features[g, 0]
            f1 = features[g, 1]
            f2 = features[g, 2]
            f3 = features[g, 3]
            # Beyond this sigma, o * exp(-sigma) < 1/255 with a wide margin.
            cut = math.log(o / alpha_threshold) + sigma_margin
            row_first, row_last = _row_range(my, a, b, c, cut, y_base, rows, consts)
            for ly in range(row_first, row_last + 1):
                py = pixel_centres[y_base + ly]
                dy = my - py
                col_first, col_last = _column_span(mx, dy, a, b, c, cut, x_base, cols, consts)
                for lx in range(col_first, col_last + 1):
                    p = ly * tile_size + lx
                    if done[p]:
                        continue
                    dx = mx - pixel_centres[x_base + lx]
                    sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if sigma > cut:  # rounded span ends: certainly below 1/255, skip the exp
                        continue
                    alpha = min(max_alpha, o * math.exp(-sigma))
                    if sigma < zero or alpha < alpha_threshold:
                        continue
                    next_T = T[p] * (one - alpha)
                    if next_T <= t_stop:  # stop before this Gaussian (gsplat)
                        done[p] = True
                        n_done += 1
                        continue
                    w = alpha * T[p]
                    acc[0, p] += f0 * w
                    acc[1, p] += f1 * w
                    acc[2, p] += f2 * w
                    acc[3, p] += f3 * w
                    last[p] = k + 1
                    T[p] = next_T
            if n_done == rows * cols:
                break
        for ly in range(rows):
            for lx in range(cols):
                p = ly * tile_size + lx
                y = y_base + ly
                x = x_base + lx
                for d in range(4):
                    out_features[cam, y, x, d] = acc[d, p]
                out_transmittance[cam, y, x] = T[p]
                out_last[cam, y, x] = last[p]


@numba.njit(cache=True, nogil=True)
def composite_backward(
    means2d,  # [G,2]
    conics,  # [G,3]
    opacities,  # [G]
    features,  # [G,4]: r, g, b, camera-space depth
    pair_gaussian,  # [M]
    tile_offsets,  # [C*tiles+1]
    tile_ids,  # [T] int64
    tiles_x,
    tile_size,
    width,
    height,
    consts,
    pixel_centres,
    transmittance,  # [C,H,W] final T from the forward
    last_used,  # [C,H,W] from the forward
    v_features_img,  # [C,H,W,4] dL/d(accumulated features)
    v_alpha_img,  # [C,H,W] dL/d(alpha)
    v_pairs,  # [M,10] out: d mean (2), d conic (3), d opacity, d features (4) per pair
):
    tiles_y = (height + tile_size - 1) // tile_size
    n_tiles = tiles_x * tiles_y
    P = tile_size * tile_size
    dtype = means2d.dtype
    alpha_threshold = consts[_ALPHA_THRESHOLD]
    max_alpha = consts[_MAX_ALPHA]
    one = consts[_ONE]
    zero = consts[_ZERO]
    half = consts[_HALF]
    sigma_margin = consts[_SIGMA_MARGIN]
    T = np.empty(P, dtype)
    T_final = np.empty(P, dtype)
    behind = np.empty((4, P), dtype)  # sum of w_i f_i of the Gaussians behind, per pixel
    v_out = np.empty((4, P), dtype)
    v_alpha_out = np.empty(P, dtype)
    last = np.zeros(P, np.int32)
    grad = np.empty(10, dtype)
    for i in range(tile_ids.shape[0]):
        t = tile_ids[i]
        start = tile_offsets[t]
        cam = t // n_tiles
        y_base = ((t % n_tiles) // tiles_x) * tile_size
        x_base = ((t % n_tiles) % tiles_x) * tile_size
        rows = min(tile_size, height - y_base)
        cols = min(tile_size, width - x_base)
        last[:] = 0
        max_last = 0
        for ly in range(rows):
            for lx in range(cols):
                p = ly * tile_size + lx
                y = y_base + ly
                x = x_base + lx
                T_final[p] = transmittance[cam, y, x]
                T[p] = T_final[p]
                last[p] = last_used[cam, y, x]
                max_last = max(max_last, last[p])
                v_alpha_out[p] = v_alpha_img[cam, y, x]
                for d in range(4):
                    behind[d, p] = zero
                    v_out[d, p] = v_features_img[cam, y, x, d]
        for k in range(max_last - 1, -1, -1):
            g = pair_gaussian[start + k]
            mx = means2d[g, 0]
            my = means2d[g, 1]
            a = conics[g, 0]
            b = conics[g, 1]
            c = conics[g, 2]
            o = opacities[g]
            if o < alpha_threshold:
                continue
            f0 = features[g, 0]
            f1 = features[g, 1]
            f2 = features[g, 2]
            f3 = features[g, 3]
            cut = math.log(o / alpha_threshold) + sigma_margin
            grad[:] = zero
            row_first, row_last = _row_range(my, a, b, c, cut, y_base, rows, consts)
            for ly in range(row_first, row_last + 1):
                py = pixel_centres[y_base + ly]
                dy = my - py
                col_first, col_last = _column_span(mx, dy, a, b, c, cut, x_base, cols, consts)
                for lx in range(col_first, col_last + 1):
                    p = ly * tile_size + lx
                    if k >= last[p]:
                        continue
                    dx = mx - pixel_centres[x_base + lx]
                    sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if sigma > cut:
                        continue
                    vis = math.exp(-sigma)
                    alpha = min(max_alpha, o * vis)
                    if sigma < zero or alpha < alpha_threshold:
                        continue
                    ra = one / (one - alpha)
                    T[p] = T[p] * ra  # transmittance in front of Gaussian k
                    fac = alpha * T[p]
                    Tp = T[p]
                    v0 = v_out[0, p]
                    v1 = v_out[1, p]
                    v2 = v_out[2, p]
                    v3 = v_out[3, p]
                    grad[6] += fac * v0
                    grad[7] += fac * v1
                    grad[8] += fac * v2
                    grad[9] += fac * v3
                    v_alpha = (
                        (f0 * Tp - behind[0, p] * ra) * v0
                        + (f1 * Tp - behind[1, p] * ra) * v1
                        + (f2 * Tp - behind[2, p] * ra) * v2
                        + (f3 * Tp - behind[3, p] * ra) * v3
                    )
                    behind[0, p] += f0 * fac
                    behind[1, p] += f1 * fac
                    behind[2, p] += f2 * fac
                    behind[3, p] += f3 * fac
                    # alpha_out = 1 - T_final and dT_final/d alpha_k = -T_final / (1 - alpha_k)
                    v_alpha += T_final[p] * ra * v_alpha_out[p]
                    if o * vis <= max_alpha:  # the 0.999 clamp passes no gradient
                        v_sigma = -o * vis * v_alpha
                        grad[0] += v_sigma * (a * dx + b * dy)
                        grad[1] += v_sigma * (b * dx + c * dy)
                        grad[2] += half * v_sigma * dx * dx
                        grad[3] += v_sigma * dx * dy
                        grad[4] += half * v_sigma * dy * dy
                        grad[5] += vis * v_alpha
            for j in range(10):
                v_pairs[start + k, j] = grad[j]


@numba.njit(cache=True, nogil=True)
def bin_pairs(
    order,  # [K] int64 flat Gaussian ids (camera * N + index), each camera front to back
    x0,  # [C*N] int64 tile range per flat Gaussian: [x0, x1) x [y0, y1)
    x1,
    y0,
    y1,
    n_per_camera,
    tiles_x,
    n_tiles,  # tiles per camera
    tile_offsets,  # out [C*n_tiles + 1] int64
):
    """Counting sort of (tile, Gaussian) pairs: two passes in depth order, no comparison sort.

    Returns pair_gaussian [M]; each tile's slice lists its Gaussians front to back.
    """
    tile_offsets[:] = 0
    for i in range(order.shape[0]):
        g = order[i]
        base = (g // n_per_camera) * n_tiles + 1
        for ty in range(y0[g], y1[g]):
            for tx in range(x0[g], x1[g]):
                tile_offsets[base + ty * tiles_x + tx] += 1
    for t in range(1, tile_offsets.shape[0]):
        tile_offsets[t] += tile_offsets[t - 1]
    cursor = tile_offsets[:-1].copy()
    pair_gaussian = np.empty(tile_offsets[-1], np.int64)
    for i in range(order.shape[0]):
        g = order[i]
        base = (g // n_per_camera) * n_tiles
        for ty in range(y0[g], y1[g]):
            for tx in range(x0[g], x1[g]):
                t = base + ty * tiles_x + tx
                pair_gaussian[cursor[t]] = g
                cursor[t] += 1
    return pair_gaussian

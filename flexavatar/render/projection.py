"""Projection of 3D Gaussians to screen space and tile binning, shared by the CPU backends.

The math follows gsplat 1.5.3's default CUDA path (``projection_ewa_3dgs_fused_fwd_kernel``
and ``intersect_tile``) so the pure-PyTorch renderer and gsplat agree:

- covariance ``R S S^T R^T`` from normalised wxyz quaternions and linear scales;
- EWA: ``J W Σ W^T J^T`` with the perspective Jacobian at the mean, where x/z and y/z are
  clamped to 1.3x the half field of view (gsplat's ``lim_x``/``lim_y``) *for the Jacobian only*;
- ``eps2d`` (0.3 px²) is added to the diagonal of the 2D covariance (no antialiasing
  compensation); the conic is its inverse;
- Gaussians with ``z < near_plane`` or ``z > far_plane``, a non-positive 2D determinant, or
  opacity below 1/255 are culled (radius 0);
- the screen extent per axis is ``ceil(e * sqrt(Σ2d_axis))`` with
  ``e = min(3.33, sqrt(2 ln(255 * opacity)))``: the box that contains every pixel centre where
  the Gaussian's alpha reaches the 1/255 threshold, so binning by it is exact;
- Gaussians whose box lies fully outside the image are culled.

Everything here is vectorised over cameras and Gaussians (no Python loop over either) and is
differentiable by autograd w.r.t. means, quats and scales; radii and the tile binning carry
no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ALPHA_THRESHOLD = 1.0 / 255.0  # contributions below this are skipped (gsplat ALPHA_THRESHOLD)
MAX_ALPHA = 0.999  # per-Gaussian alpha is clamped to this
TRANSMITTANCE_STOP = 1e-4  # a pixel stops before the Gaussian that would bring T to <= this
MAX_EXTENT_SIGMA = 3.33  # gsplat's cap on the extent in standard deviations
SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic


def sh_dc_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    """Colours [...,3] from SH coefficients [...,K,3].

    Only degree 0 (the DC term) is used: rgb = max(SH_C0 * dc + 0.5, 0), exactly what gsplat
    computes for ``sh_degree=0``. View-dependent terms are ignored.
    """
    return torch.clamp_min(SH_C0 * sh[..., 0, :] + 0.5, 0.0)


def quat_scale_to_matrix(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """M = R(q) diag(s), [...,3,3], from quats [...,4] wxyz (any norm) and scales [...,3] (m); Σ = M M^T."""
    w, x, y, z = F.normalize(quats, p=2, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))  # fmt: skip
    return R * scales[..., None, :]


@dataclass
class Projected:
    """Screen-space Gaussians for C cameras (N Gaussians each).

    means2d: [C,N,2] pixel coordinates of the projected means (pixel centres at +0.5).
    conics: [C,N,3] upper triangle (a, b, c) of the inverse 2D covariance, 1/px².
    depths: [C,N] camera-space z of the means, metres.
    radii: [C,N,2] int32 screen extent in pixels per axis; 0 where culled.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> Projected:
    """EWA-project Gaussians into C pinhole cameras (gsplat's fused projection, classic mode).

    One set seen by every camera: means [N,3] m, quats [N,4] wxyz, scales [N,3] m, opacities
    [N] in [0,1] (only used for the extent and the culling). Or one set per camera (camera c
    sees set c only): means [C,N,3], quats [C,N,4], scales [C,N,3], opacities [C,N].
    viewmats [C,4,4] world-to-camera, Ks [C,3,3] px.
    """
    # Σ = M M^T with M = R(q) S, so the camera covariance is (Rc M)(Rc M)^T and the 2D one is
    # (J Rc M)(J Rc M)^T: one (batched) GEMM plus elementwise work instead of many tiny matmuls.
    M = quat_scale_to_matrix(quats, scales)  # [(C,)N,3,3]
    N = means.shape[-2]
    C = viewmats.shape[0]
    R = viewmats[:, :3, :3]  # [C,3,3]
    t = viewmats[:, :3, 3]  # [C,3]
    means_c = torch.matmul(means, R.transpose(1, 2)) + t[:, None, :]  # [C,N,3]
    M_rows = M.movedim(-2, -3).reshape(*M.shape[:-3], 3, N * 3)  # [(C,)k,N*j]
    W = torch.matmul(R, M_rows).reshape(C, 3, N, 3)  # [C,i,N,j]

    x, y, z = means_c.unbind(-1)  # [C,N]
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C,1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    # Culled Gaussians (z <= 0 included) still flow through the math; keep it finite for them.
    in_depth = (z >= near_plane) & (z <= far_plane)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))
    rz = 1.0 / z_safe
    # Clamping the direction (for the Jacobian only) keeps far off-screen Gaussians from
    # getting huge, needle-like footprints; the mean itself is not clamped.
    tx = z_safe * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z_safe * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    # Rows of J Rc M, J = [[fx/z, 0, -fx tx/z²], [0, fy/z, -fy ty/z²]]: [C,N,3] each.
    j_row0 = (fx * rz)[..., None] * W[:, 0] - (fx * tx * rz * rz)[..., None] * W[:, 2]
    j_row1 = (fy * rz)[..., None] * W[:, 1] - (fy * ty * rz * rz)[..., None] * W[:, 2]
    cov00 = (j_row0 * j_row0).sum(-1)
    cov01 = (j_row0 * j_row1).sum(-1)
    cov11 = (j_row1 * j_row1).sum(-1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [C,N,2]

    c00 = cov00 + eps2d
    c11 = cov11 + eps2d
    c01 = cov01
    det = c00 * c11 - c01 * c01
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)  # [C,N,3]

    with torch.no_grad():
        opac = opacities.detach().to(z.dtype).expand_as(z)
        visible_opac = opac >= ALPHA_THRESHOLD
        extent = torch.clamp_max(
            torch.sqrt(2.0 * torch.log(torch.clamp_min(opac, ALPHA_THRESHOLD) / ALPHA_THRESHOLD)),
            MAX_EXTENT_SIGMA,
        )
        radius_x = torch.ceil(extent * torch.sqrt(c00.detach().clamp_min(0)))
        radius_y = torch.ceil(extent * torch.sqrt(c11.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        on_screen = (
            (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
        )
        keep = in_depth & (det.detach() > 0) & visible_opac & ((radius_x > 0) | (radius_y > 0)) & on_screen
        radii = torch.stack([radius_x, radius_y], dim=-1)
        radii = torch.where(keep[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii)


@dataclass
class TileBins:
    """Gaussian-tile intersections, sorted by (camera, tile, depth) like gsplat's isect lists.

    pair_gaussian: [M] int64 flat Gaussian index (camera * N + gaussian) of each intersection.
    tile_offsets: [C*tiles_y*tiles_x + 1] int64; the pairs of flat tile t are
        ``pair_gaussian[tile_offsets[t]:tile_offsets[t+1]]``, front to back.
    """

    pair_gaussian: torch.Tensor
    tile_offsets: torch.Tensor
    tile_size: int
    tiles_x: int
    tiles_y: int

    @property
    def tile_counts(self) -> torch.Tensor:
        return self.tile_offsets[1:] - self.tile_offsets[:-1]


@torch.no_grad()
def tile_ranges(projected: Projected, width: int, height: int, tile_size: int):
    """Per Gaussian, the tile range its screen box covers, and the depth order per camera.

    Returns (x0, x1, y0, y1) int64 [C,N] (tile_min inclusive, tile_max exclusive, clamped to the
    grid, as gsplat's ``intersect_tile``), counts [C,N] (0 for culled Gaussians), and order
    [C,N], the Gaussians of each camera front to back (stable: ties by index, as gsplat's radix
    sort; culled ones last).
    """
    means2d, radii, depths = projected.means2d.detach(), projected.radii, projected.depths.detach()
    tiles_x = math.ceil(width / tile_size)
    tiles_y = math.ceil(height / tile_size)
    valid = (radii > 0).all(-1)
    centre = means2d / tile_size
    extent = radii.to(means2d.dtype) / tile_size
    lo = torch.floor(centre - extent)
    hi = torch.ceil(centre + extent)
    x0 = lo[..., 0].clamp(0, tiles_x).long()
    x1 = hi[..., 0].clamp(0, tiles_x).long()
    y0 = lo[..., 1].clamp(0, tiles_y).long()
    y1 = hi[..., 1].clamp(0, tiles_y).long()
    counts = torch.where(valid, (x1 - x0) * (y1 - y0), torch.zeros_like(x0))  # [C,N]
    order = torch.sort(torch.where(valid, depths, torch.full_like(depths, math.inf)), dim=1, stable=True)[1]
    return (x0, x1, y0, y1), counts, order


@torch.no_grad()
def bin_gaussians_to_tiles(projected: Projected, width: int, height: int, tile_size: int) -> TileBins:
    """Tile ranges of every visible Gaussian, expanded to (tile, Gaussian) pairs and sorted.

    Vectorised: ranges per Gaussian, ``repeat_interleave`` to pairs, then one stable sort by
    flat tile id of pairs that are already in depth order, so each tile's list is front to back.
    """
    C, N = projected.depths.shape
    device = projected.depths.device
    tiles_x = math.ceil(width / tile_size)
    tiles_y = math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    (x0, x1, y0, y1), counts, order = tile_ranges(projected, width, height, tile_size)
    span_x = x1 - x0

    counts_sorted = counts.gather(1, order).flatten()  # [C*N], culled ones are 0 and vanish
    cam_of = torch.arange(C, device=device)[:, None].expand(C, N).flatten()
    flat_sorted = cam_of * N + order.flatten()
    n_pairs = int(counts_sorted.sum())
    pair_gaussian = torch.repeat_interleave(flat_sorted, counts_sorted, output_size=n_pairs)
    pair_start = torch.cumsum(counts_sorted, 0) - counts_sorted
    local = torch.arange(n_pairs, device=device) - torch.repeat_interleave(
        pair_start, counts_sorted, output_size=n_pairs
    )
    pair_span_x = span_x.flatten()[pair_gaussian]
    tile_x = x0.flatten()[pair_gaussian] + local % pair_span_x.clamp_min(1)
    tile_y = y0.flatten()[pair_gaussian] + local // pair_span_x.clamp_min(1)
    pair_tile = cam_of[pair_gaussian] * n_tiles + tile_y * tiles_x + tile_x

    pair_tile, perm = torch.sort(pair_tile, stable=True)
    pair_gaussian = pair_gaussian[perm]
    tile_counts = torch.bincount(pair_tile, minlength=C * n_tiles)
    tile_offsets = torch.zeros(C * n_tiles + 1, dtype=torch.int64, device=device)
    tile_offsets[1:] = torch.cumsum(tile_counts, 0)
    return TileBins(pair_gaussian, tile_offsets, tile_size, tiles_x, tiles_y)

"""``rasterize``: one entry point for the Gaussian splatting renderer, whatever the device.

Two layouts of Gaussians, both rendered by one call (no Python loop over cameras or frames):

- one set seen by every camera (a turntable, a preview): means [N,3] ... with C cameras;
- one set per camera (a reenactment: frame c's expression seen by camera c): means [C,N,3] ...

Backends
--------
- ``"gsplat"``: ``gsplat.rasterization`` (CUDA tensors only); per-camera sets go in as gsplat's
  batch dimension (means [C,N,3] with viewmats [C,1,4,4]).
- ``"torch"`` and ``"numba"``: the CPU tile rasterizer, one sequence for both, composed here:
  project (:func:`.projection.project_gaussians`, vectorised PyTorch, autograd) -> bin into
  tiles -> composite. ``"torch"`` bins and composites in pure PyTorch (:mod:`.torch_backend`,
  any device, autograd); ``"numba"`` with compiled CPU kernels and a hand-written backward
  (:mod:`.numba_backend`); CPU tensors, needs numba. ~10x faster than
  "torch" on CPU (10k Gaussians at 256² on 2 cores: ~35 ms forward, ~85 ms forward+backward),
  identical results to float rounding.
- ``"auto"``: gsplat on CUDA tensors; on other devices numba for CPU tensors when numba is
  installed, else torch. If gsplat fails (typically its CUDA extension cannot be JIT-compiled
  because no CUDA toolkit is installed) a warning is issued once per process and the torch
  backend renders on the same device from then on.

Conventions (shared by every backend, see DESIGN.md): OpenCV cameras (viewmat world-to-camera,
camera looks down +z, y down), K in pixels, pixel centres at (x + 0.5, y + 0.5). The math is
gsplat 1.5.3's classic mode, eps2d = 0.3, no antialiasing compensation. The CPU backends match
gsplat's CUDA output to ~1e-6 except at rare pixels (<0.1% at 40k Gaussians) where two
Gaussians' depths tie within float rounding (their order can swap) or an alpha sits exactly at
the 1/255 cut (gsplat uses the fast ``__expf``).

Depth is the *accumulated* depth ``sum_i w_i z_i`` (gsplat's "D" mode), NOT divided by alpha:
divide by ``alpha.clamp_min(eps)`` for the expected depth of covered pixels. The background is
not applied to depth.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import gsplat_backend
from .numba_backend import bin_gaussians_to_tiles_numba, composite_tiles_numba, numba_available
from .projection import Projected, TileBins, bin_gaussians_to_tiles, project_gaussians, sh_dc_to_rgb
from .torch_backend import composite_tiles_torch

BACKENDS = ("auto", "torch", "numba", "gsplat")


@dataclass(frozen=True)
class TileBackend:
    """The two backend-specific steps of the CPU tile rasterizer (projection is shared).

    bin_to_tiles(projected, width, height, tile_size) -> TileBins;
    composite(means2d [G,2], conics [G,3], opacities [G], features [G,4], bins, C, width, height)
        -> (features [C,H,W,4], alpha [C,H,W,1]).
    float_dtypes: the dtypes ``composite`` computes in; other inputs are rendered in float32.
    """

    bin_to_tiles: Callable[[Projected, int, int, int], TileBins]
    composite: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    tile_size: int
    float_dtypes: tuple[torch.dtype, ...] | None = None


# Tile sizes: the numba kernel visits only the pixels inside each ellipse, so big tiles (fewer
# pairs) win; the torch backend evaluates every pixel of a tile, so small tiles waste less.
TILE_BACKENDS = {
    "numba": TileBackend(
        bin_gaussians_to_tiles_numba, composite_tiles_numba, 16, (torch.float32, torch.float64)
    ),
    "torch": TileBackend(bin_gaussians_to_tiles, composite_tiles_torch, 8),
}

# Set once gsplat has failed in auto mode, so we warn once and stop retrying the slow JIT build.
_gsplat_unavailable_reason: str | None = None


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | None = None,
    backend: str = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render Gaussians into C pinhole cameras, in one call whatever C.

    Args:
        means: [N,3] centres, world space, metres: one set seen by every camera; or [C,N,3]:
            set c seen by camera c only (one Gaussian set per frame). The other Gaussian
            tensors follow the same layout (a leading C or not).
        quats: [(C,)N,4] rotations, wxyz, any non-zero norm (normalised here).
        scales: [(C,)N,3] standard deviations along the local axes, metres (linear, not log).
        opacities: [(C,)N] in [0,1].
        colors: [(C,)N,3] RGB, or [(C,)N,K,3] SH coefficients of which only degree 0 (DC) is
            used: rgb = max(0.28209479 * dc + 0.5, 0).
        viewmats: [C,4,4] world-to-camera (OpenCV axes).
        Ks: [C,3,3] intrinsics, pixels.
        width, height: image size, pixels.
        background: None (black), [3] or [C,3]; composited as rgb + (1 - alpha) * background.
        backend: "auto", "torch", "numba" or "gsplat" (see module docstring).
        near_plane, far_plane: Gaussians whose camera-space z is < near_plane or > far_plane
            are culled (metres).

    Returns:
        rgb [C,H,W,3], alpha [C,H,W,1] in [0,1], depth [C,H,W,1] = sum_i w_i z_i (metres,
        accumulated, not normalised by alpha).
    """
    global _gsplat_unavailable_reason
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks)
    width, height = int(width), int(height)
    on_cuda = _is_cuda(means)
    if backend == "gsplat" and not on_cuda:
        raise ValueError(
            "backend='gsplat' needs CUDA tensors (gsplat has no CPU kernels); "
            f"use backend='torch' or 'auto' for tensors on {means.device}"
        )
    chosen = backend
    if backend == "auto":
        if on_cuda:
            chosen = "gsplat" if _gsplat_unavailable_reason is None else "torch"
        else:
            chosen = "numba" if means.device.type == "cpu" and numba_available() else "torch"

    rgb = None
    if chosen == "gsplat":
        try:
            rgb, alpha, depth = gsplat_backend.rasterize_gsplat(
                means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane
            )
        except Exception as error:  # noqa: BLE001 - in auto mode any build/load failure means "no gsplat"
            if backend == "gsplat":  # asked for by name: no silent fallback
                raise
            _gsplat_unavailable_reason = f"{type(error).__name__}: {error}"
            warnings.warn(
                "gsplat could not run on this machine (its CUDA kernels failed to build or load: "
                f"{_gsplat_unavailable_reason}); falling back to the pure-PyTorch renderer on "
                f"{means.device} for the rest of this process. It is slower but gives the same images.",
                RuntimeWarning,
                stacklevel=2,
            )
            chosen = "torch"
    if rgb is None:  # the CPU tile rasterizer: project -> bin -> composite
        tiles = TILE_BACKENDS[chosen]
        if tiles.float_dtypes is not None and means.dtype not in tiles.float_dtypes:
            means, quats, scales, opacities, colors, viewmats, Ks = (
                t.float() for t in (means, quats, scales, opacities, colors, viewmats, Ks)
            )
        projected = project_gaussians(
            means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane
        )
        bins = tiles.bin_to_tiles(projected, width, height, tiles.tile_size)
        C, N = projected.depths.shape
        colors = sh_dc_to_rgb(colors) if colors.dim() == means.dim() + 1 else colors
        features = torch.cat([colors.expand(C, N, 3), projected.depths[..., None]], dim=-1)
        feat, alpha = tiles.composite(
            projected.means2d.reshape(C * N, 2),
            projected.conics.reshape(C * N, 3),
            opacities.expand(C, N).reshape(C * N),
            features.reshape(C * N, 4),
            bins,
            C,
            width,
            height,
        )
        rgb, depth = feat[..., :3], feat[..., 3:]

    if background is not None:
        background = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
        bg = background.reshape(-1, 3) if background.dim() == 1 else background
        rgb = rgb + (1.0 - alpha) * bg[:, None, None, :]
    return rgb, alpha, depth


def _is_cuda(tensor: torch.Tensor) -> bool:
    """Whether ``auto`` should try gsplat for this tensor (a seam for tests on CPU machines)."""
    return tensor.is_cuda


def _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks) -> None:
    """Raise a ValueError naming every tensor whose shape fits neither layout of :func:`rasterize`."""
    C = viewmats.shape[0] if viewmats.dim() == 3 else -1
    per_camera = means.dim() == 3
    lead = (C,) if per_camera else ()
    lead_text = "C," if per_camera else ""
    N = means.shape[-2] if means.dim() >= 2 else -1
    problems = []
    if means.shape != lead + (N, 3):
        problems.append(f"means {tuple(means.shape)} != [N,3] or [C,N,3] with C = {C} cameras")
    if quats.shape != lead + (N, 4):
        problems.append(f"quats {tuple(quats.shape)} != [{lead_text}N,4]")
    if scales.shape != lead + (N, 3):
        problems.append(f"scales {tuple(scales.shape)} != [{lead_text}N,3]")
    if opacities.shape != lead + (N,):
        problems.append(f"opacities {tuple(opacities.shape)} != [{lead_text}N]")
    is_rgb = colors.shape == lead + (N, 3)
    is_sh = (
        colors.dim() == len(lead) + 3
        and colors.shape[: len(lead) + 1] == lead + (N,)
        and colors.shape[-1] == 3
    )
    if not (is_rgb or is_sh):
        problems.append(f"colors {tuple(colors.shape)} != [{lead_text}N,3] or [{lead_text}N,K,3]")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        problems.append(f"viewmats {tuple(viewmats.shape)} != [C,4,4]")
    if Ks.dim() != 3 or Ks.shape[1:] != (3, 3) or Ks.shape[0] != viewmats.shape[0]:
        problems.append(f"Ks {tuple(Ks.shape)} != [C,3,3] with C = {viewmats.shape[0]}")
    if problems:
        raise ValueError("rasterize: bad input shapes: " + "; ".join(problems))

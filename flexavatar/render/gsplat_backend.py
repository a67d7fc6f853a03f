"""gsplat backend: ``gsplat.rasterization`` on CUDA tensors (classic mode, unpacked, RGB+D)."""

from __future__ import annotations

import torch


def rasterize_gsplat(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render with gsplat's CUDA kernels: (rgb [C,H,W,3], alpha [C,H,W,1], depth [C,H,W,1]).

    Layouts as :func:`~.rasterizer.rasterize`: one set [N,...] seen by the C cameras, or one
    set per camera [C,N,...], which goes in as gsplat 1.5's batch dimension (set c with the
    one camera viewmats[c]: [C,1,4,4]). No background here (the caller composites it).
    ``colors`` is RGB or SH of which only degree 0 is used. Depth is "D" mode: sum_i w_i z_i,
    not divided by alpha. Raises whatever gsplat raises when its CUDA extension cannot be
    built or loaded.
    """
    import gsplat  # imported lazily: the CPU path must not need it

    per_camera = means.dim() == 3
    sh_degree = 0 if colors.dim() == means.dim() + 1 else None
    if per_camera:
        viewmats, Ks = viewmats[:, None], Ks[:, None]
    render, alpha, _meta = gsplat.rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=0.3,
        sh_degree=sh_degree,
        packed=False,
        tile_size=16,
        render_mode="RGB+D",
        rasterize_mode="classic",
    )
    if per_camera:  # [C,1,H,W,X] -> [C,H,W,X]
        render, alpha = render[:, 0], alpha[:, 0]
    return render[..., :3], alpha, render[..., 3:4]

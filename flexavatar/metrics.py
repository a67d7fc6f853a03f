"""Image metrics and the photometric loss, on float images in [0,1].

One definition shared by refinement (:mod:`flexavatar.refine`), training
(:mod:`flexavatar.train`) and evaluation (:mod:`flexavatar.eval`): PSNR, SSIM (Gaussian
window), masked L1, and the loss L1 + 0.2·(1 − SSIM) they optimise and report.

Images may be ``[H,W]`` (a mask), ``[H,W,C]`` / ``[B,H,W,C]`` (channels last) or ``[B,C,H,W]``;
a ``mask`` / ``weight`` is a per-pixel weight of the same spatial size (>0 = counts).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Weight of the structural term (1 − SSIM) beside L1 in :func:`photometric_loss`.
SSIM_WEIGHT = 0.2


def _to_bchw(image: torch.Tensor) -> torch.Tensor:
    """[H,W] (a mask), [H,W,C] / [B,H,W,C] (channels last) or [B,C,H,W] -> [B,C,H,W]."""
    if image.ndim == 2:
        return image[None, None]
    if image.ndim == 3:
        image = image[None]
    if image.shape[-1] in (1, 3) and image.shape[1] not in (1, 3):
        image = image.permute(0, 3, 1, 2)
    return image


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-pixel ``values`` [B,1,H,W], weighted by ``weight`` (any layout above) if given."""
    if weight is None:
        return values.mean()
    w = _to_bchw(weight.to(values.dtype))[:, :1].expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(
    prediction: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-pixel SSIM [B,1,H,W] (mean over channels) of [B,C,H,W] images in [0,1]; differentiable."""
    channels = prediction.shape[1]
    kernel = _gaussian_window(window, sigma, channels, prediction.device, prediction.dtype)
    pad = window // 2

    def blur(x):
        return F.conv2d(F.pad(x, (pad,) * 4, mode="replicate"), kernel, groups=channels)

    mu_x, mu_y = blur(prediction), blur(target)
    sigma_x = blur(prediction * prediction) - mu_x**2
    sigma_y = blur(target * target) - mu_y**2
    sigma_xy = blur(prediction * target) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    )
    return value.mean(1, keepdim=True)


def psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB over all pixels, or over ``mask``."""
    pred, tgt = _to_bchw(prediction).float(), _to_bchw(target).float()
    mse = _weighted_mean((pred - tgt).square().mean(1, keepdim=True), mask)
    return 10 * math.log10(1.0 / max(float(mse), 1e-12))


def ssim(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean SSIM (over ``mask`` if given)."""
    return float(_weighted_mean(ssim_map(_to_bchw(prediction).float(), _to_bchw(target).float()), mask))


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean absolute error (over ``mask`` if given)."""
    pred, tgt = _to_bchw(prediction).float(), _to_bchw(target).float()
    return float(_weighted_mean((pred - tgt).abs().mean(1, keepdim=True), mask))


def photometric_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                     ssim_weight: float = SSIM_WEIGHT) -> dict[str, torch.Tensor]:  # fmt: skip
    """Differentiable L1 + ``ssim_weight``·(1 − SSIM), each a ``weight``-weighted mean over pixels.

    prediction/target [B,3,H,W] in [0,1]; weight [B,1,H,W] ≥ 0 (0 = outside the loss region,
    >1 = emphasised). Returns ``l1``, ``ssim`` (the 1 − SSIM term) and ``photo`` (the total),
    scalar tensors.
    """
    pred, tgt = _to_bchw(prediction), _to_bchw(target)
    l1 = _weighted_mean((pred - tgt).abs().mean(1, keepdim=True), weight)
    dssim = _weighted_mean(1 - ssim_map(pred, tgt), weight)
    return {"l1": l1, "ssim": dssim, "photo": l1 + ssim_weight * dssim}

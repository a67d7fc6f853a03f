"""Image metrics on float images in [0,1]: PSNR, SSIM (Gaussian window), masked L1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _to_bchw(image: torch.Tensor) -> torch.Tensor:
    """[H,W] (a mask), [H,W,C] / [B,H,W,C] (channels last) or [B,C,H,W] -> [B,C,H,W]."""
    if image.ndim == 2:
        return image[None, None]
    if image.ndim == 3:
        image = image[None]
    if image.shape[-1] in (1, 3) and image.shape[1] not in (1, 3):
        image = image.permute(0, 3, 1, 2)
    return image


def psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB over all pixels, or over ``mask`` (same spatial size, >0 = inside)."""
    pred, tgt = _to_bchw(prediction).float(), _to_bchw(target).float()
    err = (pred - tgt).square().mean(1, keepdim=True)  # [B,1,H,W]
    if mask is not None:
        m = _to_bchw(mask.float())[:, :1].expand_as(err)
        mse = (err * m).sum() / m.sum().clamp_min(1)
    else:
        mse = err.mean()
    return 10 * math.log10(1.0 / max(float(mse), 1e-12))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(prediction: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
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
    value = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))
    return value.mean(1, keepdim=True)


def ssim(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean SSIM (over ``mask`` if given)."""
    value = ssim_map(_to_bchw(prediction).float(), _to_bchw(target).float())
    if mask is None:
        return float(value.mean())
    m = _to_bchw(mask.float())[:, :1]
    return float((value * m).sum() / m.sum().clamp_min(1))


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    pred, tgt = _to_bchw(prediction).float(), _to_bchw(target).float()
    err = (pred - tgt).abs().mean(1, keepdim=True)
    if mask is None:
        return float(err.mean())
    m = _to_bchw(mask.float())[:, :1]
    return float((err * m).sum() / m.sum().clamp_min(1))

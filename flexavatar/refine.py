"""Test-time refinement: fit an avatar's static UV maps to its input photos under a time budget.

Loss: L1 + 0.2·(1 − SSIM) between renders and the masked input crops (both on the same
background), plus a pull toward the network's prediction so regions no photo constrains
stay as predicted. The best state seen (by input-view PSNR) is returned, so refinement never
makes the input views worse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from flexavatar.camera import Camera
from flexavatar.eval.metrics import psnr, ssim_map
from flexavatar.model.avatar import Avatar
from flexavatar.model.field import ATTRIBUTE_SLICES

Progress = Callable[[str, float], None]

SSIM_WEIGHT = 0.2


@dataclass
class RefineResult:
    avatar: Avatar
    losses: list[float] = field(default_factory=list)  # loss per step
    psnr_curve: list[float] = field(default_factory=list)  # input-view PSNR before each step, dB
    psnr_before: float = 0.0
    psnr_after: float = 0.0
    steps: int = 0
    seconds: float = 0.0


def _regulariser_weights(channels: int, device) -> torch.Tensor:
    """Per-channel pull toward the prediction: geometry firmly, colour lightly."""
    weights = torch.full((channels,), 1.0, device=device)
    weights[ATTRIBUTE_SLICES["colour"]] = 0.05
    return weights[:, None, None]


def refine(
    model,
    avatar: Avatar,
    crops: torch.Tensor,
    cameras: list[Camera],
    expressions: torch.Tensor,
    seconds: float = 10.0,
    steps: int | None = None,
    progress: Progress | None = None,
    optimise_features: bool = False,
    learning_rate: float = 0.01,
    regularisation: float = 0.05,
    background=(1.0, 1.0, 1.0),
) -> RefineResult:
    """Photometric fit of ``avatar`` to its inputs.

    crops [V,3,S,S] in [0,1], masked with the same ``background`` the renders use; cameras: V
    fitted cameras; expressions [V,57]. Stops after ``seconds`` (wall clock) or ``steps``,
    whichever comes first. ``progress(stage, fraction)`` is called every step.
    """
    device = model.device
    crops = crops.to(device)
    expressions = expressions.to(device)
    target = crops.permute(0, 2, 3, 1)  # [V,S,S,3]
    initial = avatar.static_maps.detach().clone()
    static = initial.clone().requires_grad_(True)
    params = [static]
    features = avatar.identity_features.detach().clone()
    if optimise_features:
        features.requires_grad_(True)
        params.append(features)
    optimiser = torch.optim.Adam(params, lr=learning_rate)
    reg_weights = _regulariser_weights(initial.shape[0], device)
    atlas_mask = model.atlas.mask.to(initial.dtype)

    result = RefineResult(avatar=avatar)
    best_psnr, best_state = -1.0, (initial, avatar.identity_features.detach())
    start = time.perf_counter()
    step = 0
    max_steps = steps if steps is not None else 10**9
    while step < max_steps and (time.perf_counter() - start) < seconds:
        current = replace(avatar, static_maps=static, identity_features=features)
        rgb, _ = model.render(current, cameras, expressions, background=background)
        current_psnr = psnr(rgb.detach(), target)
        if current_psnr > best_psnr:  # the state *before* this step's update
            best_psnr = current_psnr
            best_state = (static.detach().clone(), features.detach().clone())
        prediction = rgb.permute(0, 3, 1, 2)
        l1 = (prediction - crops).abs().mean()
        structural = 1 - ssim_map(prediction, crops).mean()
        pull = ((static - initial).square() * reg_weights * atlas_mask).mean()
        loss = l1 + SSIM_WEIGHT * structural + regularisation * pull
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        result.losses.append(loss.item())
        result.psnr_curve.append(current_psnr)
        if progress is not None:
            fraction = step / max_steps if steps is not None else (time.perf_counter() - start) / seconds
            progress("refine", min(1.0, fraction))
    with torch.no_grad():  # the last update was never scored: score it once
        final = replace(avatar, static_maps=static.detach(), identity_features=features.detach())
        final_psnr = psnr(model.render(final, cameras, expressions, background=background)[0], target)
        if final_psnr > best_psnr:
            best_psnr, best_state = final_psnr, (static.detach().clone(), features.detach().clone())
    result.avatar = replace(avatar, static_maps=best_state[0], identity_features=best_state[1])
    result.psnr_before = result.psnr_curve[0] if result.psnr_curve else final_psnr
    result.psnr_after = best_psnr
    result.steps = step
    result.seconds = time.perf_counter() - start
    return result

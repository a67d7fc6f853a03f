"""Test-time refinement: fit an avatar's static UV maps to its input photos under a time budget.

Loss: L1 + 0.2·(1 − SSIM) between renders and the head part of the input crops (both on the
same background), a silhouette term (rendered alpha vs. the head mask) and a pull toward the
network's prediction; updates are scaled by each texel's visibility in the inputs, so regions
no photo constrains stay as predicted. The best state seen (by input-view PSNR) is returned, so refinement never
makes the input views worse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from flexavatar.camera import Camera, stack_cameras
from flexavatar.metrics import photometric_loss, psnr
from flexavatar.model.avatar import Avatar
from flexavatar.model.evidence import lift_views
from flexavatar.model.field import ATTRIBUTE_SLICES

Progress = Callable[[str, float], None]

SILHOUETTE_WEIGHT = 0.5
#: The update is optimised at 1/DELTA_DOWNSAMPLE of the atlas resolution and upsampled: a smooth
#: correction (tone, shading, hair edge) carries to other views and expressions; a per-texel one
#: overfits the source view's misalignment and makes held-out frames worse.
DELTA_DOWNSAMPLE = 4
#: What refinement fits: the colour and opacity of the whole-head chart (hair, ears, neck: what
#: the template lacks and the network saw least of in training). Geometry, the face, the mouth and
#: the eyes stay as predicted: fitted to one photo's expression and pose they made held-out frames
#: of single_face.mp4 worse (see the closing note of issue 13 for the measurements).
REFINED_ATTRIBUTES = ("colour", "opacity")
REFINED_CHARTS = ("back_head",)


@dataclass
class RefineResult:
    avatar: Avatar
    losses: list[float] = field(default_factory=list)  # loss per step
    psnr_curve: list[float] = field(default_factory=list)  # input-view PSNR before each step, dB
    psnr_before: float = 0.0
    psnr_after: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    head_masks: torch.Tensor | None = None  # [V,1,S,S] the head part of each input: what was fitted and scored


def _channel_steps(channels: int, device) -> torch.Tensor:
    """Per-channel step size of the static maps ([C,1,1]): Adam moves each parameter by about
    ``learning_rate`` per step, so this sets how far colour (0-1), offsets (cm), log-scales,
    opacity logits and rotations may move per step."""
    steps = torch.ones(channels, device=device)
    steps[ATTRIBUTE_SLICES["colour"]] = 1.0
    steps[ATTRIBUTE_SLICES["offset"]] = 2.0
    steps[ATTRIBUTE_SLICES["scale"]] = 1.5
    steps[ATTRIBUTE_SLICES["opacity"]] = 3.0
    steps[ATTRIBUTE_SLICES["rotation"]] = 1.0
    fitted = torch.zeros(channels, device=device)
    for name in REFINED_ATTRIBUTES:
        fitted[ATTRIBUTE_SLICES[name]] = 1.0
    return (steps * fitted)[:, None, None]


def _upsample(delta: torch.Tensor) -> torch.Tensor:
    """[1,C,r,r] coarse update -> [C,R,R] (R = r * DELTA_DOWNSAMPLE), bilinear."""
    return F.interpolate(delta, scale_factor=DELTA_DOWNSAMPLE, mode="bilinear", align_corners=False)[0]


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
    masks: torch.Tensor | None = None,
) -> RefineResult:
    """Photometric fit of ``avatar`` to its inputs.

    crops [V,3,S,S] in [0,1], masked with the same ``background`` the renders use; cameras: V
    fitted cameras; expressions [V,57]; masks [V,1,S,S] person masks (default: every pixel that
    is not ``background``). Stops after ``seconds`` (wall clock) or ``steps``, whichever comes
    first. ``progress(stage, fraction)`` is called every step.

    What the inputs see is fitted, nothing else: the target is the head part of each view
    (person mask minus clothes, :mod:`flexavatar.tracking.parsing`) on the background, with a
    silhouette term (rendered alpha vs. that head mask); each texel's update is scaled by how
    well the inputs see it (its visibility on the hair shell), so texels no view sees stay
    exactly as predicted, and every view is used. Only :data:`REFINED_ATTRIBUTES` of
    :data:`REFINED_CHARTS` move, as a smooth (coarse) update. PSNR is measured over the head mask.
    """
    device = model.device
    crops = crops.to(device)
    expressions = expressions.to(device)
    bg = torch.as_tensor(background, dtype=crops.dtype, device=device)[None, :, None, None]
    if masks is None:
        masks = ((crops - bg).abs().amax(1, keepdim=True) > 2 / 255).to(crops.dtype)
    masks = masks.to(device)
    initial = avatar.static_maps.detach().clone()
    with torch.no_grad():
        shape = model.whole_head(crops, masks, cameras, avatar.identity, expressions)
        head = shape.parts.head.clamp(0, 1)  # [V,1,S,S]
        viewmats, Ks = stack_cameras(cameras)
        vertices = model.mesh(avatar.identity, expressions)
        _, seen, _ = lift_views(model.atlas, vertices, crops, head, viewmats.to(crops), Ks.to(crops), shape.heights)
        visibility = model.atlas.scatter(seen.sum(0).clamp(0, 1).sqrt()[None, :, None])[0]  # [1,R,R]
    crops = crops * head + bg * (1 - head)  # clothes are not the avatar's to fit
    target = crops.permute(0, 2, 3, 1)  # [V,S,S,3]
    head_region = (head > 0.5).permute(0, 2, 3, 1)  # [V,S,S,1]
    coarse = initial.shape[-1] // DELTA_DOWNSAMPLE
    delta = initial.new_zeros((1, initial.shape[0], coarse, coarse), requires_grad=True)
    charts = model.atlas.scatter(model.atlas.region_mask(*REFINED_CHARTS).to(initial.dtype)[None, :, None])[0]
    channel_steps = _channel_steps(initial.shape[0], device) * visibility * charts
    params = [delta]
    features = avatar.identity_features.detach().clone()
    dynamic = None
    if optimise_features:
        features.requires_grad_(True)
        params.append(features)
    else:  # the deformer's output does not change: run it once, not every step
        with torch.no_grad():
            dynamic = model.dynamic_maps(avatar, expressions)
    optimiser = torch.optim.Adam(params, lr=learning_rate)
    reg_weights = _regulariser_weights(initial.shape[0], device)
    atlas_mask = model.atlas.mask.to(initial.dtype)
    for p in model.parameters():  # only the avatar is fitted
        p.requires_grad_(False)
    pixel_weight = 1.0 + head  # [V,1,S,S]: the head twice, the background once

    result = RefineResult(avatar=avatar, head_masks=head)
    best_psnr, best_state = -1.0, (initial, avatar.identity_features.detach())
    start = time.perf_counter()
    step = 0
    max_steps = steps if steps is not None else 10**9
    try:
        while step < max_steps and (time.perf_counter() - start) < seconds:
            static = initial + _upsample(delta) * channel_steps
            current = replace(avatar, static_maps=static, identity_features=features)
            rgb, alpha = model.render(current, cameras, expressions, background=background, dynamic=dynamic)
            current_psnr = psnr(rgb.detach(), target, head_region)
            if current_psnr > best_psnr:  # the state *before* this step's update
                best_psnr = current_psnr
                best_state = (static.detach().clone(), features.detach().clone())
            prediction = rgb.permute(0, 3, 1, 2)
            # the shared loss is a weighted mean; scaled by the mean weight it is the plain mean of
            # weighted pixels, so views with fewer seen pixels count for less
            photo = photometric_loss(prediction, crops, pixel_weight)["photo"] * pixel_weight.mean()
            pull = ((static - initial).square() * reg_weights * atlas_mask).mean()
            silhouette = (alpha.permute(0, 3, 1, 2) - head).abs().mean()
            loss = photo + SILHOUETTE_WEIGHT * silhouette + regularisation * pull
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
            static = initial + _upsample(delta.detach()) * channel_steps
            final = replace(avatar, static_maps=static, identity_features=features.detach())
            rendered = model.render(final, cameras, expressions, background=background, dynamic=dynamic)[0]
            final_psnr = psnr(rendered, target, head_region)
            if final_psnr > best_psnr:
                best_psnr, best_state = final_psnr, (static.clone(), features.detach().clone())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    result.avatar = replace(avatar, static_maps=best_state[0], identity_features=best_state[1])
    result.psnr_before = result.psnr_curve[0] if result.psnr_curve else final_psnr
    result.psnr_after = best_psnr
    result.steps = step
    result.seconds = time.perf_counter() - start
    return result

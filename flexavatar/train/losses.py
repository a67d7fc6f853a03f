"""Training losses and the pixel maps they use.

total = L1 + 0.2·(1 − SSIM)   (:func:`flexavatar.metrics.photometric_loss`) over ``loss_region``,
                              every pixel weighted by ``pixel_weight``
        (×3 inside a box around the projected mouth when the mouth faces the camera)
      + 0.01·mean(static offset² + scale²) + 0.01·mean(dynamic offset² + scale² + rotation²)

Both images are composited on white. For synthetic samples the region is the whole image (the
ground truth, hair volume included, is exactly representable); for real frames it is the whole
head: the head part of the person mask (hair and skin) grown a little, with the ICT head's
silhouette at the tracked pose dilated by :data:`HEAD_REGION_DILATE`, and the clothes, whose
target is white (:func:`flexavatar.train.monocular.whole_head_region`; shoulders and clothes are
not part of the avatar, which must leave them transparent).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from flexavatar.head.model import HEAD_NECK_VERTICES
from flexavatar.model.field import ATTRIBUTE_SLICES

MOUTH_WEIGHT = 3.0
STATIC_REG = 0.01
DYNAMIC_REG = 0.01
#: Mouth landmarks (multipie-68 indices 48-67) and the box padding around them.
MOUTH_LANDMARKS = slice(48, 68)
MOUTH_PAD = 0.35
#: Dilation of the head silhouette for real frames, as a fraction of the crop side.
HEAD_REGION_DILATE = 0.06


def static_regulariser(static_maps: torch.Tensor, atlas_mask: torch.Tensor) -> torch.Tensor:
    """Mean square of the predicted static offsets and scale deltas over the atlas: [C,R,R]."""
    mask = atlas_mask.to(static_maps.dtype)
    parts = static_maps[ATTRIBUTE_SLICES["offset"]].square().sum(0) + static_maps[
        ATTRIBUTE_SLICES["scale"]
    ].square().sum(0)
    return (parts * mask).sum() / mask.sum().clamp_min(1)


def dynamic_regulariser(dynamic: torch.Tensor, atlas_mask: torch.Tensor) -> torch.Tensor:
    """Mean square of the deformer's offset/scale/rotation deltas: dynamic [B,14,R,R]."""
    mask = atlas_mask.to(dynamic.dtype)
    parts = sum(
        dynamic[:, ATTRIBUTE_SLICES[name]].square().sum(1) for name in ("offset", "scale", "rotation")
    )
    return (parts * mask).sum() / (mask.sum() * dynamic.shape[0]).clamp_min(1)


# ----------------------------------------------------------------------------------- pixel maps
def _facing(camera, head_centre: torch.Tensor) -> float:
    """cos of the angle between the face's forward axis (+z) and the direction to the camera."""
    direction = camera.position.cpu() - head_centre.cpu()
    return float(direction[2] / direction.norm().clamp_min(1e-8))


@torch.no_grad()
def mouth_weight_map(head, identity: torch.Tensor, expressions: torch.Tensor, cameras, weight: float = MOUTH_WEIGHT,
                     ) -> torch.Tensor:  # fmt: skip
    """[B,1,H,W]: ``weight`` inside a box around the projected mouth landmarks, 1 elsewhere.

    No box when the camera sees the head from behind or the side (mouth not visible).
    """
    identity, expressions = identity.to(head.device), expressions.to(head.device)
    vertices = head.vertices(identity[None].expand(len(expressions), -1), expressions)
    mouth = vertices[:, head.landmarks_multipie68[MOUTH_LANDMARKS]]  # [B,20,3]
    centre = head.head_centre()
    maps = []
    for b, camera in enumerate(cameras):
        out = torch.ones(1, camera.height, camera.width)
        if _facing(camera, centre) > 0.35:
            pix = camera.to(head.device).project(mouth[b]).cpu()
            lo, hi = pix.min(0).values, pix.max(0).values
            pad = (hi - lo) * MOUTH_PAD
            x0, y0 = (lo - pad).floor().clamp_min(0).long().tolist()
            x1, y1 = (hi + pad).ceil().long().tolist()
            x1, y1 = min(x1, camera.width), min(y1, camera.height)
            if x1 > x0 and y1 > y0:
                out[:, y0:y1, x0:x1] = weight
        maps.append(out)
    return torch.stack(maps)


@torch.no_grad()
def head_region(head, identity: torch.Tensor, expression: torch.Tensor, camera, dilate: float = HEAD_REGION_DILATE,
                ) -> torch.Tensor:  # fmt: skip
    """[1,H,W] float: the ICT head's silhouette (face, scalp, ears, neck) seen by ``camera``,
    dilated by ``dilate`` × the image side (to take in hair)."""
    vertices = head.vertices(identity[None].to(head.device), expression[None].to(head.device))[0]
    pix = camera.to(head.device).project(vertices).cpu().numpy()
    triangles = head.triangles.cpu().numpy()
    triangles = triangles[(triangles <= HEAD_NECK_VERTICES[1]).all(1)]
    cam_z = (
        (vertices @ camera.viewmat[:3, :3].T.to(vertices) + camera.viewmat[:3, 3].to(vertices))[:, 2]
        .cpu()
        .numpy()
    )
    triangles = triangles[(cam_z[triangles] > 0.01).all(1)]
    mask = np.zeros((camera.height, camera.width), np.uint8)
    polygons = np.round(pix[triangles] * 4).astype(np.int32)  # 2 bits of sub-pixel precision
    cv2.fillPoly(mask, list(polygons), 1, lineType=cv2.LINE_8, shift=2)
    radius = max(1, int(round(dilate * camera.width)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    mask = cv2.dilate(mask, kernel)
    return torch.from_numpy(mask.astype(np.float32))[None]

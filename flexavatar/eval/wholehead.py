"""Whole-head evaluation: silhouette, whole-head PSNR and a turntable check on the public photos.

For each photo, the avatar is made feed-forward (and optionally refined) and measured

* at the source view: silhouette IoU of the rendered alpha (> 0.5) against the head part of
  the person mask (person mask minus clothes and shoulders, :mod:`flexavatar.tracking.parsing`:
  what an avatar of the head should cover), PSNR over that whole head (hair included) and the
  face PSNR (that head mask x the fitted ICT head's dilated silhouette, :func:`face_region`, as
  the self-reenactment table);
* on a turntable (:data:`TURNTABLE_FRAMES` frames, 256²): the fraction of frames of the front
  quarter (azimuth within 45° of the face) where MediaPipe finds a face, the same for the back
  quarter (within 45° of the back: should be 0), and the colour noise of the back views relative
  to the front views: the total variation of the chroma (each pixel's colour minus its grey)
  inside the rendered head, back quarter / front quarter;
* in UV: the speckle of the skin no input covers (:func:`unseen_skin_speckle`), what the sides
  of the face show on a turntable of a frontal photo;
* on the turntable's side quarters (azimuth within 45° of 90° and 270°): the bright specks, per
  mille of the rendered head's pixels (:func:`bright_specks`): skin showing through the hair.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import median_filter

from flexavatar.camera import stack_cameras
from flexavatar.errors import InvalidInputError
from flexavatar.metrics import psnr
from flexavatar.model.field import ATTRIBUTE_SLICES
from flexavatar.model.hair import whole_head
from flexavatar.pipeline import turntable_cameras
from flexavatar.refine import refine
from flexavatar.render import rasterize
from flexavatar.tracking import detect_face, fit_head
from flexavatar.tracking.parsing import PersonParts
from flexavatar.train.losses import head_region

PUBLIC_PHOTOS = ("astronaut.png", "single_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg")
TURNTABLE_FRAMES = 24
TURNTABLE_RESOLUTION = 256
QUARTER_DEG = 45.0
TURNTABLE_ELEVATION_DEG = 10.0  # the app's turntable elevation
#: Face-chart texels under this evidence coverage count as unseen in :func:`unseen_skin_speckle`.
UNSEEN_COVERAGE = 0.05
#: :func:`bright_specks`: a pixel this much brighter (mean RGB in [0,1]) than the median of its
#: SPECK_WINDOW x SPECK_WINDOW neighbourhood, inside the rendered head (alpha above SPECK_ALPHA).
SPECK_CONTRAST = 0.15
SPECK_WINDOW = 5
SPECK_ALPHA = 0.9


def head_parts(model, crops, masks, cameras, identity, expressions) -> PersonParts:
    """Skin / hair / clothes split of crops [V,3,S,S] with their fit (see :func:`whole_head`)."""
    viewmats, Ks = stack_cameras(cameras)
    vertices = model.mesh(identity, expressions)
    neutral = model.head.vertices(identity[None])
    landmarks = model.head.landmarks_multipie68
    device = crops.device
    return whole_head(model.atlas, landmarks, neutral, vertices, crops, masks, viewmats.to(device), Ks.to(device)).parts


def face_region(model, identity, expression, camera, head_mask: torch.Tensor) -> torch.Tensor:
    """[H,W] region of the face metrics: the fitted ICT head's silhouette (dilated for hair,
    :func:`~flexavatar.train.losses.head_region`) inside head_mask [H,W] (the head part of the
    person mask: the ICT neck reaches below the collar, and a shirt there is no avatar's)."""
    region = head_region(model.head, identity, expression, camera)[0]
    return region.to(head_mask) * head_mask


def silhouette_iou(alpha: torch.Tensor, target: torch.Tensor) -> float:
    """IoU of two silhouettes (any matching shapes, values in [0,1], thresholded at 0.5)."""
    a, b = alpha.reshape(-1) > 0.5, target.reshape(-1) > 0.5
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def chroma_tv(rgb: torch.Tensor, alpha: torch.Tensor) -> float:
    """Mean total variation of the chroma inside the rendered head.

    rgb [B,H,W,3] in [0,1], alpha [B,H,W,1]. Chroma = colour minus its grey (mean of RGB);
    TV = |horizontal| + |vertical| neighbour differences summed over channels, averaged over the
    neighbour pairs with both pixels inside (alpha > 0.5).
    """
    chroma = rgb - rgb.mean(-1, keepdim=True)
    inside = alpha[..., 0] > 0.5
    dx = (chroma[:, :, 1:] - chroma[:, :, :-1]).abs().sum(-1)
    dy = (chroma[:, 1:] - chroma[:, :-1]).abs().sum(-1)
    mx = inside[:, :, 1:] & inside[:, :, :-1]
    my = inside[:, 1:] & inside[:, :-1]
    return float((dx[mx].sum() + dy[my].sum()) / max(1, int(mx.sum() + my.sum())))


def unseen_skin_speckle(model, avatar, fit: dict) -> float:
    """Mean |colour - its 3x3 median| (RGB in [0,1], mean over channels) of the avatar's face-chart
    texels that the inputs leave unseen (evidence coverage < :data:`UNSEEN_COVERAGE`), whose 3x3
    neighbourhood is all face chart. Salt-and-pepper noise on skin nobody photographed is what the
    sides of a turntable showed as grey-white speckle."""
    with torch.no_grad():
        evidence, _ = model.evidence(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"],
                                     mouth_openings=fit["mouth_openings"])  # fmt: skip
    chart = model.atlas.scatter(model.atlas.region_mask("face").float()[None, :, None].to(evidence))[0]  # [1,R,R]
    inside = -F.max_pool2d(-chart[None], 3, 1, 1)[0, 0] > 0.5  # the whole 3x3 is face chart
    colour = avatar.static_maps[ATTRIBUTE_SLICES["colour"]].to(evidence)  # [3,R,R]
    median = F.unfold(colour[None], 3, padding=1).view(3, 9, *colour.shape[-2:]).median(1).values
    unseen = inside & (evidence[3] < UNSEEN_COVERAGE)
    return float((colour - median).abs().mean(0)[unseen].mean()) if unseen.any() else 0.0


def bright_specks(rgb: np.ndarray, alpha: np.ndarray) -> float:
    """Per mille of the head's pixels (alpha [F,H,W] > :data:`SPECK_ALPHA`) in frames rgb [F,H,W,3]
    (in [0,1]) that are isolated bright points: :data:`SPECK_CONTRAST` above the median of their
    :data:`SPECK_WINDOW` neighbourhood (skin showing through gaps in dark hair)."""
    luminance = np.asarray(rgb, np.float32).mean(-1)
    local = median_filter(luminance, size=(1, SPECK_WINDOW, SPECK_WINDOW))
    head = np.asarray(alpha) > SPECK_ALPHA
    return 1000.0 * float(((luminance - local > SPECK_CONTRAST) & head).sum()) / max(int(head.sum()), 1)


def _azimuth_distance(azimuth: np.ndarray, centre: float) -> np.ndarray:
    return np.abs((azimuth - centre + 180.0) % 360.0 - 180.0)


def turntable_check(model, avatar, frames: int = TURNTABLE_FRAMES, resolution: int = TURNTABLE_RESOLUTION,
                    elevation_deg: float = TURNTABLE_ELEVATION_DEG) -> dict:  # fmt: skip
    """Face found in the front / back quarter of a turntable, and back/front chroma TV.

    Returns {"faces_front", "faces_back"} (fractions of those quarters' frames), "tv_front",
    "tv_back", "tv_ratio", "side_specks" (:func:`bright_specks` of the side quarters) and
    "frames" (uint8 [F,S,S,3], for contact sheets).
    """
    cameras = turntable_cameras(model, frames, elevation_deg, resolution)
    with torch.no_grad():
        gaussians = {k: v[0] for k, v in model.deform(avatar, avatar.source_expression[None]).items()}
        viewmats, Ks = (t.to(model.device) for t in stack_cameras(cameras))
        background = torch.ones(3, device=model.device)
        rgb, alpha, _ = rasterize(**gaussians, viewmats=viewmats, Ks=Ks, width=resolution, height=resolution,
                                  background=background)  # fmt: skip
    rgb, alpha = rgb.cpu(), alpha.cpu()
    images = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    found = np.zeros(frames, dtype=bool)
    for i, image in enumerate(images):  # MediaPipe takes one image at a time
        try:
            detect_face(image, name=f"turntable frame {i}", with_mask=False)
            found[i] = True
        except InvalidInputError:
            pass
    azimuth = 360.0 * np.arange(frames) / frames
    front = _azimuth_distance(azimuth, 0.0) <= QUARTER_DEG
    back = _azimuth_distance(azimuth, 180.0) <= QUARTER_DEG
    tv_front = chroma_tv(rgb[torch.from_numpy(front)], alpha[torch.from_numpy(front)])
    tv_back = chroma_tv(rgb[torch.from_numpy(back)], alpha[torch.from_numpy(back)])
    sides = (_azimuth_distance(azimuth, 90.0) <= QUARTER_DEG) | (_azimuth_distance(azimuth, 270.0) <= QUARTER_DEG)
    return {
        "faces_front": float(found[front].mean()),
        "faces_back": float(found[back].mean()),
        "tv_front": tv_front,
        "tv_back": tv_back,
        "tv_ratio": tv_back / max(tv_front, 1e-8),
        "side_specks": bright_specks(rgb[torch.from_numpy(sides)].numpy(), alpha[torch.from_numpy(sides)][..., 0].numpy()),
        "frames": images,
    }


def fit_photo(model, photo) -> dict:
    """Track one photo: crops [1,3,S,S], masks [1,1,S,S], cameras, identity, expressions on the model's device."""
    fit = fit_head([photo], resolution=model.config.crop_size, num_identity=model.config.num_identity)
    device = model.device
    crop = fit.crops[0]
    return {
        "crops": torch.from_numpy(crop.masked).permute(2, 0, 1)[None].float().div(255).to(device),
        "masks": torch.from_numpy(crop.mask)[None, None].float().to(device),
        "cameras": [c.to(device) for c in fit.cameras],
        "identity": fit.identity.to(device),
        "expressions": fit.expressions.to(device),
        "mouth_openings": torch.from_numpy(crop.mouth_opening)[None].to(device),
    }


def source_view_metrics(model, avatar, fit: dict) -> dict:
    """Silhouette IoU, whole-head PSNR and face PSNR of ``avatar`` at its source view(s)."""
    crops, masks, cameras = fit["crops"], fit["masks"], fit["cameras"]
    with torch.no_grad():
        parts = head_parts(model, crops, masks, cameras, fit["identity"], fit["expressions"])
        rgb, alpha = model.render(avatar, cameras, fit["expressions"])
    target = crops.permute(0, 2, 3, 1)
    head = parts.head.permute(0, 2, 3, 1)
    face = torch.stack([face_region(model, fit["identity"], e, c, h[0]) for e, c, h in zip(fit["expressions"], cameras, parts.head)])
    return {
        "iou": silhouette_iou(alpha, head),
        "head_psnr": psnr(rgb, target, head),
        "face_psnr": psnr(rgb, target, face[..., None]),
    }


def evaluate_photo(model, photo, refine_seconds: float = 0.0) -> dict:
    """Source-view metrics and turntable check of one photo's avatar (refined if ``refine_seconds``)."""
    fit = fit_photo(model, photo)
    with torch.no_grad():
        avatar = model.encode(fit["crops"], fit["masks"], fit["cameras"], fit["identity"], fit["expressions"],
                              fit["mouth_openings"])  # fmt: skip
    if refine_seconds > 0:
        avatar = refine(model, avatar, fit["crops"], fit["cameras"], fit["expressions"], seconds=refine_seconds,
                        masks=fit["masks"]).avatar  # fmt: skip
    return {**source_view_metrics(model, avatar, fit), **turntable_check(model, avatar),
            "unseen_speckle": unseen_skin_speckle(model, avatar, fit)}  # fmt: skip


def format_photo_table(rows: list[dict]) -> str:
    lines = [
        "| photo | avatar | silhouette IoU ↑ | head PSNR ↑ | face PSNR ↑ | face found front ↑ | face found back ↓ | back/front chroma TV ↓ | unseen skin speckle ↓ | side specks ‰ ↓ |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['photo']} | {r['name']} | {r['iou']:.3f} | {r['head_psnr']:.2f} | {r['face_psnr']:.2f} | "
            f"{r['faces_front']:.0%} | {r['faces_back']:.0%} | {r['tv_ratio']:.2f} | {r['unseen_speckle']:.4f} | {r['side_specks']:.2f} |"
        )
    return "\n".join(lines)

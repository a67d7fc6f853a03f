"""Face skin / hair / clothes split of the person mask, without a hair segmentation model.

No hair model is available offline, so the split is derived from what we do know:

* **colour statistics**: a skin colour model (mean + covariance, RGB) from the cheeks and nose,
  a hair colour model from the part of the person mask above the brows that the face does
  not cover (the scalp's silhouette). A pixel is hair-like when it is closer (Mahalanobis) to
  the hair model than to the skin model;
* **geometry**: everything in the mask above the upper lip is head (hair or skin); below it,
  a pixel is head only if it is skin on the fitted face and neck, or hair that hangs down
  without a break from the upper lip's row, at least 1.5 cm wide (long hair falls vertically;
  a dark shirt under short dark hair starts below a gap of background, and a shadowed jaw and
  neck edge over a dark collar is a narrow strip). The rest is clothes and shoulders.

The seeds (where the cheeks, the brows, the lips and the neck are in each crop) come from the
fitted ICT mesh: see :func:`flexavatar.model.hair.parsing_seeds`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Added to each colour covariance (RGB in [0,1]²): a flat-coloured region still has a spread.
COVARIANCE_FLOOR = 0.003
#: Fewer seed pixels than this and the colour model falls back to the other seed's statistics.
MIN_SEED_PIXELS = 24
#: Above the brows, a pixel this close (Mahalanobis) to the skin model is scalp skin, else hair.
SCALP_SKIN_DISTANCE = 2.0
#: Hair that hangs below the upper lip is at least this wide (fraction of the crop side: 1.5 cm
#: of the crop's 34 cm, :data:`~flexavatar.tracking.crop.CROP_SIDE_CM`). A narrower run is the
#: shadowed edge of a jaw and neck continuing into a dark collar: read as hair, it gave a short-
#: haired man (single_face.jpg) a mullet down to his shoulders.
HANG_MIN_WIDTH = 0.044


@dataclass
class PersonParts:
    """Soft per-pixel parts of the person mask, each [V,1,S,S] in [0,1]; they sum to the mask.

    skin: face and neck skin; hair: hair (and beard, hats: whatever is on the head and not
    skin-coloured); clothes: clothes, shoulders and anything below the upper lip that is not head.
    """

    skin: torch.Tensor
    hair: torch.Tensor
    clothes: torch.Tensor

    @property
    def head(self) -> torch.Tensor:
        """[V,1,S,S]: the head's silhouette (skin + hair): what the avatar should cover."""
        return self.skin + self.hair


def colour_model(images: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted RGB Gaussian per view.

    images [V,3,S,S] in [0,1], weights [V,1,S,S] >= 0. Returns mean [V,3], inverse covariance
    [V,3,3] and the number of seed pixels (sum of weights) [V].
    """
    flat = images.flatten(2)  # [V,3,P]
    w = weights.flatten(2)  # [V,1,P]
    count = w.sum(-1)[:, 0]  # [V]
    mean = (flat * w).sum(-1) / count.clamp_min(1e-6)[:, None]
    centred = (flat - mean[..., None]) * w.sqrt()
    cov = centred @ centred.transpose(1, 2) / count.clamp_min(1e-6)[:, None, None]
    cov = cov + COVARIANCE_FLOOR * torch.eye(3, device=images.device, dtype=images.dtype)
    return mean, torch.linalg.inv(cov), count


def mahalanobis(images: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor) -> torch.Tensor:
    """[V,1,S,S] Mahalanobis distance of every pixel of images [V,3,S,S] to a colour model."""
    diff = images - mean[..., None, None]  # [V,3,S,S]
    mixed = torch.einsum("vij,vjhw->vihw", inv_cov, diff)
    return (diff * mixed).sum(1, keepdim=True).clamp_min(0).sqrt()


def split_person_mask(
    images: torch.Tensor,
    masks: torch.Tensor,
    skin_seed: torch.Tensor,
    hair_seed: torch.Tensor,
    hang_rows: torch.Tensor,
    face: torch.Tensor,
    neck: torch.Tensor,
) -> PersonParts:
    """Split person masks into skin / hair / clothes.

    images [V,3,S,S] in [0,1]; masks [V,1,S,S] person mask in [0,1]; skin_seed [V,1,S,S]
    pixels surely skin (cheeks, nose); hair_seed [V,1,S,S] pixels above the brows outside the
    face (hair, or scalp skin for a bald head); hang_rows [V] the pixel row of the upper lip:
    below it, hair must hang unbroken from that row; face [V,1,S,S] the fitted face's silhouette
    (a beard there is head whatever its colour); neck [V,1,S,S] the fitted head mesh's
    silhouette (face, mouth, neck). All seeds are 0/1 floats.
    """
    num_views, _, size, _ = images.shape
    solid = (masks > 0.5).float()
    skin_mean, skin_inv, _ = colour_model(images, skin_seed * solid)
    # the seed may catch a strand of hair or a nostril: refit on its inliers
    inliers = (mahalanobis(images, skin_mean, skin_inv) < 2.5).float()
    skin_mean, skin_inv, _ = colour_model(images, skin_seed * solid * inliers)
    hair_weight = hair_seed * solid
    hair_mean, hair_inv, hair_count = colour_model(images, hair_weight)
    # drop hair-seed pixels that look like skin (a receding hairline, a bald scalp), refit
    skin_dist = mahalanobis(images, skin_mean, skin_inv)
    hair_weight = hair_weight * (skin_dist > 3.0).float()
    refit_mean, refit_inv, refit_count = colour_model(images, hair_weight)
    enough = (refit_count >= MIN_SEED_PIXELS)[:, None]
    hair_mean = torch.where(enough, refit_mean, hair_mean)
    hair_inv = torch.where(enough[..., None], refit_inv, hair_inv)
    hair_dist = mahalanobis(images, hair_mean, hair_inv)
    # no usable hair seed (bald, cropped): nothing is hair-like by colour
    has_hair = (refit_count >= MIN_SEED_PIXELS).float()[:, None, None, None]
    hair_like = (hair_dist < skin_dist).float() * has_hair
    # above the brows and outside the face, whatever is not clearly skin is hair (blond hair is
    # close to skin in colour; a bald scalp is clearly skin)
    hair_like = torch.maximum(hair_like, hair_seed * (skin_dist > SCALP_SKIN_DISTANCE).float()) * solid

    rows = torch.arange(size, device=images.device, dtype=images.dtype)[None, None, :, None]
    lower = (rows > hang_rows.to(images.dtype)[:, None, None, None]).float().expand(-1, 1, -1, size)
    # skin lies on the fitted head; above the lips, what the mask shows beyond it is hair
    # (light hair whose highlights are skin-coloured)
    hair_like = torch.maximum(hair_like, (1 - neck) * (1 - lower) * solid)
    # below the upper lip, hair only where it hangs without a break from that row down (a shirt
    # rising to the shoulders beside the chin starts after a gap of background)
    hanging = torch.cumprod(torch.where(lower > 0, hair_like, torch.ones_like(hair_like)), dim=2) * lower
    hanging = _open_rows(hanging, max(1, round(HANG_MIN_WIDTH * size / 2)))
    neck_skin = neck * (1 - hair_like) * lower
    head = torch.where(lower > 0, (hanging + neck_skin + face).clamp(max=1), torch.ones_like(lower))
    head = _open_close(head) * masks
    hair = head * hair_like
    skin = head - hair
    return PersonParts(skin=skin, hair=hair, clothes=masks - head)


def _open_rows(binary: torch.Tensor, radius: int) -> torch.Tensor:
    """Morphological opening of [V,1,S,S] 0/1 maps along each row: drops runs narrower than
    2 * radius + 1 pixels and keeps wider ones as they are."""
    k = (1, 2 * radius + 1)
    eroded = -F.max_pool2d(-binary, k, 1, (0, radius))
    return F.max_pool2d(eroded, k, 1, (0, radius))


def _open_close(binary: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Morphological closing then opening of [V,1,S,S] 0/1 maps: fills pinholes, drops specks."""
    k = 2 * radius + 1
    closed = -F.max_pool2d(-F.max_pool2d(binary, k, 1, radius), k, 1, radius)
    return F.max_pool2d(-F.max_pool2d(-closed, k, 1, radius), k, 1, radius)

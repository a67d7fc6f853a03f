"""Training: synthetic multi-view data, monocular video pairs, density sampler, losses, trainer.

One idea per module: :mod:`.synthetic` (ICT heads rendered from random cameras, class 0) with
:mod:`.textures` (the bank of real faces lifted to the atlas, their hair swatches, and their
augmentation) and :mod:`.hairstyles` (random hair volumes over the back-of-head chart);
:mod:`.monocular` (tracked frame pairs of real videos, class 1); :mod:`.sampler` (expression
density adjustment); :mod:`.losses` (regularisers, mouth and head-region maps; the photometric
loss is :func:`flexavatar.metrics.photometric_loss`); :mod:`.trainer` (the loop) with
:mod:`.checkpoint` (checkpoints and the model card).

``python -m flexavatar train --config cpu-s --steps N --out DIR`` (see :mod:`.trainer`);
``python -m flexavatar eval`` (see :mod:`flexavatar.eval.evaluate`).

Data split (written down once, here): frames :data:`TRAIN_FRAMES` of :data:`DEFAULT_VIDEO`
(and the photos in :data:`TEXTURE_PHOTOS`) are training data; frames :data:`EVAL_FRAMES` are
held out for the self-reenactment evaluation, whose avatar is built from
:data:`EVAL_SOURCE_FRAME`. No held-out frame is ever read by the training code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from flexavatar.camera import Camera

MEDIA = Path(__file__).resolve().parents[3] / "shared" / "media"
DEFAULT_VIDEO = MEDIA / "single_face.mp4"
#: Frames of DEFAULT_VIDEO used for training (monocular pairs, texture bank).
TRAIN_FRAMES = range(0, 48)
#: Frames of DEFAULT_VIDEO held out for evaluation (targets only).
EVAL_FRAMES = range(48, 72)
#: The eval avatar is encoded from this (training-range) frame.
EVAL_SOURCE_FRAME = 0
#: Real faces whose appearance is lifted onto the UV atlas for the synthetic heads.
TEXTURE_PHOTOS = ("astronaut.png", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "single_face.jpg")
#: Training frames of DEFAULT_VIDEO that also go into the texture bank.
TEXTURE_VIDEO_FRAMES = (0, 24, 40)

#: Data-source classes (bias sinks of the deformer).
MULTI_VIEW, MONOCULAR = 0, 1


def media_dir() -> Path:
    """``$FLEXAVATAR_MEDIA`` or ``../shared/media`` beside the checkout."""
    return Path(os.environ.get("FLEXAVATAR_MEDIA") or MEDIA)


@dataclass
class TrainingSample:
    """One training example: encode the inputs, render the targets, compare.

    images [V,3,S,S] in [0,1] (white background), masks [V,1,S,S], cameras (V), identity [K],
    expressions [V,57]; targets: target_images [T,3,S,S] (white background), target_cameras
    (T), target_expressions [T,57]; loss_region [T,1,S,S] (1 where the loss counts),
    pixel_weight [T,1,S,S] (1, or more on the mouth); data_source: 0 multi-view, 1 monocular;
    mouth_openings [V,20,2] or None: the inputs' inner-lip polygons (real photos; as inference
    passes them to :meth:`~flexavatar.model.FlexAvatarModel.encode`).
    """

    images: torch.Tensor
    masks: torch.Tensor
    cameras: list[Camera]
    identity: torch.Tensor
    expressions: torch.Tensor
    target_images: torch.Tensor
    target_cameras: list[Camera]
    target_expressions: torch.Tensor
    loss_region: torch.Tensor
    pixel_weight: torch.Tensor
    data_source: int
    mouth_openings: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def to(self, device) -> TrainingSample:
        move = {
            name: getattr(self, name).to(device)
            for name in ("images", "masks", "identity", "expressions", "target_images", "target_expressions",
                         "loss_region", "pixel_weight")
        }  # fmt: skip
        if self.mouth_openings is not None:
            move["mouth_openings"] = self.mouth_openings.to(device)
        return replace(
            self,
            cameras=[c.to(device) for c in self.cameras],
            target_cameras=[c.to(device) for c in self.target_cameras],
            **move,
        )

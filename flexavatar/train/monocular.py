"""Monocular real data (class 1): source frame → target frame of the same video.

Every pair (s, t) of training frames is tracked jointly with ``fit_head([frame_s, frame_t])``
(one shared ICT identity, a camera and an expression per frame); the crops, masks and fits
are cached as ``.npz`` under ``$FLEXAVATAR_CACHE``, so only the first run pays for tracking.
The eval (:mod:`flexavatar.eval.evaluate`) uses the same cached fits.

The loss covers the whole head of the target frame (:func:`whole_head_region`): its hair and
skin (the person mask minus clothes and shoulders, split as the network's carving splits it),
grown a little so the silhouette's edge counts on both sides, together with the dilated ICT
head silhouette. Clothes count as background: the target is white there, as the avatar (which
has no clothes) should leave it; otherwise the network learns to undo the carving's cut below
the collar and paints a dark shirt over the neck.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flexavatar.assets import cache_dir
from flexavatar.camera import Camera
from flexavatar.tracking.fit import fit_head
from flexavatar.train import DEFAULT_VIDEO, MONOCULAR, TRAIN_FRAMES, TrainingSample, media_dir
from flexavatar.train.losses import HEAD_REGION_DILATE, head_region, mouth_weight_map
from flexavatar.video import iter_frames

#: Bumped when the cached fit gains or changes an array (2: mouth_openings).
FIT_VERSION = "2"
#: Source and target of a pair are at least this many frames apart (when the range allows).
MIN_PAIR_GAP = 6


class VideoFrames:
    """Frames 0 .. limit-1 of one video, decoded once on first use."""

    def __init__(self, path, limit: int):
        self.path = Path(path)
        self.limit = int(limit)
        self._frames: list[np.ndarray] | None = None

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.limit:
            raise IndexError(f"frame {index} is outside 0..{self.limit - 1}")
        if self._frames is None:
            self._frames = list(iter_frames(self.path, max_frames=self.limit))
        if index >= len(self._frames):
            raise IndexError(f"{self.path.name} has {len(self._frames)} frames, asked for frame {index}")
        return self._frames[index]


def fit_frames(video: VideoFrames, indices: list[int], resolution: int, num_identity: int, cache: bool = True,
               ) -> dict[str, np.ndarray]:  # fmt: skip
    """Joint ``fit_head`` of 1-4 frames (cached). Returns numpy arrays: masked [N,S,S,3] uint8,
    mask [N,S,S] float32, identity [K], expressions [N,57], viewmats [N,4,4], Ks [N,3,3],
    residual_px [N], frames [N], mouth_openings [N,20,2] crop pixels (the inner-lip polygons)."""
    stat = video.path.stat()
    key = hashlib.sha1(repr((FIT_VERSION, video.path.name, stat.st_size, tuple(indices), resolution,
                             num_identity)).encode()).hexdigest()[:16]  # fmt: skip
    path = cache_dir() / "fits" / f"{video.path.stem}_{key}.npz"
    if cache and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    names = [f"{video.path.name}#{i}" for i in indices]
    fit = fit_head([video[i] for i in indices], resolution=resolution, num_identity=num_identity, names=names)
    result = {
        "masked": np.stack([c.masked for c in fit.crops]).astype(np.uint8),
        "mask": np.stack([c.mask for c in fit.crops]).astype(np.float32),
        "identity": fit.identity.numpy().astype(np.float32),
        "expressions": fit.expressions.numpy().astype(np.float32),
        "viewmats": np.stack([c.viewmat.numpy() for c in fit.cameras]).astype(np.float32),
        "Ks": np.stack([c.K.numpy() for c in fit.cameras]).astype(np.float32),
        "residual_px": fit.residual_px.numpy().astype(np.float32),
        "frames": np.asarray(indices, dtype=np.int64),
        "mouth_openings": np.stack([c.mouth_opening for c in fit.crops]).astype(np.float32),
    }
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **result)
        tmp.replace(path)
    return result


def fit_cameras(fit: dict[str, np.ndarray]) -> list[Camera]:
    size = fit["masked"].shape[1]
    return [
        Camera(torch.from_numpy(v), torch.from_numpy(k), size, size)
        for v, k in zip(fit["viewmats"], fit["Ks"])
    ]


def fit_tensors(fit: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """crops [N,3,S,S] in [0,1] (white background) and masks [N,1,S,S]."""
    crops = torch.from_numpy(fit["masked"]).permute(0, 3, 1, 2).float() / 255
    masks = torch.from_numpy(fit["mask"])[:, None].float()
    return crops, masks


@torch.no_grad()
def whole_head_region(model, crops, masks, cameras: list[Camera], identity, expressions,
                      ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Loss region and clothes of crops [V,3,S,S] (masks [V,1,S,S], their fit), both [V,1,S,S] 0/1.

    region: the head part of the person mask (skin + hair, :meth:`FlexAvatarModel.whole_head`),
    dilated by half of HEAD_REGION_DILATE of the crop, united with the ICT head silhouette
    dilated by HEAD_REGION_DILATE (:func:`head_region`) and with the clothes; clothes: the person
    mask below the collar that is not head (the target's background there)."""
    parts = model.whole_head(crops, masks, cameras, identity, expressions).parts
    size = crops.shape[-1]
    grow = max(1, int(round(HEAD_REGION_DILATE * size / 2)))
    head = F.max_pool2d((parts.head > 0.5).float(), 2 * grow + 1, 1, grow)
    face = torch.stack([head_region(model.head, identity, e, c) for e, c in zip(expressions, cameras)]).to(
        head
    )
    clothes = (parts.clothes > 0.5).float()
    return torch.maximum(torch.maximum(head, face), clothes), clothes


def make_pairs(frames, num_pairs: int | None = None, seed: int = 0) -> list[tuple[int, int]]:
    """(source, target) pairs within ``frames``: every frame is a target once (or ``num_pairs``
    evenly spaced targets); its source is a random other frame at least MIN_PAIR_GAP away."""
    frames = list(frames)
    rng = np.random.default_rng([seed, 31337])
    targets = frames
    if num_pairs is not None and num_pairs < len(frames):
        targets = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, num_pairs).round()]
    pairs = []
    for t in targets:
        far = [f for f in frames if abs(f - t) >= MIN_PAIR_GAP] or [f for f in frames if f != t] or [t]
        pairs.append((int(far[int(rng.integers(len(far)))]), int(t)))
    return pairs


class MonocularPairs:
    """Pairs of tracked frames of real videos; ``[i]`` -> :class:`TrainingSample` with data_source 1.

    videos: paths (default: the training video); frames: the training frames of each
    (default :data:`~flexavatar.train.TRAIN_FRAMES`, never the held-out ones).
    """

    def __init__(self, model, videos=None, frames=TRAIN_FRAMES, num_pairs: int | None = None, seed: int = 0,
                 mouth_weight: float = 3.0):  # fmt: skip
        videos = [Path(v) for v in (videos or [media_dir() / DEFAULT_VIDEO.name])]
        self.model = model
        self.resolution = model.config.crop_size
        self.num_identity = model.config.num_identity
        self.mouth_weight = mouth_weight
        self.videos = [VideoFrames(v, max(frames) + 1) for v in videos]
        self.pairs: list[tuple[int, int, int]] = []  # (video, source, target)
        for vi, _ in enumerate(self.videos):
            self.pairs += [(vi, s, t) for s, t in make_pairs(frames, num_pairs, seed + vi)]
        self._fits: dict[int, dict] = {}
        self._regions: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def fit(self, index: int) -> dict[str, np.ndarray]:
        if index not in self._fits:
            vi, s, t = self.pairs[index]
            self._fits[index] = fit_frames(self.videos[vi], [s, t], self.resolution, self.num_identity)
        return self._fits[index]

    def target_expressions(self) -> np.ndarray:
        """[P,57] the tracked expression of every pair's target frame (tracks all pairs once)."""
        return np.stack([self.fit(i)["expressions"][1] for i in range(len(self))])

    def __getitem__(self, index: int) -> TrainingSample:
        fit = self.fit(index)
        crops, masks = fit_tensors(fit)
        cameras = fit_cameras(fit)
        identity = torch.from_numpy(fit["identity"])
        expressions = torch.from_numpy(fit["expressions"])
        if index not in self._regions:  # the mask split and carving cost ~0.1 s: once per pair
            device = self.model.device
            self._regions[index] = tuple(
                t.cpu()
                for t in whole_head_region(
                    self.model,
                    crops[1:].to(device),
                    masks[1:].to(device),
                    [c.to(device) for c in cameras[1:]],
                    identity.to(device),
                    expressions[1:].to(device),
                )
            )
        region, clothes = self._regions[index]
        target_images = crops[1:] * (1 - clothes) + clothes  # clothes are background for the avatar
        weight = mouth_weight_map(self.model.head, identity, expressions[1:], cameras[1:], self.mouth_weight)
        vi, s, t = self.pairs[index]
        return TrainingSample(
            images=crops[:1], masks=masks[:1], cameras=cameras[:1], identity=identity, expressions=expressions[:1],
            target_images=target_images, target_cameras=cameras[1:], target_expressions=expressions[1:],
            loss_region=region, pixel_weight=weight, data_source=MONOCULAR,
            mouth_openings=torch.from_numpy(fit["mouth_openings"][:1]),
            info={"video": self.videos[vi].path.name, "source": s, "target": t},
        )  # fmt: skip

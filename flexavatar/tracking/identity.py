"""Do 2-4 photos show one person? A warning when they seem not to.

No face-recognition model is available offline, so the check uses what tracking already has:

* **face shape**: each photo's ICT identity fitted on its own (:func:`fit_crops` with one
  image, :data:`SIGNATURE_ITERATIONS` steps), compared as the RMS distance between the two
  neutral face surfaces (face-region vertices, millimetres). Pose and expression are fitted
  separately, so they mostly drop out.
* **skin tone**: the median colour of small patches on the cheeks, forehead and nose, divided by
  the mean colour of the whole person in the same crop (so a colour cast or a brighter light
  scales both and cancels), as log(r/b), log(g/b).

score = shape_mm + SKIN_WEIGHT * |skin tone difference|; a pair above :data:`SCORE_THRESHOLD`
gets a warning. Measured on the shared test media (the table is printed by
``pytest -s tests/test_identity.py``): the 16 same-person pairs (5 frames of one video; the
astronaut and mirrored / cropped / relit copies) score 0.34-1.24, the 50 different-people
pairs 1.55-6 (lowest: two young men with similar faces, 1.55-2.03; every other pair >= 1.94),
so the threshold 1.4, in the middle of the gap, warns for all 50 and none of the 16. Five
people, and the threshold was chosen on them: a hint for the user, not a verdict;
similar-looking people can pass, and strong expressions inflate the shape distance.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from flexavatar import assets
from flexavatar.head.model import CM_TO_M, FACE_VERTICES, load_ict_arrays
from flexavatar.tracking.crop import HeadCrop
from flexavatar.tracking.fit import HeadFit, fit_crops

#: Pairs scoring above this get a warning (see the module docstring for how it was chosen).
SCORE_THRESHOLD = 1.4
#: Adam steps of each single-photo identity fit. Stopped early on purpose: the identity starts at
#: the mean face and the first steps recover the well-determined proportions, later ones chase
#: expression and landmark noise (measured: same-person scores grow from 1.24 at 40 steps to 1.49
#: at 150, while different people's lowest stays ~1.5), and 40 steps cost a quarter of a fit.
SIGNATURE_ITERATIONS = 40
#: Millimetres of face-shape distance that one unit of log-chromaticity skin-tone difference counts as.
SKIN_WEIGHT = 8.0
#: MediaPipe landmarks on skin: cheeks (50, 280, 205, 425), forehead (151, 10), nose tip (4).
SKIN_LANDMARKS = (50, 280, 151, 4, 205, 425, 10)
SKIN_PATCH_RADIUS = 5  # pixels of a 256 crop: ~7 mm of skin


@dataclass
class FaceSignature:
    """What one photo says about the person: ``shape`` [V,3] metres, the face region of the
    neutral ICT head with this photo's identity (relative to the template), and ``skin_tone``
    [2] log(r/b), log(g/b) of the skin relative to the whole person."""

    shape: np.ndarray
    skin_tone: np.ndarray


@functools.lru_cache(maxsize=2)
def _face_identity_basis(npz_path: str, num_identity: int) -> np.ndarray:
    """[K,V,3] float32 metres: identity modes on the face-region vertices."""
    first, last = FACE_VERTICES
    deltas = load_ict_arrays(npz_path)["identity_deltas"][:num_identity, first : last + 1]
    return deltas.astype(np.float32) * CM_TO_M


def skin_tone(crop: HeadCrop) -> np.ndarray:
    """[2] float: log(r/b), log(g/b) of the median skin colour over the person's mean colour."""
    image = crop.image.astype(np.float64) + 1.0  # +1: no log(0) on black pixels
    side = crop.resolution
    patches = []
    for index in SKIN_LANDMARKS:
        x, y = np.clip(np.round(crop.landmarks[index]).astype(int), 0, side - 1)
        r = SKIN_PATCH_RADIUS
        patches.append(
            np.median(image[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].reshape(-1, 3), axis=0)
        )
    skin = np.median(np.stack(patches), axis=0)
    person = crop.mask > 0.5
    reference = image[person].mean(axis=0) if person.any() else image.reshape(-1, 3).mean(axis=0)
    relative = skin / reference
    return np.log(relative[:2] / relative[2])


def face_signatures(fit: HeadFit) -> list[FaceSignature]:
    """One :class:`FaceSignature` per photo of ``fit``, each from a fit of that photo alone."""
    num_identity = fit.identity.shape[0]
    basis = _face_identity_basis(str(assets.resolve("ict_facekit.npz")), num_identity)
    signatures = []
    for crop, detection, name in zip(fit.crops, fit.detections, fit.names, strict=True):
        alone = fit_crops(
            [crop], [detection], [name], num_identity=num_identity, iterations=SIGNATURE_ITERATIONS
        )
        identity = alone.identity.numpy().astype(np.float32)
        signatures.append(FaceSignature(np.einsum("k,kvc->vc", identity, basis), skin_tone(crop)))
    return signatures


def pair_score(a: FaceSignature, b: FaceSignature) -> tuple[float, float, float]:
    """(score, face-shape distance in mm RMS, skin-tone distance); higher = less alike."""
    shape_mm = float(np.sqrt(((a.shape - b.shape) ** 2).sum(-1).mean()) * 1000.0)
    tone = float(np.linalg.norm(a.skin_tone - b.skin_tone))
    return shape_mm + SKIN_WEIGHT * tone, shape_mm, tone


def different_people_warnings(fit: HeadFit) -> list[str]:
    """Messages for the user when photos of ``fit`` seem to show different people ([] for 1)."""
    if fit.num_images < 2:
        return []
    signatures = face_signatures(fit)
    flagged = []
    for i, j in itertools.combinations(range(fit.num_images), 2):
        score, shape_mm, _ = pair_score(signatures[i], signatures[j])
        if score > SCORE_THRESHOLD:
            flagged.append(
                f"{fit.names[i]} and {fit.names[j]} (score {score:.1f}, face shapes {shape_mm:.1f} mm apart)"
            )
    if not flagged:
        return []
    return [
        "these photos may show different people: " + "; ".join(flagged) + f" — photos of one person score "
        f"below {SCORE_THRESHOLD}. The avatar blends all photos into one head: use photos of one person only."
    ]

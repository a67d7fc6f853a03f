"""Different-people check: how well it separates photos of one person from photos of different
people on the shared media (a measured table, printed with ``-s``), and the create_avatar warning."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from flexavatar import pipeline
from flexavatar.tracking import fit_head
from flexavatar.tracking.identity import SCORE_THRESHOLD, face_signatures, pair_score

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VIDEO_FRAMES = (0, 18, 36, 54, 71)


def _astronaut_variants(photo: np.ndarray) -> dict[str, np.ndarray]:
    """The same person, altered: mirrored, cropped and rescaled, relit (darker to one side,
    gamma, a warm colour cast)."""
    height, width, _ = photo.shape
    ramp = np.linspace(0.55, 1.1, width)[None, :, None]
    relit = np.clip((photo / 255.0) ** 1.3 * ramp * np.array([1.05, 1.0, 0.9]) * 255, 0, 255).astype(np.uint8)
    crop = np.asarray(Image.fromarray(photo[40:440, 60:460]).resize((width, height), Image.BICUBIC))
    return {"astronaut": photo, "astronaut mirrored": photo[:, ::-1].copy(), "astronaut cropped": crop,
            "astronaut relit": relit}  # fmt: skip


def _video_frames(path: Path, indices) -> list[np.ndarray]:
    frames = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in indices:
                frames[i] = frame.to_ndarray(format="rgb24")
    return [frames[i] for i in indices]


@pytest.fixture(scope="module")
def people(shared_media):
    """{name: (person, photo)}: 2 people with several photos each, 3 more with one each."""
    photo = np.asarray(Image.open(shared_media / "astronaut.png").convert("RGB"))
    photos = {name: ("astronaut", image) for name, image in _astronaut_variants(photo).items()}
    for index, frame in zip(VIDEO_FRAMES, _video_frames(shared_media / "single_face.mp4", VIDEO_FRAMES), strict=True):
        photos[f"single_face.mp4 #{index}"] = ("video man", frame)
    for name in ("single_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg"):
        photos[name] = (name, np.asarray(Image.open(shared_media / name).convert("RGB")))
    return photos


def test_separation_of_same_and_different_people(people):
    signatures = {name: face_signatures(fit_head([image], num_identity=40, names=[name]))[0]
                  for name, (_, image) in people.items()}  # fmt: skip
    same, different = [], []
    for a, b in itertools.combinations(people, 2):
        score, shape_mm, tone = pair_score(signatures[a], signatures[b])
        (same if people[a][0] == people[b][0] else different).append((score, shape_mm, tone, a, b))
    print(f"\n{'pair':56s} score  shape_mm  skin_tone")
    for label, rows in (("same person", same), ("different people", different)):
        for score, shape_mm, tone, a, b in sorted(rows):
            print(f"{label[:4]} {a + ' / ' + b:51s} {score:5.2f}  {shape_mm:6.2f}  {tone:7.3f}")
    same_max = max(r[0] for r in same)
    different_scores = np.array([r[0] for r in different])
    print(f"same max {same_max:.2f}, different min {different_scores.min():.2f}, threshold {SCORE_THRESHOLD}, "
          f"different pairs warned {int((different_scores > SCORE_THRESHOLD).sum())}/{len(different)}")  # fmt: skip
    assert len(same) == 16 and len(different) == 50
    assert same_max < SCORE_THRESHOLD  # no false alarm on these same-person pairs
    assert (different_scores > SCORE_THRESHOLD).mean() >= 0.9


def test_create_avatar_warns_for_different_people_only(people, untrained_model):
    report: dict = {}
    pipeline.create_avatar([people["astronaut"][1], people["0-f1-su-ph.jpg"][1]], model=untrained_model, report=report)
    warned = [w for w in report["warnings"] if "different people" in w]
    assert len(warned) == 1 and "image 1 and image 2" in warned[0]
    report = {}
    pipeline.create_avatar([people["astronaut"][1], people["astronaut relit"][1]], model=untrained_model, report=report)
    assert not [w for w in report["warnings"] if "different people" in w]


def test_mirrored_example_photo_gets_no_warning(untrained_model):
    photo = np.asarray(Image.open(EXAMPLES / "astronaut.png").convert("RGB"))
    report: dict = {}
    pipeline.create_avatar([photo, photo[:, ::-1].copy()], model=untrained_model, report=report)
    assert not [w for w in report["warnings"] if "different people" in w]

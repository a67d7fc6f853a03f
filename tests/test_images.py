"""Tests for flexavatar.images on real photos from ../shared/media (no network, ~3 s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flexavatar.errors import InvalidInputError
from flexavatar.images import load_image, read_image


def test_read_image_grayscale_and_downscale(shared_media: Path):
    path = shared_media / "BWPictureHuman.jpg"
    full = read_image(path, max_side=None)
    assert full.shape == (1912, 2560, 3) and full.dtype == np.uint8
    assert np.array_equal(full[..., 0], full[..., 1]) and np.array_equal(full[..., 1], full[..., 2])

    small = load_image(path, max_side=1024)
    assert small.downscaled and small.source_size == (2560, 1912)
    assert small.image.shape == (765, 1024, 3)

    astro = load_image(shared_media / "astronaut.png")  # 512 px: default max_side keeps it
    assert astro.image.shape == (512, 512, 3) and not astro.downscaled


def test_read_image_text_renamed_png(tmp_path: Path):
    fake = tmp_path / "holiday.png"
    fake.write_text("definitely not a PNG")
    with pytest.raises(
        InvalidInputError, match=r"holiday\.png is not a readable image .*upload a JPEG or PNG"
    ):
        read_image(fake)
    with pytest.raises(InvalidInputError, match="not found"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "zero.jpg").touch()
    with pytest.raises(InvalidInputError, match="empty"):
        read_image(tmp_path / "zero.jpg")


def test_read_image_truncated_jpeg(tmp_path: Path, shared_media: Path):
    data = (shared_media / "single_face.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match=r"cut\.jpg is not a readable image"):
        read_image(cut)


def test_read_image_exif_alpha_16bit(tmp_path: Path):
    # EXIF orientation 6 (rotate 90 degrees clockwise): stored 40x20 -> shown 20x40.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (10, 200, 30)).save(tmp_path / "rot.jpg", exif=exif)
    rotated = load_image(tmp_path / "rot.jpg")
    assert rotated.image.shape == (40, 20, 3) and rotated.source_size == (20, 40)

    # RGBA: fully transparent pixels become white, opaque ones keep their colour.
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    for source in (tmp_path / "cutout.png", rgba):
        img = read_image(source)
        assert img.shape == (8, 8, 3)
        assert tuple(img[0, 0]) == (255, 0, 0) and tuple(img[7, 7]) == (255, 255, 255)

    # 16-bit grayscale PNG -> 8-bit RGB.
    gray16 = np.full((6, 9), 65535, np.uint16)
    gray16[:, :3] = 257 * 100
    Image.fromarray(gray16).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.shape == (6, 9, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (100, 100, 100) and tuple(img[0, 8]) == (255, 255, 255)

    # PIL images and float arrays in [0, 1] are accepted too.
    assert read_image(Image.new("L", (5, 3), 128)).shape == (3, 5, 3)
    assert read_image(np.ones((4, 4, 3), np.float32))[0, 0, 0] == 255


@pytest.fixture(scope="module")
def cut_photo(tmp_path_factory, shared_media: Path) -> Path:
    """A real photo cut after 2 KB, as an interrupted upload leaves it (cut inside its EXIF block)."""
    cut = tmp_path_factory.mktemp("cut") / "cut_after_2kb.jpg"
    cut.write_bytes((shared_media / "single_face.jpg").read_bytes()[:2048])
    return cut


def test_photo_cut_after_2kb_is_a_clear_error(cut_photo: Path, shared_media: Path, tmp_path: Path):
    with pytest.raises(
        InvalidInputError, match=r"cut_after_2kb\.jpg is not a readable image .*truncated or corrupt"
    ):
        read_image(cut_photo)
    # Every real photo, cut after 2 KB: the same error whatever the cut hits (EXIF, tables, pixels).
    for photo in sorted(shared_media.glob("*.jp*g")) + [shared_media / "astronaut.png"]:
        cut = tmp_path / f"cut_{photo.name}"
        cut.write_bytes(photo.read_bytes()[:2048])
        with pytest.raises(InvalidInputError, match=rf"cut_{photo.name} is not a readable image"):
            read_image(cut)


def test_create_avatar_names_the_cut_photo(cut_photo: Path, untrained_model):
    from flexavatar import pipeline

    with pytest.raises(
        InvalidInputError, match=r"cut_after_2kb\.jpg is not a readable image .*upload a JPEG or PNG"
    ):
        pipeline.create_avatar([cut_photo], model=untrained_model)

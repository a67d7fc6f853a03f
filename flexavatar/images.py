"""Photo loading: a path, array or PIL image -> upright ``(H, W, 3)`` uint8 RGB array.

:func:`load_image` applies the EXIF orientation, converts every PIL mode (grayscale, 16-bit,
palette, CMYK, alpha) to 8-bit RGB and downscales photos larger than ``max_side`` pixels;
:func:`read_image` returns just the array. A file that is missing, empty, not an image, truncated
or corrupt (wherever the damage is: header, EXIF block or pixel data) raises
:class:`~flexavatar.errors.InvalidInputError` naming the file and saying what to do.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flexavatar.errors import InvalidInputError, require_file

__all__ = ["DEFAULT_MAX_IMAGE_SIDE", "LoadedImage", "load_image", "read_image"]

#: Default longest side (pixels) of photos returned by :func:`read_image`.
DEFAULT_MAX_IMAGE_SIDE = 2048

_IMAGE_HINT = "upload a JPEG or PNG photo"
#: What PIL raises on damaged data: a JPEG cut inside its EXIF block fails in ``Image.open``
#: (OSError "Truncated File Read", struct.error), one cut in the pixel data fails in ``load``.
_DAMAGED = (OSError, SyntaxError, ValueError, EOFError, struct.error)


@dataclass(frozen=True)
class LoadedImage:
    """Result of :func:`load_image`.

    ``image``: ``(H, W, 3)`` uint8 RGB, upright (EXIF orientation applied). ``source_size``:
    ``(width, height)`` in pixels of the upright original, before any downscale. ``downscaled``:
    whether ``image`` is smaller than the original. ``name``: file name used in messages.
    """

    image: np.ndarray
    source_size: tuple[int, int]
    downscaled: bool
    name: str


_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited onto white (transparent background -> white)."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode == "F" and peak <= 1.0:
            arr = arr * 255.0  # float image in [0, 1]
        elif peak > 255.0:
            arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """``(H, W)``, ``(H, W, 1|3|4)`` array (uint8, uint16, bool or float in [0, 1]) -> PIL image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.size == 0:
        raise InvalidInputError(
            f"image array has shape {arr.shape}, expected (H, W), (H, W, 3) or (H, W, 4); {_IMAGE_HINT}."
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidInputError(f"image array contains NaN or infinity; {_IMAGE_HINT}.")
        scale = 255.0 if float(arr.max()) <= 1.0 else 1.0  # [0, 1] floats, else assume [0, 255]
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
        peak = int(arr.max())
        if int(arr.min()) < 0 or peak > 65535:
            raise InvalidInputError(f"image array values must be in 0..255 or 0..65535; {_IMAGE_HINT}.")
        arr = (arr if peak <= 255 else np.rint(arr / 257.0)).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InvalidInputError(f"image array has unsupported dtype {arr.dtype}; {_IMAGE_HINT}.")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2] if arr.ndim == 3 else 2]
    return Image.fromarray(np.ascontiguousarray(arr), mode)


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after applying the EXIF orientation (swapped for 90-degree orientations)."""
    width, height = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block must not make a fine photo unreadable
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _open_image_file(path: Path, max_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode an image file; returns (image, upright original (w, h))."""
    not_readable = f"{path.name} is not a readable image"
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise InvalidInputError(
            f"{not_readable} (unknown or unsupported image format); {_IMAGE_HINT}."
        ) from None
    except Image.DecompressionBombError as e:
        raise InvalidInputError(
            f"{path.name} is too large to load ({e}); {_IMAGE_HINT} under 50 MP."
        ) from None
    except _DAMAGED as e:  # e.g. cut inside the EXIF block: the header itself is incomplete
        raise InvalidInputError(
            f"{not_readable} (the file is truncated or corrupt: {e}); {_IMAGE_HINT} again."
        ) from None
    try:
        upright_size = _upright_size(img)  # before draft() shrinks img.size
        if max_side and img.format == "JPEG" and max(img.size) > max_side:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the final size): much faster.
            scale = max_side / max(img.size)
            img.draft(None, (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))))
        img.load()
    except Image.DecompressionBombError as e:
        img.close()
        raise InvalidInputError(
            f"{path.name} is too large to load ({e}); {_IMAGE_HINT} under 50 MP."
        ) from None
    except _DAMAGED as e:  # truncated / corrupt pixel data
        img.close()
        raise InvalidInputError(
            f"{not_readable} (the file is truncated or corrupt: {e}); {_IMAGE_HINT} again."
        ) from None
    return img, upright_size


def load_image(
    source: str | os.PathLike | np.ndarray | Image.Image, max_side: int | None = DEFAULT_MAX_IMAGE_SIDE
) -> LoadedImage:
    """Load a photo as ``(H, W, 3)`` uint8 RGB, upright, at most ``max_side`` pixels on its long side.

    ``source`` is a file path, a numpy array (``(H, W)`` / ``(H, W, 1|3|4)``; uint8, uint16, bool, or
    float in [0, 1]) or a PIL image. Handling: EXIF orientation applied (``ImageOps.exif_transpose``);
    grayscale -> 3 identical channels; 16-bit -> 8-bit; alpha composited onto white (a cut-out
    portrait gets a white background instead of arbitrary colours under transparent pixels);
    CMYK / palette / other modes converted to RGB; multi-frame files (GIF, TIFF) use the first frame.
    If the long side exceeds ``max_side`` (None = never) the image is downscaled with Lanczos,
    aspect kept. Raises :class:`InvalidInputError` (missing, empty, not an image, truncated).
    """
    if isinstance(source, np.ndarray):
        name = "image array"
        img = _array_to_pil(source)
        source_size = img.size
    elif isinstance(source, Image.Image):
        name = Path(getattr(source, "filename", "") or "image").name
        try:
            source.load()
        except _DAMAGED as e:
            raise InvalidInputError(f"{name} is not a readable image ({e}); {_IMAGE_HINT}.") from None
        img = source
        source_size = _upright_size(source)
    elif isinstance(source, (str, os.PathLike)):
        path = require_file(source, "photo", _IMAGE_HINT)
        name = path.name
        img, source_size = _open_image_file(path, max_side)
    else:
        raise TypeError(f"expected a path, numpy array or PIL image, got {type(source).__name__}")

    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # corrupt EXIF: keep the stored orientation rather than fail
        upright = img
    rgb = _to_rgb(upright)
    downscaled = False
    if max_side is not None:
        if max_side <= 0:
            raise ValueError(f"max_side must be positive or None, got {max_side}")
        long_side = max(rgb.size)
        if max(source_size) > max_side or long_side > max_side:
            scale = max_side / max(source_size)
            target = (max(1, round(source_size[0] * scale)), max(1, round(source_size[1] * scale)))
            if rgb.size != target:
                rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            downscaled = True
    image = np.array(rgb, dtype=np.uint8)  # np.array copies: writable, independent of PIL
    if image.ndim != 3 or image.shape[2] != 3:  # defensive: _to_rgb always yields RGB
        raise InvalidInputError(f"{name} could not be converted to RGB; {_IMAGE_HINT}.")
    if img is not source:
        img.close()
    return LoadedImage(image=image, source_size=tuple(source_size), downscaled=downscaled, name=name)


def read_image(
    source: str | os.PathLike | np.ndarray | Image.Image, max_side: int | None = DEFAULT_MAX_IMAGE_SIDE
) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB array of a photo; see :func:`load_image` (which also says whether it
    was downscaled and the original size)."""
    return load_image(source, max_side).image

"""The Avatar: everything needed to animate a person without their photos; ``.avatar`` files.

A ``.avatar`` file is a safetensors file (no pickle anywhere) with string metadata. Users
upload these to the Space, so :func:`load_avatar` checks size, keys, dtypes, shapes, finite
values and metadata before anything else touches the tensors. Since format version 2 the
metadata holds a SHA-256 of every tensor and metadata field (:func:`content_checksum`), so a
file whose bytes were altered (a bad download, a truncated copy, an edit) is rejected with a
clear message. Version 1 files (no checksum) still load: they pass every other check, and
avatars made before the checksum existed stay usable.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from flexavatar.camera import Camera
from flexavatar.errors import InvalidInputError
from flexavatar.head.blendshapes import NUM_EXPRESSIONS
from flexavatar.model.field import NUM_ATTRIBUTES

FORMAT = "flexavatar.avatar"
FORMAT_VERSION = "2"
#: Versions :func:`load_avatar` reads: "1" has no checksum.
READABLE_VERSIONS = ("1", "2")
TENSOR_NAMES = ("identity", "static_maps", "identity_features", "source_expression", "source_viewmat", "source_K")
MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass
class Avatar:
    """An animatable head.

    identity [K] ICT identity weights; static_maps [14,R,R] Gaussian attributes on the UV atlas
    (see ``field.ATTRIBUTE_LAYOUT``); identity_features [C,R,R] (F_id, input of the deformer);
    source_expression [57] and source_camera: the first input photo's fitted expression and
    camera (reenactment transfers motion relative to them); config_name and model_id say which
    network made it (an avatar only animates with a network of the same config).
    """

    identity: torch.Tensor
    static_maps: torch.Tensor
    identity_features: torch.Tensor
    source_expression: torch.Tensor
    source_camera: Camera
    config_name: str
    model_id: str

    @property
    def device(self) -> torch.device:
        return self.static_maps.device

    def to(self, device) -> Avatar:
        return Avatar(
            self.identity.to(device),
            self.static_maps.to(device),
            self.identity_features.to(device),
            self.source_expression.to(device),
            self.source_camera.to(device),
            self.config_name,
            self.model_id,
        )

    def detach(self) -> Avatar:
        return replace(
            self,
            identity=self.identity.detach(),
            static_maps=self.static_maps.detach(),
            identity_features=self.identity_features.detach(),
        )

    def lerp(self, other: Avatar, t: float) -> Avatar:
        """Blend two avatars in latent/UV space (identity, static maps, F_id): t=0 self, t=1 other.

        The source camera and expression come from ``self``. Both must come from networks with
        the same config.
        """
        if (self.config_name, tuple(self.static_maps.shape), tuple(self.identity_features.shape)) != (
            other.config_name,
            tuple(other.static_maps.shape),
            tuple(other.identity_features.shape),
        ):
            raise ValueError("cannot blend avatars made with different model configs")
        other = other.to(self.device)
        return replace(
            self,
            identity=torch.lerp(self.identity, other.identity, t),
            static_maps=torch.lerp(self.static_maps, other.static_maps, t),
            identity_features=torch.lerp(self.identity_features, other.identity_features, t),
            model_id=self.model_id if self.model_id == other.model_id else f"{self.model_id}+{other.model_id}",
        )

    def contents(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """What a ``.avatar`` file holds: the tensors (:data:`TENSOR_NAMES`, float32 on the CPU) and
        the metadata (without its checksum)."""
        camera = self.source_camera
        tensors = {
            "identity": self.identity,
            "static_maps": self.static_maps,
            "identity_features": self.identity_features,
            "source_expression": self.source_expression,
            "source_viewmat": camera.viewmat,
            "source_K": camera.K,
        }
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config_name": self.config_name,
            "model_id": self.model_id,
            "source_size": json.dumps([camera.width, camera.height]),
        }
        return tensors, metadata

    def checksum(self) -> str:
        """SHA-256 of the avatar's content (:func:`content_checksum`): equal avatars, equal digests,
        also after a save and load."""
        return content_checksum(*self.contents())

    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.avatar`` (safetensors) file atomically; returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors, metadata = self.contents()
        metadata["sha256"] = content_checksum(tensors, metadata)
        tmp = path.with_name(path.name + ".tmp")
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def content_checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 (hex) of the named tensors (name, dtype, shape, bytes) and of every metadata field
    but ``sha256`` itself, in a fixed order: the same content always gives the same digest."""
    digest = hashlib.sha256()
    for name in TENSOR_NAMES:
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    for key in sorted(set(metadata) - {"sha256"}):
        digest.update(f"{key}={metadata[key]}\n".encode())
    return digest.hexdigest()


def _bad(path: Path, what: str) -> InvalidInputError:
    return InvalidInputError(
        f"{path.name} is not a valid FlexAvatar .avatar file: {what}. "
        "Use a file saved by FlexAvatar (Create avatar → download .avatar)."
    )


def load_avatar(path: str | os.PathLike, expected_shapes: dict[str, tuple[int, ...]] | None = None) -> Avatar:
    """Read and validate a ``.avatar`` file.

    expected_shapes: optional {name: shape} the loading network needs (from
    ``FlexAvatarModel.avatar_shapes()``); a mismatch is a clear error, not a crash later.
    Raises :class:`InvalidInputError` for anything that is not a well-formed avatar.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path.name}: file not found. Upload a .avatar file made by FlexAvatar.")
    size = path.stat().st_size
    if size == 0 or size > MAX_FILE_BYTES:
        raise _bad(path, f"its size is {size} bytes")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            keys = set(handle.keys())
            if metadata.get("format") != FORMAT:
                raise _bad(path, "it has no FlexAvatar metadata")
            version = metadata.get("format_version")
            if version not in READABLE_VERSIONS:
                raise _bad(path, f"format version {version!r} is not supported")
            needed = set(TENSOR_NAMES)
            if keys != needed:
                raise _bad(path, f"it holds tensors {sorted(keys)}, expected {sorted(needed)}")
            tensors = {k: handle.get_tensor(k) for k in needed}
    except InvalidInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise _bad(path, f"it could not be parsed ({type(exc).__name__})") from None
    if version != "1" and metadata.get("sha256") != content_checksum(tensors, metadata):
        raise InvalidInputError(
            f"{path.name} is damaged: its content does not match the checksum saved with it (the file "
            "was changed or only partly copied after FlexAvatar wrote it). Download or copy the .avatar "
            "file again, or create the avatar again from the photos."
        )

    shapes = {
        "identity": 1,
        "static_maps": 3,
        "identity_features": 3,
        "source_expression": 1,
        "source_viewmat": 2,
        "source_K": 2,
    }
    for name, ndim in shapes.items():
        tensor = tensors[name]
        if tensor.dtype != torch.float32 or tensor.ndim != ndim:
            raise _bad(path, f"'{name}' has dtype {tensor.dtype} and {tensor.ndim} dims")
        if not torch.isfinite(tensor).all():
            raise _bad(path, f"'{name}' holds non-finite values")
    if tensors["static_maps"].shape[0] != NUM_ATTRIBUTES or tensors["source_expression"].shape[0] != NUM_EXPRESSIONS:
        raise _bad(path, "its attribute maps or expression code have the wrong size")
    if tensors["source_viewmat"].shape != (4, 4) or tensors["source_K"].shape != (3, 3):
        raise _bad(path, "its source camera has the wrong shape")
    if expected_shapes:
        for name, shape in expected_shapes.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise _bad(
                    path,
                    f"'{name}' is {tuple(tensors[name].shape)} but this model needs {tuple(shape)} "
                    "(made with another model config?)",
                )
    try:
        width, height = (int(v) for v in json.loads(metadata.get("source_size", "")))
    except (ValueError, TypeError):
        raise _bad(path, "its source image size is missing") from None
    if not (0 < width <= 8192 and 0 < height <= 8192):
        raise _bad(path, "its source image size is out of range")
    camera = Camera(tensors["source_viewmat"], tensors["source_K"], width, height)
    return Avatar(
        identity=tensors["identity"],
        static_maps=tensors["static_maps"],
        identity_features=tensors["identity_features"],
        source_expression=tensors["source_expression"],
        source_camera=camera,
        config_name=str(metadata.get("config_name", ""))[:64],
        model_id=str(metadata.get("model_id", ""))[:128],
    )

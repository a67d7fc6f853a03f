"""A ``.avatar`` whose bytes were altered is rejected by its checksum; old (v1) files still load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flexavatar.camera import Camera
from flexavatar.errors import InvalidInputError
from flexavatar.head.blendshapes import NUM_EXPRESSIONS
from flexavatar.model import load_avatar
from flexavatar.model.avatar import Avatar
from flexavatar.model.field import NUM_ATTRIBUTES


@pytest.fixture
def avatar_path(tmp_path):
    gen = torch.Generator().manual_seed(0)
    K = torch.tensor([[300.0, 0, 128], [0, 300.0, 128], [0, 0, 1]])
    avatar = Avatar(
        identity=torch.randn(40, generator=gen),
        static_maps=torch.randn(NUM_ATTRIBUTES, 16, 16, generator=gen),
        identity_features=torch.randn(8, 16, 16, generator=gen),
        source_expression=torch.rand(NUM_EXPRESSIONS, generator=gen),
        source_camera=Camera(torch.eye(4), K, 256, 256),
        config_name="cpu-s",
        model_id="test",
    )
    return avatar.save(tmp_path / "me.avatar")


def _data_start(path) -> int:
    """Byte offset of the tensor data: 8-byte header length + JSON header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_intact_file_loads(avatar_path):
    loaded = load_avatar(avatar_path)
    assert loaded.identity.shape == (40,) and loaded.model_id == "test"


@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_one_changed_byte_is_rejected(avatar_path, where):
    data = bytearray(avatar_path.read_bytes())
    start = _data_start(avatar_path)
    index = start + int((len(data) - start - 1) * where)
    data[index] ^= 0x01  # a single bit: values stay finite, shapes stay right
    avatar_path.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="checksum") as info:
        load_avatar(avatar_path)
    assert "me.avatar" in str(info.value) and "again" in str(info.value)


def test_changed_metadata_is_rejected(avatar_path):
    with safe_open(str(avatar_path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    metadata["model_id"] = "someone-else"
    save_file(tensors, str(avatar_path), metadata=metadata)
    with pytest.raises(InvalidInputError, match="checksum"):
        load_avatar(avatar_path)
    del metadata["sha256"]  # a v2 file without its checksum is damaged too
    save_file(tensors, str(avatar_path), metadata=metadata)
    with pytest.raises(InvalidInputError, match="checksum"):
        load_avatar(avatar_path)


def test_version_1_file_without_checksum_still_loads(avatar_path):
    with safe_open(str(avatar_path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    metadata = {k: v for k, v in metadata.items() if k != "sha256"} | {"format_version": "1"}
    save_file(tensors, str(avatar_path), metadata=metadata)
    loaded = load_avatar(avatar_path)
    assert torch.equal(loaded.static_maps, tensors["static_maps"])
    assert json.loads(metadata["source_size"]) == [256, 256]

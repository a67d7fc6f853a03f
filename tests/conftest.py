"""Shared fixtures: real assets and media from ../shared, never the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ASSETS = SHARED / "assets"
MEDIA = SHARED / "media"

# Set before any test imports project code: tests never touch the network.
os.environ.setdefault("FLEXAVATAR_ASSETS", str(ASSETS))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not ASSETS.is_dir():
        pytest.fail(f"{ASSETS} is missing: tests need ../shared/assets beside the checkout")
    return ASSETS


@pytest.fixture(scope="session")
def shared_media() -> Path:
    if not MEDIA.is_dir():
        pytest.fail(f"{MEDIA} is missing: tests need ../shared/media beside the checkout")
    return MEDIA


@pytest.fixture(scope="session")
def head():
    from flexavatar.head import ICTHead

    return ICTHead.load()


@pytest.fixture(scope="session")
def atlas128(head):
    from flexavatar.head import UVAtlas

    return UVAtlas.for_head(head, 128)


@pytest.fixture(scope="session")
def untrained_model():
    """The cpu-s network with its initial (untrained) weights, seeded."""
    import torch

    from flexavatar.model import FlexAvatarModel

    torch.manual_seed(0)
    return FlexAvatarModel().eval()

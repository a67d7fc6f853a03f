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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see flexavatar/__init__.py
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


@pytest.fixture(scope="session")
def shipped_model():
    """The shipped cpu-s checkpoint (weights/), loaded once."""
    from flexavatar.pipeline import load_model

    return load_model()


# ------------------------------------------------------------------------------ app (Gradio Space)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def app_module(tmp_path_factory):
    """``app.py`` imported with its per-request outputs in a temp folder and 2 concurrent jobs
    (so concurrent requests really overlap in the tests; the Space default is 1)."""
    import importlib
    import sys

    os.environ["FLEXAVATAR_APP_TMP"] = str(tmp_path_factory.mktemp("app-outputs"))
    os.environ["FLEXAVATAR_CONCURRENCY"] = "2"
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("app")


@pytest.fixture(scope="session")
def app_url(app_module):
    """The app served on a free localhost port for the whole session; closed at the end."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app_module.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app_module.demo.close()

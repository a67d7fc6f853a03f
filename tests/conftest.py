"""Shared fixtures: real assets and media, never the network.

The project runs on what it ships (``weights/``: checkpoint, trimmed ICT head, MediaPipe
models), so the suite does not set ``$FLEXAVATAR_ASSETS``: a plain ``pytest`` tests the
shipped copies. ``../shared`` beside the checkout (as in CI) adds the full ICT head and the
test media; tests that need them skip, saying what is missing, when they are not there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ASSETS = SHARED / "assets"
MEDIA = SHARED / "media"

# Set before any test imports project code: tests never touch the network.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see flexavatar/__init__.py
os.environ["HF_HUB_OFFLINE"] = "1"
# Gradio caches uploads by content hash: a private cache per test run, so two runs on one machine
# (or an app another test starts) never delete each other's uploads mid-request.
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="flexavatar-tests-gradio-"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _shared_folder(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing ({what}); put the project's shared/ folder beside the checkout to run this")
    return folder


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    """../shared/assets: the full ICT-FaceKit conversion (100 identity modes) and its raw subset."""
    return _shared_folder(ASSETS, "the full ICT head and its raw files")


@pytest.fixture(scope="session")
def shared_media() -> Path:
    """../shared/media: real photos and clips of faces (test use only, not shipped)."""
    return _shared_folder(MEDIA, "real test photos and clips")


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


@pytest.fixture(scope="session")
def model(shipped_model):
    """The network most tests drive: the shipped checkpoint."""
    return shipped_model


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
    app_module.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                           **app_module.LAUNCH)  # fmt: skip
    yield f"http://127.0.0.1:{port}/"
    app_module.demo.close()

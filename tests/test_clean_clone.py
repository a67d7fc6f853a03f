"""A clone of the repository with nothing beside it (as a duplicated Space is) runs.

``git clone`` of HEAD into a temp folder (no ``../shared``), ``$FLEXAVATAR_ASSETS`` and the
other overrides unset, ``HF_HUB_OFFLINE=1``, a fresh cache folder: the README's run command
makes an avatar, a turntable and a reenactment from the shipped examples with the shipped
checkpoint, and ``python app.py`` serves on localhost. Uncommitted changes are not in the clone:
this tests what was committed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import av
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ("FLEXAVATAR_ASSETS", "FLEXAVATAR_REPO", "FLEXAVATAR_WEIGHTS", "FLEXAVATAR_MEDIA", "FLEXAVATAR_APP_TMP")
APP_START_TIMEOUT_S = 240


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if shutil.which("git") is None or subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("needs git and a git checkout of the repository")
    dest = tmp_path_factory.mktemp("solo") / "repo"
    _git("clone", "--quiet", "--no-checkout", str(REPO), str(dest))
    _git("checkout", "--quiet", _git("rev-parse", "HEAD").strip(), cwd=dest)
    assert not (dest.parent / "shared").exists()
    return dest


@pytest.fixture(scope="module")
def solo_env(tmp_path_factory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONDONTWRITEBYTECODE="1",
               FLEXAVATAR_CACHE=str(tmp_path_factory.mktemp("solo-cache")),
               GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("solo-gradio")))  # fmt: skip
    env.pop("PYTHONPATH", None)  # import the clone's package, not this checkout's
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_clone_runs_the_readme_command_and_serves_the_app(clone, solo_env, tmp_path):
    port = _free_port()
    app_log = open(tmp_path / "app.log", "w")  # noqa: SIM115 - closed below
    # The app starts while the CLI runs: both load the same shipped files, and it halves the wall time.
    app = subprocess.Popen([sys.executable, "app.py"], cwd=clone, stdout=app_log, stderr=subprocess.STDOUT,
                           env={**solo_env, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
                                "FLEXAVATAR_APP_TMP": str(tmp_path / "app-out")},
                           start_new_session=True)  # fmt: skip
    try:
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "flexavatar", "run", "examples/astronaut.png", "--driving", "examples/driving.mp4",
               "--out-dir", str(out), "--frames", "4", "--max-seconds", "1"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=clone, env=solo_env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "untrained" not in proc.stderr  # the shipped checkpoint was found
        assert str(clone) in _imported_from(clone, solo_env)
        for name in ("avatar.avatar", "avatar.ply"):
            assert (out / name).stat().st_size > 10_000
        assert _frames(out / "turntable.mp4") == 4
        with av.open(str(REPO / "examples" / "driving.mp4")) as container:
            fps = float(container.streams.video[0].average_rate)
        assert _frames(out / "reenactment.mp4") == pytest.approx(fps, abs=1)  # 1 s of driving

        deadline = time.monotonic() + APP_START_TIMEOUT_S
        page = None
        while page is None and time.monotonic() < deadline and app.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode("utf-8", "replace")
            except OSError:
                time.sleep(1)
        app_log.flush()
        assert page is not None, (tmp_path / "app.log").read_text()[-3000:]
        assert "FlexAvatar" in page
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGTERM)  # its own session: only the app and its children
            try:
                app.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(app.pid, signal.SIGKILL)
                app.wait()
        app_log.close()


def _imported_from(clone: Path, env: dict[str, str]) -> str:
    code = "import flexavatar.assets as a; print(a.SHIPPED_WEIGHTS)"
    return subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=60, check=True).stdout  # fmt: skip


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a GPU whose gsplat kernels do not build; "
                    "on a real GPU gsplat may build and this says nothing")  # fmt: skip
def test_app_serves_when_gsplat_kernels_do_not_build(app_url, monkeypatch, tmp_path):
    """A duplicated GPU Space where gsplat can neither JIT-compile (no nvcc/ninja) nor load a
    prebuilt wheel: requests still render, with the torch backend, and warn once. The real gsplat
    is called (CPU tensors routed down the CUDA path), so the failure is gsplat's own."""
    from gradio_client import Client, handle_file

    from flexavatar.render import rasterizer

    torch_calls = []
    torch_tiles = rasterizer.TILE_BACKENDS["torch"]

    def counting_composite(*args, **kwargs):
        torch_calls.append(1)
        return torch_tiles.composite(*args, **kwargs)

    monkeypatch.setattr(rasterizer, "_is_cuda", lambda tensor: True)
    monkeypatch.setattr(rasterizer, "_gsplat_unavailable_reason", None)
    monkeypatch.setitem(rasterizer.TILE_BACKENDS, "torch", dataclasses.replace(torch_tiles, composite=counting_composite))
    client = Client(app_url, verbose=False, download_files=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        avatar = client.predict(photos=[handle_file(str(REPO / "examples" / "astronaut.png"))],
                                refine_seconds=0, api_name="/create_avatar")[0]  # fmt: skip
        videos = [client.predict(avatar_file=handle_file(avatar), turntable_frames=8, resolution=256,
                                 api_name="/turntable") for _ in range(2)]  # fmt: skip
    assert [_frames(Path(v)) for v in videos] == [8, 8]
    assert rasterizer._gsplat_unavailable_reason is not None and torch_calls
    assert len([w for w in caught if "falling back to the pure-PyTorch" in str(w.message)]) == 1

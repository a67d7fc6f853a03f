"""Asset resolution: explicit folder > $FLEXAVATAR_ASSETS > Hub cache (offline, for real)."""

from __future__ import annotations

import time

import pytest

from flexavatar import assets


def test_explicit_folder_wins(tmp_path, monkeypatch, shared_assets):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("FLEXAVATAR_ASSETS", str(shared_assets))
    assert assets.resolve("config.json", tmp_path) == tmp_path / "config.json"
    # sub-folder layout of ../shared/assets
    assert assets.resolve("ict_facekit.npz", shared_assets) == shared_assets / "ict_facekit" / "ict_facekit.npz"


def test_env_folder(monkeypatch, shared_assets):
    monkeypatch.setenv("FLEXAVATAR_ASSETS", str(shared_assets))
    assert assets.resolve("face_landmarker.task") == shared_assets / "mediapipe" / "face_landmarker.task"


def _fake_hub_cache(cache, repo_id, filename, content):
    """The layout hf_hub_download reads: models--org--name/{refs/main, snapshots/<rev>/file}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(content)
    return snapshot / filename


def test_hub_cache_branch_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    expected = _fake_hub_cache(cache, "someone/flexavatar-test", "config.json", b'{"a": 1}')
    monkeypatch.delenv("FLEXAVATAR_ASSETS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("FLEXAVATAR_REPO", "someone/flexavatar-test")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    found = assets.resolve("config.json")
    assert found.read_bytes() == b'{"a": 1}'
    assert found.resolve() == expected.resolve()


def test_missing_everywhere_fails_fast_with_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXAVATAR_ASSETS", str(tmp_path / "env"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(assets.AssetNotFoundError) as info:
        assets.resolve("model.safetensors", tmp_path / "arg")
    assert time.perf_counter() - start < 5.0  # no retries
    message = str(info.value)
    assert "model.safetensors" in message
    assert str(tmp_path / "arg") in message and str(tmp_path / "env") in message
    assert "Hub repo" in message and "HF_HUB_OFFLINE" in message and "FLEXAVATAR_ASSETS" in message

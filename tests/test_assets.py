"""Asset resolution: explicit folder > $FLEXAVATAR_ASSETS > named Hub repo > shipped weights/;
the shipped copies match the reference ones; publish --dry-run; the cache folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flexavatar import assets
from flexavatar.errors import InvalidInputError
from flexavatar.head import ICTHead
from flexavatar.publish import OPTIONAL_FILES, REQUIRED_FILES, plan_publish

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "weights"
ASSET_NAMES = ["ict_facekit.npz", "face_landmarker.task", "selfie_segmentation.tflite", "canonical_face_mesh.npz"]


@pytest.fixture
def no_overrides(monkeypatch):
    """No $FLEXAVATAR_ASSETS / $FLEXAVATAR_REPO / $FLEXAVATAR_WEIGHTS: what a fresh clone sees."""
    for name in ("FLEXAVATAR_ASSETS", "FLEXAVATAR_REPO", "FLEXAVATAR_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)


def _offline_hub_cache(monkeypatch, cache: Path) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def test_shipped_copies_are_the_default(no_overrides):
    for name in ASSET_NAMES:
        path = assets.resolve(name)
        assert path.is_relative_to(SHIPPED), (name, path)
        assert (path.parent / "LICENSE").is_file()  # the licence travels with each asset
    assert assets.resolve_weights_dir() == SHIPPED


def test_explicit_folder_wins(tmp_path, monkeypatch, shared_assets):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("FLEXAVATAR_ASSETS", str(shared_assets))
    assert assets.resolve("config.json", tmp_path) == tmp_path / "config.json"
    # sub-folder layout of ../shared/assets
    assert assets.resolve("ict_facekit.npz", shared_assets) == shared_assets / "ict_facekit" / "ict_facekit.npz"


def test_env_folder_overrides_shipped(monkeypatch, shared_assets):
    monkeypatch.setenv("FLEXAVATAR_ASSETS", str(shared_assets))
    assert assets.resolve("face_landmarker.task") == shared_assets / "mediapipe" / "face_landmarker.task"
    # a file the env folder lacks still comes from the shipped copy
    assert assets.resolve("config.json") == SHIPPED / "config.json"
    assert ICTHead.load().num_identity == 100  # the full head


def test_shipped_head_is_the_reference_trimmed(shared_assets):
    """Trimmed to the identity modes the model fits, bit-identical where kept."""
    config = json.loads((SHIPPED / "config.json").read_text())
    with np.load(SHIPPED / "ict_facekit" / "ict_facekit.npz") as small, \
            np.load(shared_assets / "ict_facekit" / "ict_facekit.npz") as full:  # fmt: skip
        assert small["identity_deltas"].shape[0] == config["num_identity"] == 40
        assert np.array_equal(small["identity_deltas"], full["identity_deltas"][:40])
        for key in set(small.files) - {"identity_deltas", "source"}:
            assert np.array_equal(small[key], full[key]), key
    for name in ASSET_NAMES[1:]:
        sub = assets.SUBFOLDERS[name][0]
        assert (SHIPPED / sub / name).read_bytes() == (shared_assets / sub / name).read_bytes()
    assert (SHIPPED / "ict_facekit" / "LICENSE").read_bytes() == (shared_assets / "ict_facekit" / "LICENSE").read_bytes()
    head = ICTHead.load(SHIPPED / "ict_facekit")
    assert head.num_identity == 40
    with pytest.raises(ValueError, match="FLEXAVATAR_ASSETS"):
        ICTHead.load(SHIPPED / "ict_facekit", num_identity=41)


def _fake_hub_cache(cache, repo_id, filename, content):
    """The layout hf_hub_download reads: models--org--name/{refs/main, snapshots/<rev>/file}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    path = repo_dir / "snapshots" / revision / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_named_hub_repo_overrides_shipped(tmp_path, monkeypatch, no_overrides):
    cache = tmp_path / "hub"
    expected = _fake_hub_cache(cache, "someone/flexavatar-test", "config.json", b'{"a": 1}')
    # published layout keeps the sub-folders of weights/
    task = _fake_hub_cache(cache, "someone/flexavatar-test", "mediapipe/face_landmarker.task", b"task")
    _offline_hub_cache(monkeypatch, cache)
    monkeypatch.setenv("FLEXAVATAR_REPO", "someone/flexavatar-test")
    found = assets.resolve("config.json")
    assert found.read_bytes() == b'{"a": 1}' and found.resolve() == expected.resolve()
    assert assets.resolve("face_landmarker.task").resolve() == task.resolve()
    # not in that repo's cache: the shipped copy, with a warning that says so
    with pytest.warns(UserWarning, match="someone/flexavatar-test"):
        assert assets.resolve("selfie_segmentation.tflite") == SHIPPED / "mediapipe" / "selfie_segmentation.tflite"
    # without model.safetensors the repo is no checkpoint: the shipped one is used
    assert assets.resolve_weights_dir() == SHIPPED


def test_missing_everywhere_fails_fast_with_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXAVATAR_ASSETS", str(tmp_path / "env"))
    monkeypatch.setenv("FLEXAVATAR_REPO", "someone/not-published")
    monkeypatch.setattr(assets, "SHIPPED_WEIGHTS", tmp_path / "shipped")
    _offline_hub_cache(monkeypatch, tmp_path / "empty-cache")
    start = time.perf_counter()
    with pytest.raises(assets.AssetNotFoundError) as info:
        assets.resolve("model.safetensors", tmp_path / "arg")
    assert time.perf_counter() - start < 5.0  # no retries
    message = str(info.value)
    assert "model.safetensors" in message
    for place in (tmp_path / "arg", tmp_path / "env", tmp_path / "shipped"):
        assert str(place) in message
    assert "someone/not-published" in message and "HF_HUB_OFFLINE" in message
    # only fixes that exist: the shipped copy, the env override, a repo made by `publish`
    assert "git checkout -- weights/" in message and "FLEXAVATAR_ASSETS" in message
    assert "python -m flexavatar publish" in message


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXAVATAR_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_publish_dry_run_lists_every_shipped_file():
    proc = subprocess.run(
        [sys.executable, "-m", "flexavatar", "publish", "someone/flexavatar-test", "--dry-run"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = [line.split("MB", 1)[1].strip() for line in proc.stdout.splitlines() if "MB " in line]
    shipped = list(REQUIRED_FILES) + [name for name in OPTIONAL_FILES if (SHIPPED / name).is_file()]
    assert listed[:-1] == shipped
    assert "-> someone/flexavatar-test" in listed[-1] and "nothing uploaded" in proc.stdout
    total_mb = float(proc.stdout.splitlines()[-2].split()[0])
    assert total_mb == pytest.approx(sum((SHIPPED / f).stat().st_size for f in shipped) / 1e6, abs=0.01)


def test_publish_refuses_incomplete_folder_and_bad_repo_id(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="model.safetensors") as info:
        plan_publish("someone/x", tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(InvalidInputError, match="user-or-org/name"):
        plan_publish("no-slash")


def test_cli_without_any_copy_prints_the_message_not_a_traceback(tmp_path, no_overrides):
    code = ("import sys, pathlib, flexavatar.assets as a; a.SHIPPED_WEIGHTS = pathlib.Path(sys.argv[1]); "
            "from flexavatar.__main__ import main; sys.exit(main(sys.argv[2:]))")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "no-weights"), "create", str(REPO / "examples" / "astronaut.png"),
         "--out", str(tmp_path / "me.avatar")],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: Could not find" in proc.stderr and "Traceback" not in proc.stderr
    assert "git checkout -- weights/" in proc.stderr

"""Find weights, assets and the cache folder.

Everything the app and the CLI need at run time ships in this repository under ``weights/``
(the folder that ``python -m flexavatar publish`` uploads to a Hub model repo):
``config.json``, ``model.safetensors``, ``ict_facekit/ict_facekit.npz`` (trimmed to the
identity modes the model fits), ``mediapipe/face_landmarker.task``,
``mediapipe/selfie_segmentation.tflite`` and ``mediapipe/canonical_face_mesh.npz``, each with
its licence. Lookup order for one file (:func:`resolve`):

1. an explicit folder (argument);
2. ``$FLEXAVATAR_ASSETS`` (a local folder, e.g. ``../shared/assets`` with the full ICT head);
3. a Hub model repo, only when one is named (``repo_id`` argument or ``$FLEXAVATAR_REPO``);
   it reads the local Hub cache only when ``HF_HUB_OFFLINE=1``;
4. the copy shipped in ``weights/``.

A local folder may hold a file flat or in its ``ict_facekit/`` / ``mediapipe/`` sub-folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

#: The Hub repo name the model card and ``publish`` suggest; never looked up unless named.
SUGGESTED_REPO = "flexavatar/flexavatar-cpu-s"

#: Where a file may sit inside a local assets folder, besides the folder itself.
SUBFOLDERS = {
    "ict_facekit.npz": ["ict_facekit"],
    "face_landmarker.task": ["mediapipe"],
    "selfie_segmentation.tflite": ["mediapipe"],
    "canonical_face_mesh.npz": ["mediapipe"],
}

#: The folder shipped inside this repository: trained ``cpu-s`` checkpoint + run-time assets.
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


class AssetNotFoundError(FileNotFoundError):
    """A named asset was found nowhere; the message lists every place looked."""


def _candidates(folder: Path, name: str) -> list[Path]:
    return [folder / name] + [folder / sub / name for sub in SUBFOLDERS.get(name, [])]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


def named_repo(repo_id: str | None = None) -> str | None:
    """The Hub repo to use as an override: ``repo_id`` or ``$FLEXAVATAR_REPO``, else None."""
    return repo_id or os.environ.get("FLEXAVATAR_REPO") or None


def resolve(name: str, folder: str | os.PathLike | None = None, repo_id: str | None = None) -> Path:
    """Return the local path of asset ``name`` (order: see the module docstring).

    Raises :class:`AssetNotFoundError` naming every place looked and how to fix it. A named
    Hub repo that fails falls back to the shipped copy with a warning.
    """
    looked: list[str] = []
    local_folders: list[tuple[str, Path]] = []
    if folder is not None:
        local_folders.append(("folder argument", Path(folder)))
    env_folder = os.environ.get("FLEXAVATAR_ASSETS")
    if env_folder:
        local_folders.append(("$FLEXAVATAR_ASSETS", Path(env_folder)))
    for label, base in local_folders:
        for path in _candidates(base, name):
            if path.is_file():
                return path
            looked.append(f"{path} ({label})")

    repo = named_repo(repo_id)
    if repo:
        found = _from_hub(repo, name)
        if isinstance(found, Path):
            return found
        looked.append(f"Hub repo '{repo}' ({found})")

    for path in _candidates(SHIPPED_WEIGHTS, name):
        if path.is_file():
            if repo:
                warnings.warn(
                    f"'{name}' not taken from Hub repo '{repo}' ({found}); using {path}", stacklevel=2
                )
            return path
        looked.append(f"{path} (shipped with the repository)")
    raise AssetNotFoundError(
        f"Could not find '{name}'. Looked in:\n  - "
        + "\n  - ".join(looked)
        + "\nFix: restore the shipped copy (`git checkout -- weights/`, or clone the repository again), "
        "or set FLEXAVATAR_ASSETS to a folder that holds it, or set FLEXAVATAR_REPO to a Hub model repo "
        "made with `python -m flexavatar publish` (online, or already in the local Hub cache)."
    )


def _from_hub(repo_id: str, name: str) -> Path | str:
    """Path from the Hub (or its local cache), or a short reason it failed."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub is a hard requirement
        return "huggingface_hub is not installed"
    # A repo folder keeps the sub-folder layout of weights/ (that is what publish uploads).
    for filename in [name] + [f"{sub}/{name}" for sub in SUBFOLDERS.get(name, [])]:
        try:
            # local_files_only when offline: read the cache, never wait on retries.
            return Path(hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=hub_offline()))
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
            reason = type(exc).__name__
    if hub_offline():
        reason = "HF_HUB_OFFLINE=1 and not in the local Hub cache"
    return reason


def resolve_weights_dir(folder: str | os.PathLike | None = None, repo_id: str | None = None) -> Path:
    """Folder holding ``config.json`` + ``model.safetensors`` for the network.

    Order: ``folder`` > ``$FLEXAVATAR_WEIGHTS`` > a named Hub repo (``repo_id`` or
    ``$FLEXAVATAR_REPO``) > the checkpoint shipped under ``weights/``.
    """
    for candidate in (folder, os.environ.get("FLEXAVATAR_WEIGHTS")):
        if candidate and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    repo = named_repo(repo_id)
    if repo and isinstance(config := _from_hub(repo, "config.json"), Path):
        if isinstance(_from_hub(repo, "model.safetensors"), Path):
            return config.parent
    if (SHIPPED_WEIGHTS / "config.json").is_file():
        return SHIPPED_WEIGHTS
    return resolve("config.json", folder, repo_id=repo_id).parent


def cache_dir() -> Path:
    """Folder for derived data (correspondences, training fits, texture banks), created.

    ``$FLEXAVATAR_CACHE`` or ``~/.cache/flexavatar``; deleting it only costs recomputation.
    """
    folder = Path(os.environ.get("FLEXAVATAR_CACHE") or Path.home() / ".cache" / "flexavatar")
    folder.mkdir(parents=True, exist_ok=True)
    return folder

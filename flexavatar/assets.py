"""Find weights and assets: explicit folder > ``$FLEXAVATAR_ASSETS`` > the Hub model repo.

The Hub repo (``$FLEXAVATAR_REPO``, default :data:`DEFAULT_REPO`) holds ``config.json``,
``model.safetensors``, ``ict_facekit.npz``, ``face_landmarker.task`` and
``selfie_segmentation.tflite``. A local folder may hold them flat or in the sub-folders that
``../shared/assets`` uses (``ict_facekit/``, ``mediapipe/``). With ``HF_HUB_OFFLINE=1`` the
Hub branch reads only the local Hub cache and fails at once when the file is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_REPO = "flexavatar/flexavatar-cpu-s"

#: Where a file may sit inside a local assets folder, besides the folder itself.
SUBFOLDERS = {
    "ict_facekit.npz": ["ict_facekit"],
    "face_landmarker.task": ["mediapipe"],
    "selfie_segmentation.tflite": ["mediapipe"],
    "canonical_face_mesh.npz": ["mediapipe"],
}

#: The weights shipped inside this repository (a trained ``cpu-s`` checkpoint), if present.
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


class AssetNotFoundError(FileNotFoundError):
    """A named asset was found nowhere; the message lists every place looked."""


def _candidates(folder: Path, name: str) -> list[Path]:
    return [folder / name] + [folder / sub / name for sub in SUBFOLDERS.get(name, [])]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


def resolve(name: str, folder: str | os.PathLike | None = None, repo_id: str | None = None) -> Path:
    """Return the local path of asset ``name``.

    Order: ``folder`` (explicit argument) > ``$FLEXAVATAR_ASSETS`` > Hub repo ``repo_id`` or
    ``$FLEXAVATAR_REPO`` or :data:`DEFAULT_REPO` (through ``huggingface_hub``, which honours
    ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``). Raises :class:`AssetNotFoundError` naming every
    place looked and how to fix it.
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

    repo = repo_id or os.environ.get("FLEXAVATAR_REPO") or DEFAULT_REPO
    hub_error = _from_hub(repo, name)
    if isinstance(hub_error, Path):
        return hub_error
    looked.append(f"Hub repo '{repo}' ({hub_error})")
    raise AssetNotFoundError(
        f"Could not find '{name}'. Looked in:\n  - "
        + "\n  - ".join(looked)
        + "\nFix: set FLEXAVATAR_ASSETS to a folder that holds it (for a checkout: ../shared/assets), "
        "pass the folder explicitly, or go online (unset HF_HUB_OFFLINE) so it downloads from "
        f"the Hub repo '{repo}' (or set FLEXAVATAR_REPO to another repo)."
    )


def _from_hub(repo_id: str, name: str) -> Path | str:
    """Path from the Hub (or its local cache), or a short reason it failed."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub is a hard requirement
        return "huggingface_hub is not installed"
    try:
        # local_files_only when offline: read the cache, never wait on retries.
        return Path(hf_hub_download(repo_id=repo_id, filename=name, local_files_only=hub_offline()))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        reason = type(exc).__name__
        if hub_offline():
            reason = "HF_HUB_OFFLINE=1 and not in the local Hub cache"
        return reason


def resolve_weights_dir(folder: str | os.PathLike | None = None, repo_id: str | None = None) -> Path:
    """Folder holding ``config.json`` + ``model.safetensors`` for the network.

    Order: ``folder`` > ``$FLEXAVATAR_WEIGHTS`` > the checkpoint shipped under ``weights/``
    > the Hub repo (as :func:`resolve`).
    """
    for candidate in (folder, os.environ.get("FLEXAVATAR_WEIGHTS"), SHIPPED_WEIGHTS):
        if candidate and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    return resolve("config.json", repo_id=repo_id).parent

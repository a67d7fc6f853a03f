"""Publish the shipped folder (checkpoint, model card, run-time assets) to a Hub model repo.

``python -m flexavatar publish REPO_ID [--folder weights] [--dry-run]`` uploads the files
:func:`flexavatar.assets.resolve` looks for, in the same sub-folder layout, so that
``FLEXAVATAR_REPO=REPO_ID`` then serves them from the Hub. ``--dry-run`` lists them and
touches no network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import create_repo, upload_folder

from flexavatar.assets import SHIPPED_WEIGHTS, SUBFOLDERS
from flexavatar.errors import InvalidInputError

#: Files a published folder must hold, relative to it: weights, config, model card, assets and
#: the licence notices that must travel with the assets.
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "README.md",
    *(f"{SUBFOLDERS[name][0]}/{name}" for name in SUBFOLDERS),
    "ict_facekit/LICENSE",
    "mediapipe/LICENSE",
    "mediapipe/NOTICE",
)
#: Uploaded when present: the expression calibration measured for this network (flexavatar.motion).
OPTIONAL_FILES = ("motion_calibration.json",)


@dataclass
class PublishPlan:
    """What :func:`publish` uploads: ``files`` relative to ``folder``, ``sizes`` in bytes."""

    repo_id: str
    folder: Path
    files: list[str]
    sizes: list[int]

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def describe(self) -> str:
        """One line per file (size in MB), then the total."""
        lines = [f"{size / 1e6:9.2f} MB  {name}" for name, size in zip(self.files, self.sizes, strict=True)]
        lines.append(f"{self.total_bytes / 1e6:9.2f} MB  total, {len(self.files)} files -> {self.repo_id}")
        return "\n".join(lines)


def plan_publish(repo_id: str, folder: str | os.PathLike | None = None) -> PublishPlan:
    """Check ``folder`` (default: the shipped ``weights/``) holds every required file; the plan
    lists those and the optional ones present.

    Raises :class:`InvalidInputError` naming the missing files and the folder.
    """
    if not repo_id or repo_id.count("/") != 1 or any(not part for part in repo_id.split("/")):
        raise InvalidInputError(f"'{repo_id}' is not a Hub repo id; write it as 'user-or-org/name'.")
    folder = Path(folder) if folder is not None else SHIPPED_WEIGHTS
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise InvalidInputError(
            f"{folder} lacks {', '.join(missing)}; publish a folder laid out like the shipped "
            f"weights/ (copy the missing files from {SHIPPED_WEIGHTS})."
        )
    files = list(REQUIRED_FILES) + [name for name in OPTIONAL_FILES if (folder / name).is_file()]
    return PublishPlan(repo_id, folder, files, [(folder / name).stat().st_size for name in files])


def publish(plan: PublishPlan, private: bool = False) -> str:
    """Create the model repo if needed and upload the plan's files in one commit; its URL."""
    create_repo(plan.repo_id, repo_type="model", private=private, exist_ok=True)
    info = upload_folder(
        repo_id=plan.repo_id,
        repo_type="model",
        folder_path=str(plan.folder),
        allow_patterns=plan.files,
        commit_message="FlexAvatar weights, model card and run-time assets",
    )
    return str(info.commit_url)

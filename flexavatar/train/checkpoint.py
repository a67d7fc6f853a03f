"""Training checkpoints and the model card.

A run's output folder holds ``config.json`` + ``model.safetensors`` (Hub layout, final weights)
and ``README.md`` (the model card, :func:`write_model_card`); ``checkpoint/`` holds the same
layout plus ``optimizer.pt`` and ``trainer_state.json`` (:func:`save_checkpoint`), from which
``--resume`` continues (:func:`load_trainer_state`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_checkpoint(model, optimizer, folder: Path, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    torch.save(optimizer.state_dict(), folder / "optimizer.pt.tmp")
    (folder / "optimizer.pt.tmp").replace(folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2))


def load_trainer_state(folder: Path) -> dict | None:
    path = folder / "trainer_state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_model_card(folder: Path, state: dict) -> None:
    """README.md with YAML front matter: what the weights are and how they were made."""
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    size_mb = (
        (folder / "model.safetensors").stat().st_size / 1e6 if (folder / "model.safetensors").is_file() else 0
    )
    lines = [
        "---",
        "license: mit",
        "library_name: pytorch",
        "tags: [flexavatar, gaussian-splatting, avatar, 3d-head]",
        "---",
        f"# FlexAvatar `{config.get('name', '?')}` checkpoint",
        "",
        "Feed-forward network that turns 1-4 unposed portrait crops into an animatable 3D Gaussian head "
        "(ICT-FaceKit head model, UV-atlas Gaussians, UNet deformer with bias sinks). Load with "
        "`FlexAvatarModel.from_pretrained(folder)`; the ICT head and MediaPipe assets come separately "
        "(see `flexavatar.assets`).",
        "",
        "## Training",
        "",
        f"- steps: {state.get('step')}, wall clock: {state.get('elapsed_total_s', 0) / 60:.1f} min, "
        f"device: {state.get('device')}, processes: {state.get('num_processes')}, batch/process: {state.get('batch')}",
        f"- data: synthetic multi-view ICT heads with textures lifted from real photos and random hair "
        f"volumes textured from their hair (class 0) and "
        f"tracked pairs of frames {state.get('train_frames')} of `{state.get('video')}` (class 1, fraction "
        f"{state.get('mono_fraction')}), density-adjusted expression sampling; frames "
        f"{state.get('eval_frames')} are held out for evaluation",
        f"- loss: L1 + 0.2·(1−SSIM) over the whole image (synthetic) or the whole head, hair included "
        f"and clothes left out (real frames), mouth ×3, small offset/scale regularisers; "
        f"last-100-step mean {state.get('recent_loss')}",
        f"- command: `{state.get('command')}`",
        f"- weights: {size_mb:.1f} MB",
        "",
        "Evaluate with `python -m flexavatar eval --weights <this folder>` (self-reenactment on held-out frames).",
    ]
    (folder / "README.md").write_text("\n".join(lines) + "\n")

"""The Space's Live, Expressions and Blend tabs, without gradio: avatar choice, one live
session per viewer, slider stills, blends.

``app_live.py`` lays the tabs out and wraps these functions (InvalidInputError -> ``gr.Error``).
Every function takes plain values as the widgets send them (file paths, numbers, uint8 frames).
An empty avatar slot means the example avatar (made once from the example photo), so a
visitor can try the live tab before making their own.
"""

from __future__ import annotations

import functools
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexavatar import pipeline
from flexavatar.errors import InvalidInputError
from flexavatar.live import LiveSession
from flexavatar.model import Avatar, FlexAvatarModel
from flexavatar.model.network import DeformCache
from flexavatar.options import ON_GPU
from flexavatar.space import file_path, require_avatar_file

#: Seconds one viewer may stream before the session ends (Gradio's ``time_limit``); a shared
#: 2-core Space serves one live viewer at a time, so nobody holds it for long.
LIVE_SECONDS = float(os.environ.get("FLEXAVATAR_LIVE_SECONDS", "90"))
#: Live viewers served at once; the others wait in the queue (2 CPU cores render one stream).
LIVE_SESSIONS = int(os.environ.get("FLEXAVATAR_LIVE_SESSIONS", "4" if ON_GPU else "1"))
#: The browser sends a camera frame this often (s); frames the server cannot take are dropped.
STREAM_EVERY_S = 0.05
LIVE_RESOLUTION = 256


# ------------------------------------------------------------------------------------ avatars
@functools.lru_cache(maxsize=2)
def example_avatar(model: FlexAvatarModel, photo: str) -> Avatar:
    """The avatar of the example photo, made once per process."""
    return pipeline.create_avatar([photo], model=model)


@functools.lru_cache(maxsize=16)
def _read_avatar(model: FlexAvatarModel, path: str, modified_ns: int) -> Avatar:
    del modified_ns  # part of the cache key: a file replaced under the same name is read again
    return pipeline.read_avatar(path, model=model)


def avatar_or_example(model: FlexAvatarModel, avatar_file, example_photo) -> tuple[Avatar, str]:
    """(avatar, key): the uploaded .avatar file (cached while unchanged) or the example's."""
    path = file_path(avatar_file)
    if not path:
        return example_avatar(model, str(example_photo)), "example"
    if not Path(path).is_file():
        raise InvalidInputError(f"{Path(path).name}: file not found. Upload the .avatar file again.")
    return _read_avatar(model, path, Path(path).stat().st_mtime_ns), path


#: (model, avatar, its DeformCache) by id(model), id(avatar): the avatars come from the caches
#: above (one object per file until it changes), so each is prepared once; the last few are kept.
_DEFORM_CACHES: OrderedDict[tuple[int, int], tuple[FlexAvatarModel, Avatar, DeformCache]] = OrderedDict()


def deform_cache(model: FlexAvatarModel, avatar: Avatar) -> DeformCache:
    """``model.prepare_deform(avatar)``, made once per avatar object (the slider stills reuse it)."""
    key = (id(model), id(avatar))
    entry = _DEFORM_CACHES.get(key)
    if entry is None or entry[0] is not model or entry[1] is not avatar:  # an id reused by a new object
        entry = _DEFORM_CACHES[key] = (model, avatar, model.prepare_deform(avatar))
        while len(_DEFORM_CACHES) > 4:
            _DEFORM_CACHES.popitem(last=False)
    return entry[2]


# --------------------------------------------------------------------------------------- live
@dataclass
class LiveState:
    """One viewer's live session and the avatar it drives (``key``: its file, or "example")."""

    session: LiveSession
    key: str
    deadline: float  # time.monotonic() when the session's time is up


def live_frame(model: FlexAvatarModel, frame, avatar_file, state: LiveState | None, example_photo,
               seconds: float = LIVE_SECONDS) -> tuple[np.ndarray | None, str, LiveState]:  # fmt: skip
    """One camera frame -> (avatar frame or None when dropped, stats Markdown, state).

    A new session starts with the first frame, when the avatar changes, or after the previous
    one ran out of time (``seconds``).
    """
    avatar, key = avatar_or_example(model, avatar_file, example_photo)
    if state is None or state.key != key or time.monotonic() > state.deadline:
        close_live(state)
        session = LiveSession(avatar, model=model, resolution=LIVE_RESOLUTION)
        state = LiveState(session, key, time.monotonic() + seconds)
    if frame is None:
        return None, live_stats(state), state
    result = state.session.process(frame)
    return (None if result is None else result.image), live_stats(state), state


def live_stats(state: LiveState) -> str:
    """The viewer's figures: frame rate, processing time per frame, frames shown, time left."""
    stats = state.session.stats()
    device = "GPU" if state.session.model.device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    left = max(0.0, state.deadline - time.monotonic())
    return (f"**{stats['fps']:.1f} frames/s** on {device} · tracking + rendering {stats['latency_ms']:.0f} ms per "
            f"frame · {stats['frames']} frames shown · {left:.0f} s left")  # fmt: skip


def reset_neutral(state: LiveState | None) -> None:
    """The viewer's next frame becomes the neutral face (no-op before the stream starts)."""
    if state is not None:
        state.session.reset_neutral()


def close_live(state: LiveState | None) -> None:
    """Free a viewer's session (its MediaPipe graph); called when the tab closes, too."""
    if state is not None:
        state.session.close()


# ---------------------------------------------------------------------------- stills, blends
def still(model: FlexAvatarModel, avatar_file, controls: dict[str, float], yaw_deg: float, pitch_deg: float,
          example_photo) -> np.ndarray:  # fmt: skip
    """The avatar (or the example) with expression sliders and head yaw/pitch: [S,S,3] uint8."""
    avatar, _ = avatar_or_example(model, avatar_file, example_photo)
    return pipeline.render_still(avatar, controls, yaw_deg=yaw_deg, pitch_deg=pitch_deg, model=model,
                                 deform_cache=deform_cache(model, avatar))  # fmt: skip


def blend(model: FlexAvatarModel, first_file, second_file, weight: float, example_photo) -> Avatar:
    """The blend of the first avatar (or the example) and the second (required)."""
    first, _ = avatar_or_example(model, first_file, example_photo)
    second, _ = avatar_or_example(model, require_avatar_file(second_file), example_photo)
    return pipeline.blend_avatars(first, second, weight)

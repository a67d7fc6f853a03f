"""The Space's play tabs: Live (your webcam drives the avatar), Expressions & pose (sliders,
a still you can download), Blend (two avatars, one slider). Layout and thin handlers over
:mod:`flexavatar.space_live`; ``app.py`` places them with :func:`build_play_tabs`.

Named API endpoints: ``/live`` (streaming: one camera frame in, one avatar frame out),
``/render_still``, ``/blend_still``, ``/blend_turntable``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr

from flexavatar import pipeline, space, space_live
from flexavatar.live import LIVE_SMOOTHING
from flexavatar.model import FlexAvatarModel
from flexavatar.options import RequestOptions

PRIVATE = dict(api_visibility="private", queue=False)
CONTROL_LABELS = {"jaw_open": "Jaw open", "smile": "Smile", "blink": "Blink", "brows_up": "Brows up",
                  "frown": "Frown", "pucker": "Pucker", "eyes_wide": "Eyes wide"}  # fmt: skip
HELP = f"""
## Play with an avatar
Leave the avatar slot empty to use the example (the astronaut), or upload a `.avatar` file (the one you
just made is filled in). **Live**: click the camera's record button and move — your avatar follows your
head and face (smoothing {LIVE_SMOOTHING:g}); *Reset neutral* takes your current face as the rest pose.
A live session lasts {space_live.LIVE_SECONDS:.0f} s; frames the server cannot keep up with are dropped.
"""


def build_play_tabs(model: FlexAvatarModel, made_avatar: gr.File, example_photo: Path, user_errors: Callable) -> None:
    """Add the play tabs to the Blocks being built; ``made_avatar`` (the main flow's .avatar
    output) fills their avatar slot."""

    @user_errors("driving the avatar live")
    def live(frame, avatar_file, state):
        image, stats, state = space_live.live_frame(model, frame, avatar_file, state, example_photo)
        return (gr.skip() if image is None else image), stats, state

    @user_errors("rendering the still")
    def render_still(avatar_file, jaw_open: float = 0, smile: float = 0, blink: float = 0, brows_up: float = 0,
                     frown: float = 0, pucker: float = 0, eyes_wide: float = 0, yaw_deg: float = 0,
                     pitch_deg: float = 0, gaze_left: float = 0, gaze_up: float = 0):  # fmt: skip
        """.avatar file (empty: the example) + expression sliders in [0,1] + head yaw/pitch in degrees
        + gaze in [-1,1] (new parameters go last: positional gradio_client calls keep working) -> PNG."""
        controls = dict(jaw_open=jaw_open, smile=smile, blink=blink, brows_up=brows_up, frown=frown, pucker=pucker,
                        eyes_wide=eyes_wide, gaze_left=gaze_left, gaze_up=gaze_up)  # fmt: skip
        return space_live.still(model, avatar_file, controls, yaw_deg, pitch_deg, example_photo)

    @user_errors("blending the avatars")
    def blend_still(first_avatar, second_avatar, weight: float = 0.5):
        """Two .avatar files (first empty: the example) + weight (0 = first, 1 = second) -> PNG still."""
        avatar = space_live.blend(model, first_avatar, second_avatar, weight, example_photo)
        return pipeline.render_still(avatar, model=model)

    @user_errors("blending the avatars")
    def blend_turntable(first_avatar, second_avatar, weight: float = 0.5, turntable_frames: int = 24):
        """Two .avatar files + weight -> 360° turntable mp4 of the blend."""
        avatar = space_live.blend(model, first_avatar, second_avatar, weight, example_photo)
        options = RequestOptions.from_values(turntable_frames=turntable_frames)
        with space.request_dir() as out:
            return str(pipeline.turntable(avatar, out_path=out / "blend.mp4", model=model, **options.step_kwargs("turntable")))

    gr.Markdown(HELP)
    avatar = gr.File(label="Avatar (.avatar; empty = the example)", file_types=[".avatar"], height=120,
                     elem_id="play-avatar")
    made_avatar.change(lambda path: path, made_avatar, avatar, **PRIVATE)
    with gr.Tabs():
        with gr.Tab("Live", elem_id="live-tab"):
            with gr.Row():
                camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Your camera", height=320,
                                  elem_id="live-camera")  # fmt: skip
                shown = gr.Image(label="Your avatar", format="jpeg", interactive=False, height=320, elem_id="live-avatar")
            with gr.Row():
                reset = gr.Button("Reset neutral", elem_id="live-reset")
                stats = gr.Markdown(elem_id="live-stats")
            state = gr.State(None, time_to_live=space_live.LIVE_SECONDS + 60, delete_callback=space_live.close_live)
            camera.stream(live, [camera, avatar, state], [shown, stats, state], api_name="live",
                          stream_every=space_live.STREAM_EVERY_S, time_limit=space_live.LIVE_SECONDS,
                          concurrency_limit=space_live.LIVE_SESSIONS, concurrency_id="live",
                          show_progress="hidden")  # fmt: skip
            reset.click(space_live.reset_neutral, state, None, **PRIVATE)
        with gr.Tab("Expressions & pose", elem_id="controls-tab"):
            with gr.Row():
                with gr.Column():
                    sliders = [gr.Slider(0, 1, 0, step=0.05, label=CONTROL_LABELS[name]) for name in pipeline.EXPRESSION_CONTROLS]
                    yaw = gr.Slider(-60, 60, 0, step=1, label="Head yaw (°, + = to its left)")
                    pitch = gr.Slider(-40, 40, 0, step=1, label="Head pitch (°, + = chin up)")
                    gaze = [gr.Slider(-1, 1, 0, step=0.05, label="Gaze (+ = to its left, − = to its right)"),
                            gr.Slider(-1, 1, 0, step=0.05, label="Gaze (+ = up, − = down)")]  # fmt: skip
                still_out = gr.Image(label="Still (download with the ⬇ button)", format="png", interactive=False,
                                     elem_id="still")  # fmt: skip
            # one light render per change: no queue round trip, so the still follows the sliders at once
            gr.on([s.change for s in (*sliders, yaw, pitch, *gaze, avatar)], render_still, [avatar, *sliders, yaw, pitch, *gaze],
                  still_out, api_name="render_still", trigger_mode="always_last", show_progress="minimal",
                  queue=False)  # fmt: skip
        with gr.Tab("Blend two avatars", elem_id="blend-tab"):
            second = gr.File(label="Second avatar (.avatar)", file_types=[".avatar"], elem_id="blend-second")
            with gr.Row():
                weight = gr.Slider(0, 1, 0.5, step=0.05, label="Blend (0 = first avatar, 1 = second)")
                spin_frames = gr.Slider(8, 96, 24, step=8, label="Turntable frames")
            with gr.Row():
                still_btn, spin_btn = gr.Button("Still", elem_id="blend-still-btn"), gr.Button("Turntable")
            with gr.Row():
                blend_out = gr.Image(label="Blend", format="png", interactive=False, elem_id="blend-still")
                spin_out = gr.Video(label="Blend turntable", autoplay=True, loop=True, interactive=False)
            still_btn.click(blend_still, [avatar, second, weight], blend_out, api_name="blend_still",
                            concurrency_id="still")  # fmt: skip
            spin_btn.click(blend_turntable, [avatar, second, weight, spin_frames], spin_out, api_name="blend_turntable",
                           concurrency_id="gpu")  # fmt: skip

"""Motion benchmark: ``python -m flexavatar bench motion [--media DIR] [--photo P] [--clip C]``.

What driving an avatar costs on top of tracking the clip and rendering it, per step of
:func:`flexavatar.pipeline.reenact`: fitting the motion calibration to the avatar (renders, once
per avatar; then cached), the expression mapping (the calibration inverted, per frame: the
issue's "< 1 ms/frame"), the closed-loop correction (renders, once per clip) and the cameras
(per frame). Medians over ``--repeats`` runs where a step is cheap enough to repeat.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from flexavatar import closed_loop, pipeline
from flexavatar.closed_loop import avatar_calibration, closed_loop_expressions, driver_targets
from flexavatar.eval.bench import median_ms
from flexavatar.framing import driving_cameras, face_landmark_points
from flexavatar.motion import driving_expressions
from flexavatar.rest import rest_expression
from flexavatar.tracking import track_video
from flexavatar.train import media_dir
from flexavatar.video import probe_video


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flexavatar bench motion", description=__doc__)
    parser.add_argument("--media", type=Path, default=None, help="folder with the test media (default: ../shared/media)")
    parser.add_argument("--photo", default="astronaut.png", help="the avatar's photo (in --media, or a path)")
    parser.add_argument("--clip", default="single_face.mp4", help="the driving clip (in --media, or a path)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv or [])
    media = args.media or media_dir()
    photo, clip = (p if Path(p).exists() else media / p for p in (args.photo, args.clip))
    model = pipeline.load_model()
    avatar = pipeline.create_avatar([photo], model=model)
    info = probe_video(clip)  # probed once; tracking takes the VideoInfo
    track = track_video(info, max_frames=int(10 * info.fps))
    frames = track.frame_count
    print(f"{Path(photo).name} driven by {Path(clip).name}: {frames} frames (10 s at most)")

    closed_loop._FITTED.clear()  # the first fit of this avatar, as a reenactment of a new one pays it
    start = time.perf_counter()
    calibration = avatar_calibration(model, avatar)
    fit_s = time.perf_counter() - start
    cached_ms = median_ms(lambda: avatar_calibration(model, avatar), args.repeats)
    print(f"calibration fitted to the avatar (rest lifts, response spans, head turns; renders): {fit_s:.2f} s once, "
          f"{cached_ms:.1f} ms when cached")  # fmt: skip

    def mapping():
        expressions = driving_expressions(avatar, track.expressions, True, True, calibration, track.fps,
                                          lip_gaps=track.lip_gaps)  # fmt: skip
        return expressions, driver_targets(track.expressions, calibration, True, track.fps)

    mapping_ms = median_ms(mapping, args.repeats)
    print(f"expression mapping (calibration inverted, cross-talk solved, blinks, lip seal): "
          f"{mapping_ms / frames:.3f} ms/frame (target < 1)")  # fmt: skip
    expressions, targets = mapping()
    rest = rest_expression(avatar, True, calibration)
    start = time.perf_counter()
    _, bias = closed_loop_expressions(model, avatar, expressions, rest, targets, calibration, True, track.lip_gaps)
    loop_s = time.perf_counter() - start
    print(f"closed-loop correction (sampled frames rendered and re-tracked): {loop_s:.2f} s per clip "
          f"= {loop_s / frames * 1000:.1f} ms/frame over this clip")  # fmt: skip
    head_centre = model.head.head_centre().double().cpu().numpy()
    cameras_ms = median_ms(lambda: driving_cameras(avatar, head_centre, track.rotations, track.translations, True,
                                                   512, rotation_bias=bias, calibration=calibration,
                                                   face_points=face_landmark_points(model.head, avatar.identity, expressions)),
                           args.repeats)  # fmt: skip
    print(f"cameras (rotation, damped translation, pose bias, the face kept in frame): {cameras_ms / frames:.3f} ms/frame")


if __name__ == "__main__":
    main()

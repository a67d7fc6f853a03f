"""``python -m flexavatar eval --motion``: expression and motion fidelity, measured in closed loop.

Each reenactment is re-tracked with the project's own MediaPipe landmarker
(:func:`flexavatar.tracking.track_video`, each frame read on its own, no smoothing) and compared
with the raw tracking of its driver, frame by frame:

* **AED_rel**: mean absolute difference of the 51 MediaPipe expression scores (its 52 minus
  ``_neutral``), each relative to its frame 0 (relative motion transfers changes, not levels).
* **r** per key blendshape (:data:`KEY_BLENDSHAPES`): Pearson correlation of output and driver
  over time, only where the driver moves it: its score's std is at least :data:`MOVING_STD` and
  the movement is the face's, not the tracker's (:func:`driver_reliability`: the driver tracked
  a second time, in MediaPipe's VIDEO mode with its own landmark filter, agrees with its track to
  r >= :data:`MIN_RELIABILITY`); "-" otherwise: the correlation with tracker noise is noise.
  ``r_key`` is their mean. (examples/driving.mp4 is scripted: jaw, lips and one blink; its
  smile, brow and pucker scores move 0.03-0.05 with the jaw and the head turn, and a second
  tracking of the same frames reproduces them only to r 0.3-0.7.)
* **APD**: mean geodesic angle (degrees) between the output's and the driver's head rotation
  since frame 0 (each in its own camera).
* **out**: fraction of frames where the output's face is not found or its landmark box leaves
  the frame; **size**: std / median of the output face-box width (apparent size steadiness).
* **AED parts** (listed under the table): each row's :data:`AED_PARTS` scores that add most to
  its AED, with their mean absolute and signed error (+: the output's change is the larger);
  where a row fails, they say which face part to look at.
* **lips**: of the frames where the driver's lips are closed (inner-lip gap below
  :data:`~flexavatar.motion.LIP_CLOSED_GAP` of the face height), the fraction where the output's
  are open (above :data:`~flexavatar.motion.LIP_OPEN_GAP`); NaN when the driver never closes them.

Rows: self-reenactment (the avatar made from the clip's own first frame) and
cross-reenactment (every public photo driven by every public clip), in one table.

``--reencode`` also drives an avatar made from each photo re-encoded as JPEG (quality
:data:`REENCODE_QUALITY`, an invisible change) and reports how far each row's figures move: the
noise floor below which a change to the code is not measurable on these rows (measured on 27 rows:
AED moved by 0.0014 median, 0.005 at most; r_key by a standard deviation of 0.015).

    python -m flexavatar eval --motion [--photos a.jpg ...] [--clips c.mp4 ...] [--reencode] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from flexavatar import pipeline
from flexavatar.head.blendshapes import MEDIAPIPE_BLENDSHAPE_NAMES
from flexavatar.images import read_image
from flexavatar.live import reread_acquired
from flexavatar.motion import LIP_CLOSED_GAP, LIP_OPEN_GAP
from flexavatar.rotations import rotation_angle_deg
from flexavatar.tracking import track_video
from flexavatar.tracking.detect import blendshape_scores, close_task, create_landmarker, mp_image
from flexavatar.train import media_dir
from flexavatar.video import iter_frames, probe_video

REPO = Path(__file__).resolve().parents[2]
PUBLIC_PHOTOS = ("astronaut.png", "single_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg")
PUBLIC_CLIPS = ("single_face.mp4", "examples/driving.mp4")
#: Key blendshapes (MediaPipe names); ``browDown`` is the mean of its left and right scores.
KEY_BLENDSHAPES = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthSmileRight",
                   "browInnerUp", "browDown", "mouthPucker", "mouthFunnel")  # fmt: skip
#: A key blendshape counts for r only where the driver's score moves at least this much (std)...
MOVING_STD = 0.03
#: ...and where two trackings of the driver's frames (frame by frame, and VIDEO mode) agree to this r: below
#: it the score's movement is mostly the tracker's own noise, and no output can correlate with it
#: much better than sqrt(this): r >= 0.85 is out of reach.
MIN_RELIABILITY = 0.8
#: The output face box may come this close to the frame border (fraction of the side) before
#: the head counts as leaving the frame.
FRAME_MARGIN = 0.0
#: The scores with the largest AED contribution listed per row (``aed_parts``).
AED_PARTS = 3
_INDEX = {name: i for i, name in enumerate(MEDIAPIPE_BLENDSHAPE_NAMES)}


def key_scores(blendshapes: np.ndarray) -> dict[str, np.ndarray]:
    """[T,52] MediaPipe scores -> {key name: [T]} (browDown = mean of left/right)."""
    out = {}
    for name in KEY_BLENDSHAPES:
        if name == "browDown":
            out[name] = blendshapes[:, [_INDEX["browDownLeft"], _INDEX["browDownRight"]]].mean(1)
        else:
            out[name] = blendshapes[:, _INDEX[name]]
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two [T] series (0 when either is constant)."""
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 1e-12 else 0.0


def filtered_video_scores(clip, max_frames: int | None = None) -> np.ndarray:
    """[T,52] MediaPipe scores of ``clip`` tracked a second way: VIDEO mode with one face, where
    MediaPipe carries the face between frames and passes its landmarks through its own causal
    One Euro filter before the blendshapes (:func:`~flexavatar.tracking.track_video` reads each
    frame on its own); NaN rows where no face is found."""
    info = probe_video(clip)
    fps = float(info.fps) if info.fps and info.fps > 0 else 30.0
    landmarker = create_landmarker(video=True, num_faces=1)
    rows, last_timestamp, tracked = [], -1, False
    try:
        with contextlib.closing(iter_frames(info, max_frames=max_frames)) as frames:
            for index, frame in enumerate(frames):
                # the clip's own frame times: MediaPipe's filter is time-based
                timestamp = max(int(round(index * 1000.0 / fps)), last_timestamp + 1)
                image = mp_image(frame)
                result = landmarker.detect_for_video(image, timestamp)
                found = bool(result.face_blendshapes)
                if found and not tracked:  # read as the tracker reads the next frames, as live does
                    result, timestamp = reread_acquired(landmarker, image, result, timestamp)
                last_timestamp, tracked = timestamp, found
                rows.append(blendshape_scores(result.face_blendshapes[0]) if found else np.full(52, np.nan))
    finally:
        close_task(landmarker)
    return np.array(rows, np.float64).reshape(-1, 52)


def driver_reliability(driver, second_scores: np.ndarray) -> dict[str, float]:
    """{key name: r} the test-retest reliability of each key score of the driver: Pearson r of its
    track (``driver``, a :class:`~flexavatar.tracking.VideoTrack`, each frame read on its own) and
    a second tracking's scores [T,52] (:func:`filtered_video_scores`) over the frames both found a
    face in."""
    frames = min(driver.frame_count, len(second_scores))
    both = driver.has_face[:frames] & ~np.isnan(second_scores[:frames]).any(1)
    first, second = key_scores(driver.blendshapes[:frames][both]), key_scores(second_scores[:frames][both])
    return {name: pearson(first[name], second[name]) if both.sum() > 2 else 0.0 for name in KEY_BLENDSHAPES}


def motion_metrics(driver, output, reliability: dict[str, float] | None = None) -> dict:
    """Closed-loop metrics of one reenactment (see the module docstring).

    driver, output: :class:`~flexavatar.tracking.VideoTrack` of the driving video and of the
    rendered reenactment (same frame count; the shorter one bounds the comparison).
    reliability: :func:`driver_reliability` (None: every key the driver moves counts).
    Returns plain floats: aed_rel, r_key (NaN when no key blendshape moves), r_<name> (NaN where
    the driver does not move it), r_unreliable_<name> (r where the driver's score moves but not
    reliably; NaN otherwise), r_key_any (the mean over both), apd_deg, out_of_frame (fraction),
    size_std (fraction), lips_open (fraction, NaN where the driver's lips never close), frames.
    """
    frames = min(driver.frame_count, output.frame_count)
    both = driver.has_face[:frames] & output.has_face[:frames]
    first = int(np.argmax(both)) if both.any() else 0
    d_scores = driver.blendshapes[:frames, 1:].astype(np.float64)
    o_scores = output.blendshapes[:frames, 1:].astype(np.float64)
    delta = (o_scores - o_scores[first]) - (d_scores - d_scores[first])  # [T,51] output change - driver's
    delta_error = np.abs(delta)
    result: dict = {"frames": frames, "aed_rel": float(delta_error[both].mean()) if both.any() else float("nan")}
    if both.any():  # [name, mean |error|, mean signed error] of the scores that add most to AED
        per_score, signed = delta_error[both].mean(0), delta[both].mean(0)
        result["aed_parts"] = [[MEDIAPIPE_BLENDSHAPE_NAMES[i + 1], round(float(per_score[i]), 4), round(float(signed[i]), 4)]
                               for i in np.argsort(-per_score)[:AED_PARTS]]  # fmt: skip
    d_keys, o_keys = key_scores(driver.blendshapes[:frames]), key_scores(output.blendshapes[:frames])
    moving, moving_any = [], []
    for name in KEY_BLENDSHAPES:
        d, o = d_keys[name][both], o_keys[name][both]
        moves = len(d) > 2 and d.std() >= MOVING_STD
        reliable = reliability is None or reliability.get(name, 0.0) >= MIN_RELIABILITY
        r_any = pearson(o, d) if moves else float("nan")
        result[f"r_{name}"] = r_any if reliable else float("nan")
        result[f"r_unreliable_{name}"] = float("nan") if reliable else r_any
        moving += [] if np.isnan(result[f"r_{name}"]) else [r_any]
        moving_any += [] if np.isnan(r_any) else [r_any]
    result["r_key"] = float(np.mean(moving)) if moving else float("nan")
    # the mean over every key the driver's score moves in, tracker noise or not
    result["r_key_any"] = float(np.mean(moving_any)) if moving_any else float("nan")
    d_rot, o_rot = driver.rotation_matrices()[:frames], output.rotation_matrices()[:frames]
    d_delta = d_rot @ np.swapaxes(d_rot[first], -1, -2)  # rotation since frame 0, camera frame
    o_delta = o_rot @ np.swapaxes(o_rot[first], -1, -2)
    result["apd_deg"] = float(rotation_angle_deg(d_delta, o_delta)[both].mean()) if both.any() else float("nan")
    boxes = output.face_boxes[:frames]
    margin_x, margin_y = FRAME_MARGIN * output.width, FRAME_MARGIN * output.height
    inside = ((boxes[:, 0] >= margin_x) & (boxes[:, 1] >= margin_y)
              & (boxes[:, 2] <= output.width - margin_x) & (boxes[:, 3] <= output.height - margin_y))  # fmt: skip
    result["out_of_frame"] = float(1.0 - (inside & output.has_face[:frames]).mean())
    widths = (boxes[:, 2] - boxes[:, 0])[output.has_face[:frames]]
    result["size_std"] = float(widths.std() / max(np.median(widths), 1e-6)) if len(widths) else float("nan")
    closed = both & (driver.lip_gaps[:frames] < LIP_CLOSED_GAP)
    result["lips_open"] = float((output.lip_gaps[:frames][closed] > LIP_OPEN_GAP).mean()) if closed.any() else float("nan")
    return result


#: ``--reencode``: the JPEG quality of the photos' second copies.
REENCODE_QUALITY = 97
#: The row figures ``--reencode`` compares.
REENCODED_FIGURES = ("aed_rel", "r_key", "apd_deg")


def reencoded(photo, quality: int = REENCODE_QUALITY) -> np.ndarray:
    """A photo (path or uint8 [H,W,3]) -> the same photo after a JPEG round trip at ``quality``, uint8."""
    buffer = io.BytesIO()
    Image.fromarray(read_image(photo)).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def noise_floor(rows: list[dict]) -> dict[str, float]:
    """Of rows with ``<figure>_reencoded`` (``--reencode``): per figure of :data:`REENCODED_FIGURES`,
    the median and largest |change| the re-encoding made (``<figure>_median``, ``<figure>_max``)."""
    out = {}
    for figure in REENCODED_FIGURES:
        change = np.array([row[f"{figure}_reencoded"] - row[figure] for row in rows if f"{figure}_reencoded" in row])
        change = np.abs(change[np.isfinite(change)])
        out[f"{figure}_median"] = float(np.median(change)) if len(change) else float("nan")
        out[f"{figure}_max"] = float(change.max()) if len(change) else float("nan")
    return out


def first_frame(clip) -> np.ndarray:
    """The first frame of a video, uint8 [H,W,3] (the photo of a self-reenactment)."""
    frames = iter_frames(clip, max_frames=1)
    try:
        return next(frames)
    finally:
        frames.close()


def evaluate_reenactment(model, avatar, clip, driver_track, workdir: Path, tag: str, max_seconds: float,
                         reliability: dict[str, float] | None = None, **options) -> dict:  # fmt: skip
    """Reenact ``avatar`` with ``clip`` (pipeline options ``options``), re-track, compare."""
    out = pipeline.reenact(avatar, clip, max_seconds=max_seconds, out_path=workdir / f"{tag}.mp4", model=model,
                           **options)  # fmt: skip
    return motion_metrics(driver_track, track_video(out, smoothing=0.0), reliability)


def motion_table(model, photos, clips, max_seconds: float = 10.0, self_reenact: bool = True, workdir=None,
                 reencode: bool = False, **options) -> list[dict]:  # fmt: skip
    """Rows of metrics: self-reenactment per clip, then every photo x every clip. ``reencode``:
    each row also has ``<figure>_reencoded`` (:data:`REENCODED_FIGURES`), the same reenactment
    of an avatar made from the photo after a JPEG round trip (:func:`reencoded`)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="flexavatar-motion-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in clips:
        fps = track_video(clip, max_frames=1).fps
        driver = track_video(clip, smoothing=0.0, max_frames=max(1, int(max_seconds * fps)))
        reliability = driver_reliability(driver, filtered_video_scores(clip, driver.frame_count))
        sources = [("self", first_frame(clip))] if self_reenact else []
        sources += [(Path(p).name, p) for p in photos]
        for name, photo in sources:
            avatar = pipeline.create_avatar(photo, model=model)
            tag = f"{Path(clip).stem}-{Path(name).stem}"
            metrics = evaluate_reenactment(model, avatar, clip, driver, workdir, tag, max_seconds, reliability,
                                           **options)  # fmt: skip
            row = {"clip": Path(clip).name, "photo": name, **metrics,
                   **{f"reliability_{k}": v for k, v in reliability.items()}}  # fmt: skip
            if reencode:
                again = pipeline.create_avatar(reencoded(photo), model=model)
                second = evaluate_reenactment(model, again, clip, driver, workdir, f"{tag}-reencoded", max_seconds,
                                              reliability, **options)  # fmt: skip
                row.update({f"{k}_reencoded": second[k] for k in REENCODED_FIGURES})
            rows.append(row)
    return rows


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`motion_table` rows. A key whose driver score moves but not
    reliably (:data:`MIN_RELIABILITY`) shows its r in parentheses and is not in ``r_key``
    (``r_any`` includes it)."""
    head = ["clip", "photo", "AED_rel", "r_key", "r_any", *KEY_BLENDSHAPES, "APD°", "out", "size", "lips"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        keys = [_fmt(row[f"r_{k}"]) if np.isnan(row.get(f"r_unreliable_{k}", float("nan")))
                else f"({_fmt(row[f'r_unreliable_{k}'])})" for k in KEY_BLENDSHAPES]  # fmt: skip
        cells = [row["clip"], row["photo"], _fmt(row["aed_rel"], 3), _fmt(row["r_key"]),
                 _fmt(row.get("r_key_any", float("nan"))), *keys,
                 _fmt(row["apd_deg"]), _fmt(row["out_of_frame"]), _fmt(row["size_std"], 3),
                 _fmt(row.get("lips_open", float("nan")))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    with_parts = [row for row in rows if row.get("aed_parts")]
    if with_parts:
        lines.append("\nlargest AED parts (mean |output change - driver change|, signed mean):")
        lines += [f"  {row['clip']} x {row['photo']}: " + ", ".join(f"{name} {size:.3f} ({signed:+.3f})" for name, size, signed
                                                               in row["aed_parts"]) for row in with_parts]  # fmt: skip
    clips = {row["clip"]: row for row in rows if f"reliability_{KEY_BLENDSHAPES[0]}" in row}
    for clip, row in clips.items():
        lines.append(f"\n{clip}: driver reliability (frame by frame vs VIDEO mode r) "
                     + " ".join(f"{k} {row[f'reliability_{k}']:.2f}" for k in KEY_BLENDSHAPES))  # fmt: skip
    if any(f"{REENCODED_FIGURES[0]}_reencoded" in row for row in rows):
        floor = noise_floor(rows)
        lines.append(f"\nnoise floor (photos re-encoded as JPEG q{REENCODE_QUALITY}), |change| median / max: "
                     + ", ".join(f"{k} {floor[f'{k}_median']:.4f} / {floor[f'{k}_max']:.4f}" for k in REENCODED_FIGURES))  # fmt: skip
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flexavatar eval --motion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--motion", action="store_true", help="(selects this evaluation)")
    p.add_argument("--weights", default=None, help="checkpoint folder (default: the shipped weights/)")
    p.add_argument("--device", default=None)
    p.add_argument("--photos", nargs="*", default=None, help="default: the four public photos")
    p.add_argument("--clips", nargs="*", default=None, help="default: single_face.mp4 and examples/driving.mp4")
    p.add_argument("--max-seconds", type=float, default=10.0, help="driving seconds per clip")
    p.add_argument("--no-self", action="store_true", help="skip the self-reenactment rows")
    p.add_argument("--options", default="{}", help="extra pipeline.reenact options as JSON")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--markdown", default=None, help="also write the table as markdown here")
    p.add_argument("--workdir", default=None, help="keep the reenactment videos here")
    p.add_argument("--reencode", action="store_true",
                   help="also drive each photo re-encoded as JPEG and report how far the figures move (twice the time)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    media = media_dir()
    photos = args.photos if args.photos is not None else [str(media / p) for p in PUBLIC_PHOTOS]
    clips = args.clips if args.clips is not None else [
        str(REPO / c) if c.startswith("examples/") else str(media / c) for c in PUBLIC_CLIPS
    ]  # fmt: skip
    model = pipeline.load_model(args.weights, args.device)
    start = time.perf_counter()
    rows = motion_table(model, photos, clips, args.max_seconds, not args.no_self, args.workdir, args.reencode,
                        **json.loads(args.options))  # fmt: skip
    table = format_table(rows)
    print(table)
    print(f"({len(rows)} reenactments in {time.perf_counter() - start:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0

"""``python -m flexavatar eval``: self-reenactment on held-out frames of a video.

The avatar is encoded from one early frame (:data:`~flexavatar.train.EVAL_SOURCE_FRAME`) and
driven to later frames (:data:`~flexavatar.train.EVAL_FRAMES`, which training never reads) by
their own tracking: frame t is rendered with its tracked expression and camera and compared
with its head crop. The source and up to three targets are tracked jointly (``fit_head``: one
identity per group), cached like the training pairs.

Metrics (PSNR, SSIM, L1) are computed on the 256² head crop, inside the head part of the person
mask (person minus clothes and shoulders, :func:`~flexavatar.eval.wholehead.head_parts`)
intersected with the face region (the ICT head's silhouette at the tracked pose, dilated by 6%
of the crop for hair), so shoulders and clothes, which no avatar models, do not count. (The person
mask alone let a dark shirt under the ICT neck's silhouette into the face metric: 21.5 -> 12.0 dB
when the avatar stopped painting the shirt on its neck.) Rows:
the untrained network (seed 0, its evidence path), the trained weights, and the trained
weights plus test-time refinement on the source frame.

    python -m flexavatar eval [--weights DIR] [--refine-seconds 10] [--frames N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flexavatar import assets
from flexavatar.eval.wholehead import (
    PUBLIC_PHOTOS,
    TURNTABLE_FRAMES,
    evaluate_photo,
    face_region,
    format_photo_table,
    head_parts,
    silhouette_iou,
)
from flexavatar.metrics import masked_l1, psnr, ssim
from flexavatar.model import FlexAvatarModel, resolve_config
from flexavatar.refine import refine
from flexavatar.train import DEFAULT_VIDEO, EVAL_FRAMES, EVAL_SOURCE_FRAME, TRAIN_FRAMES, media_dir
from flexavatar.train.monocular import VideoFrames, fit_cameras, fit_frames, fit_tensors

GROUP = 3  # targets tracked together with the source (fit_head takes at most 4 images)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flexavatar eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--weights", default=None, help="trained checkpoint folder (default: the repo's weights/)")
    p.add_argument("--config", default="cpu-s", help="network config when no trained weights exist")
    p.add_argument("--video", default=None, help="default: single_face.mp4 in the shared media")
    p.add_argument("--source-frame", type=int, default=EVAL_SOURCE_FRAME)
    p.add_argument("--first-target", type=int, default=EVAL_FRAMES.start, help="first held-out frame")
    p.add_argument("--last-target", type=int, default=EVAL_FRAMES.stop - 1, help="last held-out frame")
    p.add_argument(
        "--frames", type=int, default=None, help="evaluate this many evenly spaced held-out frames"
    )
    p.add_argument(
        "--refine-seconds", type=float, default=10.0, help="refinement budget per avatar (0 = no row)"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    p.add_argument("--markdown", default=None, help="also write the table as markdown here")
    p.add_argument("--images", default=None, help="write target | untrained | trained | refined PNGs here")
    p.add_argument("--photos", nargs="*", default=list(PUBLIC_PHOTOS),
                   help="photos (names in the shared media, or paths) for the whole-head table; none to skip")
    p.add_argument("--no-video", action="store_true", help="skip the self-reenactment table")
    return p


def target_frames(first: int, last: int, count: int | None) -> list[int]:
    frames = list(range(first, last + 1))
    if count is not None and count < len(frames):
        frames = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, count).round()]
    return frames


def _models(args, device):
    weights = None
    for candidate in (args.weights, assets.SHIPPED_WEIGHTS):
        if (
            candidate
            and (Path(candidate) / "config.json").is_file()
            and (Path(candidate) / "model.safetensors").is_file()
        ):
            weights = Path(candidate)
            break
    if args.weights and weights != Path(args.weights):
        raise SystemExit(f"error: no config.json + model.safetensors in {args.weights}")
    trained = FlexAvatarModel.from_pretrained(str(weights)).to(device).eval() if weights else None
    config = trained.config if trained is not None else resolve_config(args.config)
    torch.manual_seed(0)
    untrained = FlexAvatarModel(type(config)(**config.to_dict()))  # same config, initial weights
    return untrained.to(device).eval(), trained, weights


def evaluate_model(model, groups, refine_seconds: float = 0.0, keep_images: bool = False) -> dict:
    """Per-frame metrics of one network over the tracked groups (see the module docstring)."""
    device = model.device
    per_frame, images = [], []
    seconds = 0.0
    for fit in groups:
        crops, masks = fit_tensors(fit)
        cameras = fit_cameras(fit)
        identity = torch.from_numpy(fit["identity"])
        expressions = torch.from_numpy(fit["expressions"])
        crops_d, masks_d, expr_d = crops.to(device), masks.to(device), expressions.to(device)
        cams_d = [c.to(device) for c in cameras]
        with torch.no_grad():
            openings = torch.from_numpy(fit["mouth_openings"][:1]).to(device)
            avatar = model.encode(crops_d[:1], masks_d[:1], cams_d[:1], identity.to(device), expr_d[:1], openings)
        if refine_seconds > 0:
            tic = time.perf_counter()
            avatar = refine(model, avatar, crops_d[:1], cams_d[:1], expr_d[:1], seconds=refine_seconds,
                            masks=masks_d[:1]).avatar  # fmt: skip
            seconds += time.perf_counter() - tic
        with torch.no_grad():
            rgb, alpha = model.render(avatar, cams_d[1:], expr_d[1:])
            parts = head_parts(model, crops_d[1:], masks_d[1:], cams_d[1:], identity.to(device), expr_d[1:])
        rgb, alpha, whole = rgb.cpu(), alpha.cpu(), parts.head.cpu()
        for j in range(1, len(cameras)):
            target = crops[j].permute(1, 2, 0)
            mask = face_region(model, identity, expressions[j], cameras[j], whole[j - 1, 0])
            prediction = rgb[j - 1]
            per_frame.append({
                "frame": int(fit["frames"][j]),
                "psnr": psnr(prediction, target, mask[..., None]),
                "ssim": ssim(prediction, target, mask[..., None]),
                "l1": masked_l1(prediction, target, mask[..., None]),
                "head_psnr": psnr(prediction, target, whole[j - 1, 0][..., None]),
                "iou": silhouette_iou(alpha[j - 1], whole[j - 1, 0]),
            })  # fmt: skip
            if keep_images:
                images.append((int(fit["frames"][j]), target.numpy(), prediction.numpy()))
    summary = {key: float(np.mean([f[key] for f in per_frame])) for key in ("psnr", "ssim", "l1", "head_psnr", "iou")}
    return {
        **summary,
        "frames": len(per_frame),
        "per_frame": per_frame,
        "refine_s": seconds,
        "images": images,
    }


def format_table(rows: list[dict]) -> str:
    lines = ["| model | face PSNR (dB) ↑ | SSIM ↑ | masked L1 ↓ | whole-head PSNR ↑ | silhouette IoU ↑ | frames |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['l1']:.4f} | {row['head_psnr']:.2f} | "
            f"{row['iou']:.3f} | {row['frames']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.video = args.video or str(media_dir() / DEFAULT_VIDEO.name)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    untrained, trained, weights = _models(args, device)
    config = untrained.config
    photo_rows = photo_table(trained or untrained, args.photos, args.refine_seconds)
    if args.no_video:
        if args.json:
            Path(args.json).write_text(json.dumps({"photos": photo_rows}, indent=2))
        return 0
    frames = target_frames(args.first_target, args.last_target, args.frames)
    if Path(args.video).name == DEFAULT_VIDEO.name and set(frames) & set(TRAIN_FRAMES):
        print(f"warning: targets {sorted(set(frames) & set(TRAIN_FRAMES))} are training frames, not held out")
    video = VideoFrames(args.video, max(frames + [args.source_frame]) + 1)
    groups = [fit_frames(video, [args.source_frame] + frames[i : i + GROUP], config.crop_size, config.num_identity)
              for i in range(0, len(frames), GROUP)]  # fmt: skip
    print(f"self-reenactment: {Path(args.video).name}, source frame {args.source_frame}, "
          f"{len(frames)} held-out target frames {frames[0]}-{frames[-1]}, config {config.name}")  # fmt: skip

    keep = args.images is not None
    rows = [{"name": "untrained", **evaluate_model(untrained, groups, keep_images=keep)}]
    if trained is None:
        print(
            "note: no trained weights found (pass --weights DIR or ship weights/); only the untrained row is shown"
        )
    else:
        rows.append({"name": "trained", **evaluate_model(trained, groups, keep_images=keep)})
        if args.refine_seconds > 0:
            rows.append({"name": f"trained + refine ({args.refine_seconds:g} s)",
                         **evaluate_model(trained, groups, args.refine_seconds, keep_images=keep)})  # fmt: skip
    table = format_table(rows)
    print(table)
    result = {
        "video": Path(args.video).name,
        "source_frame": args.source_frame,
        "target_frames": frames,
        "weights": str(weights) if weights else None,
        "config": config.name,
        "mask": "head part of the person mask x dilated ICT head silhouette, 256^2 head crop",
        "rows": [{k: v for k, v in row.items() if k != "images"} for row in rows],
        "photos": photo_rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if keep:
        _write_images(Path(args.images), rows)
    return 0


def photo_table(model, photos: list[str], refine_seconds: float) -> list[dict]:
    """The whole-head table (:mod:`flexavatar.eval.wholehead`) of ``photos``: feed-forward and,
    if ``refine_seconds`` > 0, refined; printed, and returned without the turntable frames."""
    rows = []
    for photo in photos:
        path = Path(photo) if Path(photo).is_file() else media_dir() / photo
        for seconds in [0.0] + ([refine_seconds] if refine_seconds > 0 else []):
            row = evaluate_photo(model, str(path), seconds)
            name = f"refined ({seconds:g} s)" if seconds else "feed-forward"
            rows.append({"photo": path.name, "name": name, **{k: v for k, v in row.items() if k != "frames"}})
    if rows:
        print(f"whole head: {len(photos)} photo(s), source view + {TURNTABLE_FRAMES}-frame turntable")
        print(format_photo_table(rows))
    return rows


def _write_images(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (frame, target, _) in enumerate(rows[0]["images"]):
        tiles = [target] + [row["images"][index][2] for row in rows]
        strip = np.concatenate(tiles, 1)
        Image.fromarray((np.clip(strip, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
            folder / f"frame_{frame:04d}.png"
        )

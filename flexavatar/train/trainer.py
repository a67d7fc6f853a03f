"""``python -m flexavatar train``: the trainer, built on ``accelerate``.

    python -m flexavatar train --config cpu-s --steps 20000 --out runs/cpu-s [--resume] [--seconds S]
    accelerate launch -m flexavatar train --config gpu-l ...     # many GPUs / nodes, DDP
    python -m flexavatar train --show-sampler                    # sampler before/after histograms

Each step draws ``--batch`` samples per process: synthetic multi-view heads (class 0) or, with
probability ``--mono-fraction``, a monocular pair of tracked video frames (class 1) chosen by
the density sampler. A sample's draw depends only on (seed, step, process, slot), so a resumed
run sees exactly the data an uninterrupted one would have seen. The network runs in bf16 on
CUDA (the geometry, UV lifting and the rasterizer stay in float32).

Output folder: ``config.json`` + ``model.safetensors`` (Hub layout, final weights) and
``README.md`` (model card); ``checkpoint/`` (same layout + ``optimizer.pt`` +
``trainer_state.json``; ``--resume`` continues from it); ``log.csv`` (one row per step).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn

from flexavatar.metrics import photometric_loss
from flexavatar.model import FlexAvatarModel, resolve_config
from flexavatar.train import DEFAULT_VIDEO, EVAL_FRAMES, MONOCULAR, TRAIN_FRAMES, TrainingSample
from flexavatar.train import losses as L
from flexavatar.train.checkpoint import load_trainer_state, save_checkpoint, write_model_card
from flexavatar.train.monocular import MonocularPairs
from flexavatar.train.sampler import DensitySampler, histogram_table, rare_mask
from flexavatar.train.synthetic import SyntheticHeads
from flexavatar.train.textures import build_texture_bank

LOG_FIELDS = ("step", "loss", "l1", "ssim", "reg", "monocular", "lr", "grad_norm", "step_s", "elapsed_s")


# ----------------------------------------------------------------------------------- the step
def _to_float(value):
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_float(v) for v in value)
    if isinstance(value, list):
        return [_to_float(v) for v in value]
    return value


def enable_network_autocast(model, device_type: str, dtype=torch.bfloat16) -> None:
    """Run the learned parts (encoder, queries, deformer) under autocast; outputs back to float32.

    Everything else (UV lifting, the Gaussian field, the rasterizer) stays in float32. Patches
    the instances' ``forward`` only: the state dict and saved checkpoints are unchanged.
    """
    for module in (model.encoder, model.queries, model.deformer):
        original = module.forward

        def forward(*args, _original=original, **kwargs):
            with torch.autocast(device_type, dtype=dtype):
                return _to_float(_original(*args, **kwargs))

        module.forward = forward


class TrainStep(nn.Module):
    """forward(samples) -> (loss, parts): encode inputs, render targets, losses. DDP wraps this."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self._dynamic: list[torch.Tensor] = []
        model.deformer.register_forward_hook(lambda module, args, output: self._dynamic.append(output))

    def forward(self, samples: list[TrainingSample]):
        model = self.model
        device_type = model.device.type
        totals = {"loss": 0.0, "l1": 0.0, "ssim": 0.0, "reg": 0.0}
        loss = 0.0
        with torch.autocast(device_type, enabled=False):  # see enable_network_autocast
            for sample in samples:
                self._dynamic.clear()
                avatar = model.encode(sample.images, sample.masks, sample.cameras, sample.identity,
                                      sample.expressions, sample.mouth_openings)  # fmt: skip
                rgb, _ = model.render(avatar, sample.target_cameras, sample.target_expressions,
                                      data_source=sample.data_source)  # fmt: skip
                prediction = rgb.permute(0, 3, 1, 2)
                photo = photometric_loss(
                    prediction, sample.target_images, sample.loss_region * sample.pixel_weight
                )
                reg = L.STATIC_REG * L.static_regulariser(avatar.static_maps, model.atlas.mask)
                if self._dynamic:
                    reg = reg + L.DYNAMIC_REG * L.dynamic_regulariser(self._dynamic[-1], model.atlas.mask)
                sample_loss = photo["photo"] + reg
                loss = loss + sample_loss / len(samples)
                for key, value in (
                    ("loss", sample_loss),
                    ("l1", photo["l1"]),
                    ("ssim", photo["ssim"]),
                    ("reg", reg),
                ):
                    totals[key] += float(value.detach()) / len(samples)
        self._dynamic.clear()
        return loss, totals


# ----------------------------------------------------------------------------------- data
class DataMix:
    """Draws the samples of one step, deterministically from (seed, step, process, slot)."""

    def __init__(self, model, args, accelerator):
        self.seed = args.seed
        self.mono_fraction = args.mono_fraction
        self.rank = accelerator.process_index
        self.synthetic = self.monocular = self.sampler = None
        with accelerator.main_process_first():  # the first process builds the caches
            if self.mono_fraction < 1.0:
                sources = [(Path(t).name, Path(t)) for t in args.textures] if args.textures else None
                bank = build_texture_bank(model.head, model.atlas, model.config.crop_size, sources)
                self.synthetic = SyntheticHeads(model, bank, num_inputs=args.views, num_targets=args.targets,
                                                pool=args.pool)  # fmt: skip
            if self.mono_fraction > 0.0:
                self.monocular = MonocularPairs(
                    model, videos=args.video, num_pairs=args.num_pairs, seed=args.seed
                )
                self.sampler = DensitySampler(self.monocular.target_expressions(), adjust=not args.no_adjust)

    def batch(self, step: int, size: int) -> list[TrainingSample]:
        samples = []
        for slot in range(size):
            rng = np.random.default_rng([self.seed, step, self.rank, slot])
            if self.monocular is not None and (self.synthetic is None or rng.random() < self.mono_fraction):
                samples.append(self.monocular[int(self.sampler.draw(rng))])
            else:
                samples.append(self.synthetic.sample(int(rng.integers(2**31))))
        return samples


# ----------------------------------------------------------------------------------- commands
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flexavatar train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--config", default="cpu-s", help="cpu-s, gpu-l, tiny, or a config.json / checkpoint folder"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--steps", type=int, default=1000, help="train until this (total) step count")
    p.add_argument("--seconds", type=float, default=None, help="stop after this much wall clock (this run)")
    p.add_argument("--out", default="runs/train", help="output folder")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint (step count, optimizer)"
    )
    p.add_argument("--init-from", default=None, help="start from these weights (a folder) instead of random")
    p.add_argument("--batch", type=int, default=2, help="samples per step per process")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"],
                   help="default: bf16 on CUDA, no on CPU")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mono-fraction", type=float, default=0.5, help="share of monocular (class 1) samples")
    p.add_argument("--views", type=int, default=1, help="input views per synthetic sample (1-4)")
    p.add_argument("--targets", type=int, default=2, help="target views per synthetic sample")
    p.add_argument("--pool", type=int, default=None, help="use only this many fixed synthetic samples")
    p.add_argument(
        "--num-pairs", type=int, default=None, help="monocular pairs (default: every training frame)"
    )
    p.add_argument("--video", action="append", default=None, help="monocular training video (repeatable)")
    p.add_argument(
        "--textures",
        action="append",
        default=None,
        help="photo to lift a synthetic texture from (repeatable; default: the real faces in shared/media)",
    )
    p.add_argument(
        "--no-adjust", action="store_true", help="uniform monocular sampling (no density adjustment)"
    )
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--print-every", type=int, default=10)
    p.add_argument(
        "--show-sampler", action="store_true", help="print the sampler's before/after histograms and exit"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.show_sampler:
        show_sampler(args)
        return 0
    train(args)
    return 0


def show_sampler(args) -> None:
    model = FlexAvatarModel(resolve_config(args.config, args.set))
    pairs = MonocularPairs(model, videos=args.video, num_pairs=args.num_pairs, seed=args.seed)
    codes = pairs.target_expressions()
    sampler = DensitySampler(codes)
    print(f"{len(codes)} monocular training targets ({', '.join(v.path.name for v in pairs.videos)})")
    print(histogram_table(codes, sampler.weights))
    for name in ("jawOpen", "eyeBlink_L", "browDown_L"):
        rare = rare_mask(codes, name)
        print(
            f"mass of the top-10% {name} frames: raw {sampler.mass(rare, False):.1%} → adjusted {sampler.mass(rare):.1%}"
        )


def _learning_rate(args, step: int) -> float:
    warmup = max(1, min(args.warmup, args.steps // 10 or 1))
    return args.lr * min(1.0, (step + 1) / warmup)


def train(args) -> dict:
    """Run (or continue) a training run; returns the final trainer state."""
    use_cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    mixed = args.mixed_precision or ("no" if use_cpu else "bf16")
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed)
    out = Path(args.out)
    checkpoint = out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)

    state = load_trainer_state(checkpoint) if args.resume else None
    set_seed(args.seed)
    if state is not None:
        model = FlexAvatarModel.from_pretrained(str(checkpoint))
        accelerator.print(f"resuming from {checkpoint} at step {state['step']}")
    elif args.init_from:
        # the weights of another run, under this run's config (e.g. a faster deformer grid:
        # conv weights do not depend on the grid size)
        model = FlexAvatarModel(resolve_config(args.config, args.set))
        model.load_state_dict(load_file(str(Path(args.init_from) / "model.safetensors")))
        accelerator.print(f"initialised from {args.init_from}")
    else:
        if args.resume:
            accelerator.print(f"no checkpoint in {checkpoint}; starting a new run")
        model = FlexAvatarModel(resolve_config(args.config, args.set))
    state = state or {"step": 0, "elapsed_total_s": 0.0}
    model = model.to(accelerator.device)
    if accelerator.device.type == "cuda" and mixed in ("bf16", "fp16"):
        enable_network_autocast(model, "cuda", torch.bfloat16 if mixed == "bf16" else torch.float16)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay
    )
    if (checkpoint / "optimizer.pt").is_file() and state["step"] > 0:
        optimizer.load_state_dict(
            torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
        )
    step_module = TrainStep(model)
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    data = DataMix(model, args, accelerator)
    if data.sampler is not None:
        accelerator.print(f"monocular: {len(data.monocular)} pairs; synthetic: "
                          f"{'off' if data.synthetic is None else f'{len(data.synthetic.textures)} textures'}")  # fmt: skip

    log_path = out / "log.csv"
    new_log = not log_path.is_file() or state["step"] == 0
    log_file = open(log_path, "w" if new_log else "a", newline="") if accelerator.is_main_process else None
    writer = csv.DictWriter(log_file, LOG_FIELDS) if log_file else None
    if writer and new_log:
        writer.writeheader()

    run_start = time.perf_counter()
    elapsed_before = float(state.get("elapsed_total_s", 0.0))
    step = int(state["step"])
    recent: list[float] = []
    first_step = step

    def current_state() -> dict:
        return {
            "step": step,
            "elapsed_total_s": elapsed_before + time.perf_counter() - run_start,
            "config": model.config.name,
            "device": str(accelerator.device),
            "num_processes": accelerator.num_processes,
            "batch": args.batch,
            "mono_fraction": args.mono_fraction,
            "video": ", ".join(Path(v).name for v in (args.video or [DEFAULT_VIDEO])),
            "train_frames": f"{TRAIN_FRAMES.start}-{TRAIN_FRAMES.stop - 1}",
            "eval_frames": f"{EVAL_FRAMES.start}-{EVAL_FRAMES.stop - 1}",
            "recent_loss": round(float(np.mean(recent[-100:])), 5) if recent else None,
            "command": "python -m flexavatar train "
            + " ".join(sys.argv[2:] if sys.argv[1:2] == ["train"] else []),
        }

    def save(final: bool = False) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(step_module).model
            current = current_state()
            save_checkpoint(unwrapped, optimizer, checkpoint, current)
            if final:
                unwrapped.save_pretrained(out)
                write_model_card(out, current)

    try:
        while step < args.steps:
            tic = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(args, step)
            samples = [s.to(accelerator.device) for s in data.batch(step, args.batch)]
            step_module.train()
            loss, parts = step_module(samples)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(step_module.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            reduced = accelerator.reduce(torch.tensor([parts[k] for k in ("loss", "l1", "ssim", "reg")],
                                                      device=accelerator.device), "mean")  # fmt: skip
            loss_value, l1, dssim, reg = (float(v) for v in reduced)
            recent.append(loss_value)
            elapsed = time.perf_counter() - run_start
            if writer:
                writer.writerow({
                    "step": step, "loss": f"{loss_value:.5f}", "l1": f"{l1:.5f}", "ssim": f"{dssim:.5f}",
                    "reg": f"{reg:.6f}", "monocular": sum(s.data_source == MONOCULAR for s in samples),
                    "lr": f"{optimizer.param_groups[0]['lr']:.2e}", "grad_norm": f"{float(grad_norm):.4f}",
                    "step_s": f"{time.perf_counter() - tic:.3f}", "elapsed_s": f"{elapsed_before + elapsed:.1f}",
                })  # fmt: skip
                log_file.flush()
            if args.print_every and step % args.print_every == 0:
                accelerator.print(f"step {step:6d}  loss {np.mean(recent[-args.print_every:]):.4f}  "
                                  f"l1 {l1:.4f}  {(step - first_step) / elapsed:.2f} steps/s")  # fmt: skip
            if args.save_every and step % args.save_every == 0 and step < args.steps:
                save()
            stop = torch.tensor(
                [args.seconds is not None and elapsed >= args.seconds], device=accelerator.device
            )
            if bool(accelerator.reduce(stop.float(), "sum") > 0):
                accelerator.print(f"time budget of {args.seconds:.0f} s reached at step {step}")
                break
    finally:
        if log_file:
            log_file.close()
    save(final=True)
    final = current_state()
    accelerator.print(f"done: step {step}, {final['elapsed_total_s']:.0f} s in total; weights in {out}")
    accelerator.end_training()
    return final


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))

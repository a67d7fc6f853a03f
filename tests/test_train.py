"""Training and evaluation: data, sampler, a few CPU training steps, resume, the eval command.

Everything runs the ``tiny`` config (crops 128², atlas 64²: the same code, small numbers).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch


def _read_log(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tiny_model():
    from flexavatar.model import FlexAvatarModel
    from flexavatar.train import resolve_config

    torch.manual_seed(0)
    return FlexAvatarModel(resolve_config("tiny"))


@pytest.fixture(scope="module")
def one_photo_bank(tiny_model, shared_media):
    from flexavatar.train.synthetic import build_texture_bank

    photo = shared_media / "single_face.jpg"
    return build_texture_bank(
        tiny_model.head, tiny_model.atlas, tiny_model.config.crop_size, [(photo.name, photo)]
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_media):
    """20 CPU steps of the tiny network on one fixed synthetic sample, then 5 more resumed."""
    from flexavatar.train.trainer import main

    out = tmp_path_factory.mktemp("run")
    common = ["--config", "tiny", "--out", str(out), "--device", "cpu", "--pool", "1", "--batch", "1",
              "--mono-fraction", "0", "--lr", "2e-3", "--warmup", "1", "--save-every", "10", "--print-every", "0",
              "--textures", str(shared_media / "single_face.jpg")]  # fmt: skip
    assert main(common + ["--steps", "20"]) == 0
    first_log = _read_log(out / "log.csv")
    first_state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert main(common + ["--steps", "25", "--resume"]) == 0
    return out, first_log, first_state


def test_synthetic_generator_is_deterministic(tiny_model, one_photo_bank):
    from flexavatar.train.synthetic import SyntheticHeads

    a = SyntheticHeads(tiny_model, one_photo_bank, num_inputs=1, num_targets=2).sample(3)
    b = SyntheticHeads(tiny_model, one_photo_bank, num_inputs=1, num_targets=2).sample(3)
    c = SyntheticHeads(tiny_model, one_photo_bank, num_inputs=1, num_targets=2).sample(4)
    size = tiny_model.config.crop_size
    assert a.images.shape == (1, 3, size, size) and a.target_images.shape == (2, 3, size, size)
    assert a.data_source == 0
    assert torch.equal(a.images, b.images) and torch.equal(a.target_images, b.target_images)
    assert torch.equal(a.target_expressions, b.target_expressions) and torch.equal(a.identity, b.identity)
    assert not torch.equal(a.images, c.images)
    # the head is in the picture, on a white background, and the mask is its alpha
    assert 0.1 < float(a.masks.mean()) < 0.8
    assert float(a.images[:, :, 0, 0].min()) > 0.99
    # the targets see the head from anywhere: both frontal and non-frontal over a few samples
    facing = [float(s.target_cameras[i].position[2])
              for s in (a, c) for i in range(2)]  # fmt: skip
    assert len(facing) == 4


def test_monocular_pairs_yield_class_1(tiny_model):
    from flexavatar.train import EVAL_FRAMES, TRAIN_FRAMES
    from flexavatar.train.monocular import MonocularPairs

    pairs = MonocularPairs(tiny_model, num_pairs=2)
    assert len(pairs) == 2
    sample = pairs[0]
    size = tiny_model.config.crop_size
    assert sample.data_source == 1
    assert sample.images.shape == (1, 3, size, size) and sample.target_images.shape == (1, 3, size, size)
    assert sample.info["source"] in TRAIN_FRAMES and sample.info["target"] in TRAIN_FRAMES
    assert sample.info["source"] != sample.info["target"]
    assert not {s for _, s, t in pairs.pairs} & set(EVAL_FRAMES)
    assert sample.identity.shape == (tiny_model.config.num_identity,)
    assert 0.05 < float(sample.loss_region.mean()) < 0.95  # the head region, not the whole crop
    assert float(sample.pixel_weight.max()) == pytest.approx(3.0)  # mouth box on a frontal frame
    assert pairs.target_expressions().shape == (2, 57)


def test_sampler_raises_mass_of_rare_expressions(capsys):
    from flexavatar.head.blendshapes import EXPRESSION_INDEX
    from flexavatar.train.sampler import DensitySampler, histogram_table

    rng = np.random.default_rng(0)
    codes = np.clip(rng.normal(0.05, 0.04, (200, 57)), 0, 1).astype(np.float32)  # talking: near neutral
    codes[:, EXPRESSION_INDEX["jawOpen"]] = rng.uniform(0.0, 0.3, 200)
    codes[:8, EXPRESSION_INDEX["jawOpen"]] = rng.uniform(0.6, 0.9, 8)  # rare: open mouth
    codes[8:18, EXPRESSION_INDEX["eyeBlink_L"]] = codes[8:18, EXPRESSION_INDEX["eyeBlink_R"]] = 0.9  # blinks
    sampler = DensitySampler(codes)
    assert sampler.weights.sum() == pytest.approx(1.0)
    open_mouth = codes[:, EXPRESSION_INDEX["jawOpen"]] > 0.5
    blink = codes[:, EXPRESSION_INDEX["eyeBlink_L"]] > 0.5
    assert sampler.mass(open_mouth) > 2 * sampler.mass(open_mouth, adjusted=False)
    assert sampler.mass(blink) > 2 * sampler.mass(blink, adjusted=False)
    assert sampler.weights.max() / np.median(sampler.weights) <= 10.0 + 1e-6  # clipped
    draws = sampler.draw(np.random.default_rng(1), 4000)
    assert open_mouth[draws].mean() > 2 * open_mouth.mean()
    table = histogram_table(codes, sampler.weights)
    assert "jawOpen" in table and "eyeBlink_L" in table and "→" in table


def test_show_sampler_command(capsys):
    from flexavatar.train.trainer import main

    assert main(["--show-sampler", "--config", "tiny", "--num-pairs", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 monocular training targets" in out and "jawOpen" in out and "adjusted" in out


def test_training_loss_falls_on_cpu(tiny_run):
    out, log, state = tiny_run
    losses = [float(row["loss"]) for row in log]
    assert [int(row["step"]) for row in log] == list(range(1, 21))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert state["step"] == 20
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (out / name).is_file()
    assert (out / "checkpoint" / "optimizer.pt").is_file()


def test_resume_continues_step_count(tiny_run):
    from flexavatar.model import FlexAvatarModel

    out, first_log, _ = tiny_run
    log = _read_log(out / "log.csv")
    steps = [int(row["step"]) for row in log]
    assert steps == list(range(1, 26))  # 1-20, then 21-25 appended by the resumed run
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 25
    assert float(log[20]["loss"]) < np.mean([float(r["loss"]) for r in first_log[:3]])  # not from scratch
    model = FlexAvatarModel.from_pretrained(str(out))
    assert model.config.name == "tiny"


def test_eval_command_runs_on_two_frames(tiny_run, tmp_path, capsys):
    from flexavatar.eval.evaluate import main
    from flexavatar.train import EVAL_FRAMES

    out, _, _ = tiny_run
    report = tmp_path / "eval.json"
    assert main(["--weights", str(out), "--frames", "2", "--refine-seconds", "1", "--json", str(report),
                 "--device", "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| untrained |" in printed and "| trained |" in printed and "refine" in printed
    result = json.loads(report.read_text())
    assert [row["name"] for row in result["rows"]][:2] == ["untrained", "trained"]
    assert len(result["rows"]) == 3
    assert set(result["target_frames"]) <= set(EVAL_FRAMES)
    for row in result["rows"]:
        assert row["frames"] == 2
        assert 5.0 < row["psnr"] < 60.0 and 0.0 < row["ssim"] <= 1.0 and 0.0 <= row["l1"] < 1.0

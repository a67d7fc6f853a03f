"""Training and evaluation: data, sampler, a few CPU training steps, resume, the eval command.

Everything runs the ``tiny`` config (crops 128², atlas 64²: the same code, small numbers).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from flexavatar.eval.evaluate import main as eval_main
from flexavatar.head.blendshapes import EXPRESSION_INDEX, NUM_EXPRESSIONS
from flexavatar.metrics import photometric_loss, psnr, ssim, ssim_map
from flexavatar.model import FlexAvatarModel, resolve_config
from flexavatar.train import EVAL_FRAMES, TRAIN_FRAMES
from flexavatar.train.hairstyles import HairGeometry, Hairstyle, hair_shape, random_hairstyle
from flexavatar.train.monocular import MonocularPairs, fit_cameras, fit_tensors
from flexavatar.train.sampler import DensitySampler, histogram_table
from flexavatar.train.synthetic import SyntheticHeads, render_template
from flexavatar.train.textures import build_texture_bank
from flexavatar.train.trainer import main as train_main


def _read_log(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return FlexAvatarModel(resolve_config("tiny"))


@pytest.fixture(scope="module")
def one_photo_bank(tiny_model, shared_media):
    photo = shared_media / "single_face.jpg"
    return build_texture_bank(
        tiny_model.head, tiny_model.atlas, tiny_model.config.crop_size, [(photo.name, photo)]
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_media):
    """20 CPU steps of the tiny network on one fixed synthetic sample, then 5 more resumed."""
    out = tmp_path_factory.mktemp("run")
    common = ["--config", "tiny", "--out", str(out), "--device", "cpu", "--pool", "1", "--batch", "1",
              "--mono-fraction", "0", "--lr", "2e-3", "--warmup", "1", "--save-every", "10", "--print-every", "0",
              "--textures", str(shared_media / "single_face.jpg")]  # fmt: skip
    assert train_main(common + ["--steps", "20"]) == 0
    first_log = _read_log(out / "log.csv")
    first_state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert train_main(common + ["--steps", "25", "--resume"]) == 0
    return out, first_log, first_state


@pytest.fixture(scope="module")
def photo_tensor(shared_media):
    """single_face.jpg at 96² as [1,3,96,96] float in [0,1]."""
    from PIL import Image

    image = Image.open(shared_media / "single_face.jpg").convert("RGB").resize((96, 96))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255


def test_metrics_on_a_real_photo(photo_tensor):
    photo = photo_tensor * 0.8 + 0.1  # room for a +0.1 shift without clipping
    shifted = photo + 0.1
    assert psnr(shifted, photo) == pytest.approx(20.0, abs=1e-3)  # mse 0.01
    assert ssim(photo, photo) == pytest.approx(1.0, abs=1e-6)
    noisy = (photo + 0.05 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert ssim(noisy, photo) < 0.95
    # channels-last [H,W,3] and a [H,W] mask give the same figure as [B,3,H,W] and [B,1,H,W]
    half = torch.zeros(1, 1, 96, 96)
    half[..., :48] = 1
    assert psnr(noisy[0].permute(1, 2, 0), photo[0].permute(1, 2, 0), half[0, 0]) == pytest.approx(
        psnr(noisy, photo, half), abs=1e-6
    )


def test_photometric_loss_is_weighted_l1_plus_dssim(photo_tensor):
    target = photo_tensor
    prediction = target.clone()
    prediction[..., 48:] = 1.0 - prediction[..., 48:]  # wrong on the right half only
    left = torch.zeros(1, 1, 96, 96)
    left[..., :40] = 1  # (SSIM's 11-px window reaches 5 px across the seam)
    clean = photometric_loss(prediction, target, left)
    assert float(clean["l1"]) == 0.0 and float(clean["ssim"]) == pytest.approx(0.0, abs=1e-5)
    everywhere = photometric_loss(prediction, target)
    l1 = (prediction - target).abs().mean()
    dssim = (1 - ssim_map(prediction, target)).mean()
    assert float(everywhere["l1"]) == pytest.approx(float(l1), rel=1e-6)
    assert float(everywhere["photo"]) == pytest.approx(float(l1 + 0.2 * dssim), rel=1e-6)
    # emphasis: weighting the wrong half 3x moves the mean toward its error
    weight = torch.ones(1, 1, 96, 96)
    weight[..., 48:] = 3
    assert float(photometric_loss(prediction, target, weight)["l1"]) == pytest.approx(
        float((prediction - target).abs()[..., 48:].mean()) * 3 / 4, rel=1e-5
    )
    # differentiable: the gradient reaches the prediction
    prediction.requires_grad_(True)
    photometric_loss(prediction, target, weight)["photo"].backward()
    assert prediction.grad is not None and float(prediction.grad.abs().sum()) > 0


def test_synthetic_generator_is_deterministic(tiny_model, one_photo_bank):
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
    # the targets see the head from anywhere: from the front and from behind over a few samples
    centre = tiny_model.head.head_centre().cpu()
    facing = [float(camera.position[2] - centre[2]) for s in (a, c) for camera in s.target_cameras]
    assert max(facing) > 0 and min(facing) < 0


def test_synthetic_hair_volumes_reach_beyond_the_bald_silhouette(tiny_model, one_photo_bank):
    heads = SyntheticHeads(tiny_model, one_photo_bank, num_inputs=1, num_targets=2)
    samples = [heads.sample(seed) for seed in range(12)]
    styles = {s.info["hairstyle"] for s in samples}
    assert {"short", "bob", "long"} <= styles, styles  # every style shows up in a few draws
    sample = next(s for s in samples if s.info["hairstyle"] == "long")
    heights = sample.info["hair_heights"]
    assert 0.03 < heights.max() < 0.15  # metres along the normal: shoulder-length hair
    grey = torch.full((tiny_model.atlas.num_texels, 3), 0.5)
    cameras = sample.cameras + sample.target_cameras
    expressions = torch.cat([sample.expressions, sample.target_expressions])
    style = Hairstyle(heights=heights, coverage=np.zeros_like(heights), style="long")
    shape = hair_shape(style, cut=sample.info["cut"])  # the skin under a collar is cut, if any
    _, hair_alpha = render_template(tiny_model, grey, sample.identity, expressions, cameras, shape=shape)
    _, bald_alpha = render_template(tiny_model, grey, sample.identity, expressions, cameras)
    beyond = (hair_alpha > 0.5) & (bald_alpha < 0.1)  # [V+T,1,S,S]: hair outside the bald head
    # the input mask is the hair head's alpha (plus a shirt, if any), not the bald template's
    assert bool((sample.masks >= hair_alpha[:1] - 1e-4).all())
    assert int(beyond[:1].sum()) > 0.02 * beyond[0].numel()
    hair_pixels = beyond[1:]
    assert int(hair_pixels.sum()) > 0.01 * hair_pixels.numel()
    # those pixels count in the loss and show hair (not the white background) in the targets
    assert bool((sample.loss_region[hair_pixels] == 1).all())
    assert float(sample.target_images.mean(1, keepdim=True)[hair_pixels].mean()) < 0.9
    # a bald style lifts nothing; the hair chart is the carving's (no hair on the face below the brows)
    geometry = HairGeometry(tiny_model.head, tiny_model.atlas)
    assert random_hairstyle(geometry, np.random.default_rng(0), "bald").heights.max() == 0
    long_hair = random_hairstyle(geometry, np.random.default_rng(0), "long")
    below_brows = geometry.face & (geometry.canonical[:, 1] < geometry.brow_y)
    assert long_hair.heights[below_brows].max() == 0 and long_hair.heights[geometry.chart].max() > 0.02


def test_synthetic_shirts_are_in_the_inputs_only(tiny_model, one_photo_bank):
    heads = SyntheticHeads(tiny_model, one_photo_bank, num_inputs=1, num_targets=2)
    sample = next(
        s for s in map(heads.sample, range(12)) if s.info["shirt"] and s.info["hairstyle"] != "long"
    )
    cut = sample.info["cut"]
    assert cut.any() and not (cut & (sample.info["hair_heights"] > 0.002)).any()  # hair over the collar stays
    grey = torch.full((tiny_model.atlas.num_texels, 3), 0.5)
    style = Hairstyle(heights=sample.info["hair_heights"], coverage=np.zeros_like(cut, np.float32), style="")
    _, head_alpha = render_template(tiny_model, grey, sample.identity, sample.expressions, sample.cameras,
                                    shape=hair_shape(style, cut=cut))  # fmt: skip
    shirt = (sample.masks > 0.5) & (head_alpha < 0.1)
    size = tiny_model.config.crop_size
    assert int(shirt.sum()) > 0.01 * size * size  # a shirt in the person mask of the input
    assert int(shirt[..., : size // 2, :].sum()) == 0  # below the head
    # a target sees no shirt and no neck below the collar: the rendered head only
    _, uncut_alpha = render_template(tiny_model, grey, sample.identity, sample.target_expressions,
                                     sample.target_cameras, shape=hair_shape(style))  # fmt: skip
    _, target_alpha = render_template(tiny_model, grey, sample.identity, sample.target_expressions,
                                      sample.target_cameras, shape=hair_shape(style, cut=cut))  # fmt: skip
    assert float(target_alpha.sum()) < float(uncut_alpha.sum())
    white = sample.target_images.min(1, keepdim=True).values > 0.99
    assert bool(white[target_alpha < 0.01].all())


def test_monocular_pairs_yield_class_1(tiny_model, shared_media):  # trains on ../shared/media
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
    # the loss covers the whole head (hair included) of the target and none of the clothes
    crops, masks = fit_tensors(pairs.fit(0))
    with torch.no_grad():
        parts = tiny_model.whole_head(crops[1:], masks[1:], fit_cameras(pairs.fit(0))[1:], sample.identity,
                                      sample.target_expressions).parts  # fmt: skip
    hair, clothes = parts.hair > 0.5, parts.clothes > 0.5
    assert int(hair.sum()) > 0.02 * hair.numel() and int(clothes.sum()) > 0.02 * clothes.numel()
    assert bool((sample.loss_region[hair] == 1).all())
    # clothes count as background: the avatar must leave them white, not paint a shirt
    assert bool((sample.loss_region[clothes] == 1).all())
    assert bool((sample.target_images.permute(1, 0, 2, 3)[:, clothes[:, 0]] == 1).all())
    assert float(crops[1:].permute(1, 0, 2, 3)[:, clothes[:, 0]].mean()) < 0.5  # a dark shirt in the frame
    assert float(sample.pixel_weight.max()) == pytest.approx(3.0)  # mouth box on a frontal frame
    assert pairs.target_expressions().shape == (2, NUM_EXPRESSIONS)
    # the source's inner-lip polygon, for encode as inference passes it: around the mouth, in the crop
    openings = sample.mouth_openings
    assert openings.shape == (1, 20, 2) and bool(((openings > 0) & (openings < size)).all())
    landmarks = torch.from_numpy(pairs.fit(0)["mouth_openings"][0])
    assert torch.equal(openings[0], landmarks) and sample.to("cpu").mouth_openings is not None


def test_sampler_raises_mass_of_rare_expressions(capsys):
    rng = np.random.default_rng(0)
    codes = np.clip(rng.normal(0.05, 0.04, (200, NUM_EXPRESSIONS)), 0, 1).astype(
        np.float32
    )  # talking: near neutral
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


def test_show_sampler_command(capsys, shared_media):  # reads ../shared/media
    assert train_main(["--show-sampler", "--config", "tiny", "--num-pairs", "2"]) == 0
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
    out, first_log, _ = tiny_run
    log = _read_log(out / "log.csv")
    steps = [int(row["step"]) for row in log]
    assert steps == list(range(1, 26))  # 1-20, then 21-25 appended by the resumed run
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 25
    assert float(log[20]["loss"]) < np.mean([float(r["loss"]) for r in first_log[:3]])  # not from scratch
    model = FlexAvatarModel.from_pretrained(str(out))
    assert model.config.name == "tiny"
    card = (out / "README.md").read_text()  # the model card describes the final (resumed) run
    assert card.startswith("---\nlicense: mit") and "`tiny` checkpoint" in card and "steps: 25," in card


def test_eval_command_runs_on_two_frames(tiny_run, tmp_path, capsys):
    out, _, _ = tiny_run
    report = tmp_path / "eval.json"
    assert eval_main(["--weights", str(out), "--frames", "2", "--refine-seconds", "1", "--json", str(report),
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

"""Round trip and layout of the standard 3DGS .ply export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexavatar.export import PLY_PROPERTIES, SH_C0, load_ply, save_ply
from flexavatar.head.blendshapes import NUM_EXPRESSIONS


def gaussians(n=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.1
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.empty(n, 3).uniform_(-7, -3, generator=g))
    opacities = torch.empty(n).uniform_(0.01, 0.99, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opacities, colors


def test_round_trip(tmp_path):
    original = gaussians()
    path = save_ply(tmp_path / "avatar.ply", *original)
    loaded = load_ply(path)
    names = ["means", "quats", "scales", "opacities", "colors"]
    for name, want, got in zip(names, original, loaded, strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
    means, quats, scales, opacities, colors = loaded
    # Stored verbatim as float32: exact.
    assert torch.equal(means, original[0]) and torch.equal(quats, original[1])
    # Through log/exp, logit/sigmoid and the SH DC affine map, stored as float32: float32 rounding.
    assert torch.allclose(scales, original[2], rtol=1e-6, atol=0)
    assert torch.allclose(opacities, original[3], rtol=1e-6, atol=0)
    assert torch.allclose(colors, original[4], rtol=1e-6, atol=1e-7)


def test_standard_layout(tmp_path):
    means, quats, scales, opacities, colors = gaussians(5)
    path = save_ply(tmp_path / "a.ply", means, quats, scales, opacities, colors)
    raw = path.read_bytes()
    header, body = raw.split(b"end_header\n")
    lines = header.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 5"]
    assert lines[3:] == [f"property float {name}" for name in PLY_PROPERTIES]
    data = np.frombuffer(body, dtype="<f4").reshape(5, len(PLY_PROPERTIES))
    column = {name: data[:, i] for i, name in enumerate(PLY_PROPERTIES)}
    np.testing.assert_array_equal(column["nx"], 0)
    np.testing.assert_allclose(column["f_dc_1"], (colors[:, 1].numpy() - 0.5) / SH_C0, rtol=1e-6)
    np.testing.assert_allclose(column["opacity"], torch.logit(opacities).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(column["scale_2"], torch.log(scales[:, 2]).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(column["rot_0"], quats[:, 0].numpy())  # w first


def test_empty_and_extra_properties(tmp_path):
    empty = [t[:0] for t in gaussians(3)]
    loaded = load_ply(save_ply(tmp_path / "empty.ply", *empty))
    assert [t.shape[0] for t in loaded] == [0] * 5
    # A trainer's file with higher SH bands (f_rest_*) loads; the extra bands are ignored.
    n = 4
    names = list(PLY_PROPERTIES) + [f"f_rest_{i}" for i in range(9)]
    values = np.random.default_rng(0).normal(size=(n, len(names))).astype("<f4")
    header = "\n".join(
        ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
        + [f"property float {name}" for name in names]
        + ["end_header\n"]
    )
    path = tmp_path / "trainer.ply"
    path.write_bytes(header.encode() + values.tobytes())
    means, *_ = load_ply(path)
    np.testing.assert_array_equal(means.numpy(), values[:, :3])


def test_rejects_non_gaussian_ply(tmp_path):
    mesh = tmp_path / "mesh.ply"
    mesh.write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
        b"property float z\nend_header\n" + np.zeros(3, "<f4").tobytes()
    )
    with pytest.raises(ValueError, match="not a 3D Gaussian splatting ply"):
        load_ply(mesh)
    text = tmp_path / "notes.ply"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match="not a PLY"):
        load_ply(text)
    ascii_ply = tmp_path / "ascii.ply"
    ascii_ply.write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        load_ply(ascii_ply)


def test_export_ply_applies_the_viewer_scale(untrained_model, tmp_path):
    """pipeline.export_ply(scale=space.VIEWER_SCALE) is the in-page viewer's copy: positions and sizes scaled,
    nothing else changed, and the head spans a couple of units around the origin (the in-page
    viewer orbits the origin from 5 units away)."""
    from flexavatar import pipeline
    from flexavatar.camera import focal_from_fov, orbit_camera
    from flexavatar.space import VIEWER_SCALE

    model = untrained_model
    size = model.config.crop_size
    camera = orbit_camera(0, 0, 0.7, model.head.head_centre(), focal_from_fov(22, size), size, size)
    with torch.no_grad():
        avatar = model.encode(torch.full((1, 3, size, size), 0.6), torch.ones(1, 1, size, size), [camera],
                              torch.zeros(model.config.num_identity), torch.zeros(1, NUM_EXPRESSIONS))  # fmt: skip
    plain = load_ply(pipeline.export_ply(avatar, tmp_path / "plain.ply", model=model))
    viewer = load_ply(pipeline.export_ply(avatar, tmp_path / "viewer.ply", model=model, scale=VIEWER_SCALE))
    assert torch.allclose(viewer[0], plain[0] * VIEWER_SCALE, rtol=1e-6, atol=1e-6)
    assert torch.allclose(viewer[2], plain[2] * VIEWER_SCALE, rtol=1e-5)
    for got, want in zip(viewer[1:2] + viewer[3:], plain[1:2] + plain[3:], strict=True):
        assert torch.equal(got, want)
    extent = viewer[0].max(0).values - viewer[0].min(0).values
    assert viewer[0].mean(0).abs().max() < 0.5 and 0.8 < extent.max() < 3.0, extent

"""ICT head model, expression name map, UV atlas and the converter, on the real asset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flexavatar.head import ICT_EXPRESSION_NAMES, MEDIAPIPE_BLENDSHAPE_NAMES, UVAtlas, mediapipe_to_ict
from flexavatar.head.atlas import REGION_NAMES
from flexavatar.head.blendshapes import EXPRESSION_INDEX, NUM_EXPRESSIONS
from flexavatar.head.model import HEAD_NECK_VERTICES


def expr(**weights):
    code = torch.zeros(1, NUM_EXPRESSIONS)
    for name, value in weights.items():
        code[0, EXPRESSION_INDEX[name]] = value
    return code


def test_units_are_metres(head):
    extent = head.neutral.max(0).values - head.neutral.min(0).values
    assert 0.2 < extent[0] < 0.3 and 0.25 < extent[1] < 0.4  # a head is ~25 cm wide, ~34 cm tall incl. neck
    assert head.neutral.dtype == torch.float32


def test_jaw_open_moves_chin_down_not_back_of_head(head):
    neutral = head.vertices(expression=expr())[0]
    open_ = head.vertices(expression=expr(jawOpen=1.0))[0]
    chin = head.landmarks_multipie68[8]
    assert neutral[chin, 1] - open_[chin, 1] > 0.01  # > 1 cm down
    lo, hi = HEAD_NECK_VERTICES
    back = neutral[lo : hi + 1, 2] < -0.05  # the back of the skull
    assert back.sum() > 100
    assert (open_[lo : hi + 1][back] - neutral[lo : hi + 1][back]).abs().max() < 1e-4  # 0.1 mm: fp16 noise


def test_identity_changes_shape_and_blendshapes_are_linear(head):
    gen = torch.Generator().manual_seed(0)
    ident = torch.randn(2, 10, generator=gen)
    a, b = torch.rand(1, NUM_EXPRESSIONS, generator=gen) * 0.5, torch.rand(1, NUM_EXPRESSIONS, generator=gen) * 0.5
    base = head.vertices(ident[:1], torch.zeros(1, NUM_EXPRESSIONS))
    other = head.vertices(ident[1:], torch.zeros(1, NUM_EXPRESSIONS))
    assert (base - other).norm(dim=-1).max() > 0.005
    lhs = head.vertices(ident[:1], a + b)
    rhs = head.vertices(ident[:1], a) + head.vertices(ident[:1], b) - base
    assert torch.allclose(lhs, rhs, atol=1e-6)


def test_vertices_batched_and_identity_mode_limit(head):
    out = head.vertices(torch.zeros(4, 5), torch.zeros(4, NUM_EXPRESSIONS))
    assert out.shape == (4, head.num_vertices, 3)
    with pytest.raises(ValueError, match="57"):
        head.vertices(expression=torch.zeros(1, 52))


def test_mediapipe_name_map():
    assert len(MEDIAPIPE_BLENDSHAPE_NAMES) == 52 and len(ICT_EXPRESSION_NAMES) == 57
    scores = {name: 0.0 for name in MEDIAPIPE_BLENDSHAPE_NAMES}
    scores.update(browInnerUp=0.7, jawLeft=0.4, eyeBlinkLeft=0.9, mouthSmileRight=0.6, _neutral=1.0)
    ict = mediapipe_to_ict(scores)
    assert ict[EXPRESSION_INDEX["browInnerUp_L"]] == ict[EXPRESSION_INDEX["browInnerUp_R"]] == pytest.approx(0.7)
    assert ict[EXPRESSION_INDEX["jawLeft"]] == pytest.approx(0.4)
    assert ict[EXPRESSION_INDEX["eyeBlink_L"]] == pytest.approx(0.9)
    assert ict[EXPRESSION_INDEX["mouthSmile_R"]] == pytest.approx(0.6)
    extras = ["cheekRaiser_L", "cheekRaiser_R", "PupilDilate_L", "PupilDilate_R"]
    assert all(ict[EXPRESSION_INDEX[n]] == 0 for n in extras)
    assert ict.sum() == pytest.approx(0.7 * 2 + 0.4 + 0.9 + 0.6)


@pytest.mark.parametrize("resolution", [128, 256])
def test_atlas_regions_and_samples(head, resolution, capsys):
    atlas = UVAtlas.for_head(head, resolution)
    counts = atlas.region_counts()
    with capsys.disabled():
        print(f"\natlas R={resolution}: {atlas.num_texels} texels {counts}")
    assert set(counts) == set(REGION_NAMES) and all(c > 0 for c in counts.values())
    assert counts["face"] == max(counts.values())
    assert atlas.mask.sum() == atlas.num_texels
    # every texel maps onto the mesh: a real triangle, barycentrics in [0,1] summing to 1
    assert (atlas.texel_triangle >= 0).all() and (atlas.texel_triangle < head.triangles.shape[0]).all()
    assert (atlas.barycentric >= 0).all() and (atlas.barycentric <= 1).all()
    assert torch.allclose(atlas.barycentric.sum(1), torch.ones(atlas.num_texels), atol=1e-6)
    # no two texels share a flat index
    assert atlas.texel_index.unique().numel() == atlas.num_texels


def test_surface_points_and_position_map_round_trip(head, atlas128):
    verts = head.vertices(torch.zeros(1, 10), torch.zeros(1, NUM_EXPRESSIONS))
    points = atlas128.surface_points(verts)
    tri = head.triangles[atlas128.texel_triangle]
    reference = (verts[0][tri] * atlas128.barycentric[:, :, None]).sum(1)
    assert (points[0] - reference).abs().max() < 1e-6
    pos_map = atlas128.position_map(verts)
    assert pos_map.shape == (1, 3, 128, 128)
    assert (pos_map[0, :, ~atlas128.mask] == 0).all()
    assert torch.equal(atlas128.gather(pos_map), points)


def test_tangent_frames_are_rotations_with_outward_face_normals(head, atlas128):
    verts = head.vertices()
    frames = atlas128.tangent_frames(verts)[0]
    eye = torch.eye(3).expand_as(frames)
    assert torch.allclose(frames.transpose(1, 2) @ frames, eye, atol=1e-4)
    assert torch.allclose(torch.linalg.det(frames), torch.ones(len(frames)), atol=1e-4)
    face = atlas128.region_mask("face")
    outward = ((atlas128.surface_points(verts)[0] - head.head_centre()) * frames[:, :, 2]).sum(-1)
    assert (outward[face] > 0).float().mean() > 0.9


CONVERTER = Path(__file__).resolve().parents[1] / "scripts" / "convert_ict.py"


def run_converter(*args, cwd) -> subprocess.CompletedProcess:
    """The README's command, ``python scripts/convert_ict.py ...``, run from ``cwd``."""
    return subprocess.run([sys.executable, str(CONVERTER), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_converter_reproduces_shipped_arrays(tmp_path, shared_assets):
    out = tmp_path / "ict.npz"
    done = run_converter(shared_assets / "ict_facekit" / "raw_subset", out, "--allow-missing", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    ours, shipped = np.load(out), np.load(shared_assets / "ict_facekit" / "ict_facekit.npz")
    for key in ["neutral", "triangles", "uvs", "triangle_uvs", "triangle_material", "material_names",
                "vertex_region", "region_names", "landmarks_multipie68", "fitting_vertices",
                "rigid_vertices", "expression_names"]:  # fmt: skip
        assert np.array_equal(ours[key], shipped[key]), key
    names = list(shipped["expression_names"])
    for name in ["jawOpen", "eyeBlink_L"]:
        i = names.index(name)
        assert np.array_equal(ours["expression_deltas"][i], shipped["expression_deltas"][i]), name
    for i in range(2):
        assert np.array_equal(ours["identity_deltas"][i], shipped["identity_deltas"][i])
    assert "jawOpen" not in set(ours["missing_shapes"]) and "browDown_L" in set(ours["missing_shapes"])


def test_converter_refuses_partial_release_without_flag(tmp_path, shared_assets):
    done = run_converter(shared_assets / "ict_facekit" / "raw_subset", tmp_path / "x.npz", cwd=tmp_path)
    assert done.returncode == 2 and "allow-missing" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.npz").exists()
    done = run_converter(tmp_path / "no_such_folder", tmp_path / "x.npz", cwd=tmp_path)
    assert done.returncode == 2 and "pass the FaceXModel folder" in done.stderr

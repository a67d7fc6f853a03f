"""Tests of flexavatar.render.rasterize against a plain dense reference, gradients, conventions."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import flexavatar.render.rasterizer as rasterizer_module
from flexavatar.camera import Camera, intrinsics, look_at, orbit_camera, stack_cameras
from flexavatar.render import rasterize
from flexavatar.render.numba_backend import numba_available

CPU_BACKENDS = ["torch"] + (["numba"] if numba_available() else [])


# ----------------------------------------------------------------------------------------------
# Dense reference: every Gaussian against every pixel, written as plainly as possible after
# gsplat 1.5.3 (projection_ewa_3dgs_fused + rasterize_to_pixels_3dgs_fwd, classic, eps2d=0.3).
# No tiles and no screen-space radius: a correct tile binning must not change the result.
# ----------------------------------------------------------------------------------------------


def reference_render(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, near=0.01, far=1e10
):
    C = viewmats.shape[0]
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )
    S = torch.diag_embed(scales)
    covars = R @ S @ S @ R.transpose(-1, -2)  # [N,3,3]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix_x = xs.flatten().to(means.dtype) + 0.5
    pix_y = ys.flatten().to(means.dtype) + 0.5
    rgbs, alphas, depths = [], [], []
    for c in range(C):
        Rc, tc = viewmats[c, :3, :3], viewmats[c, :3, 3]
        fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]
        p = means @ Rc.T + tc
        cov_c = Rc @ covars @ Rc.T
        px, py, pz = p.unbind(-1)
        tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
        lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
        lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
        tx = pz * torch.clamp(px / pz, -lim_xn, lim_xp)
        ty = pz * torch.clamp(py / pz, -lim_yn, lim_yp)
        zero = torch.zeros_like(pz)
        J = torch.stack(
            [
                torch.stack([fx / pz, zero, -fx * tx / pz**2], -1),
                torch.stack([zero, fy / pz, -fy * ty / pz**2], -1),
            ],
            dim=-2,
        )
        cov2d = J @ cov_c @ J.transpose(-1, -2) + 0.3 * torch.eye(2, dtype=means.dtype)
        conic = torch.linalg.inv(cov2d)
        mean2d = torch.stack([fx * px / pz + cx, fy * py / pz + cy], -1)

        rgb = torch.zeros(height * width, 3, dtype=means.dtype)
        depth = torch.zeros(height * width, dtype=means.dtype)
        T = torch.ones(height * width, dtype=means.dtype)
        done = torch.zeros(height * width, dtype=torch.bool)
        for g in torch.sort(pz, stable=True)[1].tolist():
            if not (near <= pz[g] <= far):
                continue
            dx = mean2d[g, 0] - pix_x
            dy = mean2d[g, 1] - pix_y
            sigma = 0.5 * (conic[g, 0, 0] * dx * dx + conic[g, 1, 1] * dy * dy) + conic[g, 0, 1] * dx * dy
            alpha = torch.clamp_max(opacities[g] * torch.exp(-sigma), 0.999)
            contributes = (sigma >= 0) & (alpha >= 1.0 / 255.0) & ~done
            next_T = T * (1 - alpha)
            stops = contributes & (next_T <= 1e-4)  # stop *before* this Gaussian
            done = done | stops
            use = contributes & ~stops
            weight = torch.where(use, alpha * T, torch.zeros_like(T))
            rgb = rgb + weight[:, None] * colors[g]
            depth = depth + weight * pz[g]
            T = torch.where(use, next_T, T)
        rgbs.append(rgb.reshape(height, width, 3))
        alphas.append((1 - T).reshape(height, width, 1))
        depths.append(depth.reshape(height, width, 1))
    return torch.stack(rgbs), torch.stack(alphas), torch.stack(depths)


def random_scene(n, seed, dtype=torch.float32):
    """Gaussians in a box in front of the cameras, with a few behind the camera, off-screen,
    and a stack of nearly opaque ones so the 1e-4 early stop is exercised."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([0.5, 0.6, 0.4])
    means[: n // 10, 2] = 3.0  # behind the cameras at z = 2 looking at the origin: culled
    means[n // 10 : n // 5, 0] += 1.5  # well off-screen to the side
    quats = torch.randn(n, 4, generator=g) * 2.0  # not normalised on purpose
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.005), math.log(0.05), generator=g))
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g)
    stack = slice(n // 5, n // 5 + 12)
    means[stack] = torch.tensor([0.02, -0.01, 0.0]) + 0.01 * torch.randn(12, 3, generator=g)
    opacities[stack] = 0.98
    scales[stack] = 0.06
    return [t.to(dtype) for t in (means, quats, scales, opacities, colors)]


def two_cameras(width=40, height=32, dtype=torch.float32):
    cams = [
        orbit_camera(0.0, 0.0, 2.0, (0.0, 0.0, 0.0), 45.0, width, height),
        Camera(look_at(torch.tensor([0.6, 0.3, 1.8]), torch.tensor([0.05, 0.0, 0.0])),
               torch.tensor([[50.0, 0.0, 19.0], [0.0, 47.0, 17.5], [0.0, 0.0, 1.0]]), width, height),
    ]  # fmt: skip
    viewmats, Ks = stack_cameras(cams)
    return viewmats.to(dtype), Ks.to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seed,n", [(0, 50), (1, 120), (2, 200)])
def test_matches_dense_reference(backend, seed, n):
    scene = random_scene(n, seed)
    viewmats, Ks = two_cameras()
    rgb, alpha, depth = rasterize(*scene, viewmats, Ks, 40, 32, backend=backend)
    ref_rgb, ref_alpha, ref_depth = reference_render(*scene, viewmats, Ks, 40, 32)
    assert rgb.shape == (2, 32, 40, 3) and alpha.shape == (2, 32, 40, 1) and depth.shape == (2, 32, 40, 1)
    assert ref_alpha.max() > 0.999  # the early stop was reached somewhere
    assert (rgb - ref_rgb).abs().max() < 1e-4
    assert (alpha - ref_alpha).abs().max() < 1e-4
    assert (depth - ref_depth).abs().max() < 1e-4


def per_camera_scene(n, seed):
    """Two different Gaussian sets stacked [2,N,...], one per camera of two_cameras()."""
    sets = [random_scene(n, seed), random_scene(n, seed + 100)]
    return [torch.stack(parts) for parts in zip(*sets, strict=True)], sets


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_per_camera_gaussians_match_dense_reference(backend):
    """[C,N,...] Gaussians: camera c sees set c only, in one call, as the reference renders it."""
    stacked, sets = per_camera_scene(120, 20)
    viewmats, Ks = two_cameras()
    rgb, alpha, depth = rasterize(*stacked, viewmats, Ks, 40, 32, background=torch.tensor([0.2, 0.4, 0.6]),
                                  backend=backend)  # fmt: skip
    assert rgb.shape == (2, 32, 40, 3) and alpha.shape == (2, 32, 40, 1) and depth.shape == (2, 32, 40, 1)
    for c in range(2):
        ref_rgb, ref_alpha, ref_depth = reference_render(*sets[c], viewmats[c : c + 1], Ks[c : c + 1], 40, 32)
        ref_rgb = ref_rgb + (1 - ref_alpha) * torch.tensor([0.2, 0.4, 0.6])
        assert (rgb[c : c + 1] - ref_rgb).abs().max() < 1e-4
        assert (alpha[c : c + 1] - ref_alpha).abs().max() < 1e-4
        assert (depth[c : c + 1] - ref_depth).abs().max() < 1e-4
    # the sets differ, so a mix-up of sets and cameras would show
    other = rasterize(*sets[1], viewmats[:1], Ks[:1], 40, 32, backend=backend)[1]
    assert (other - alpha[:1]).abs().max() > 0.1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_per_camera_gaussians_sh_and_gradients(backend):
    """Per-camera SH colours, and gradients that flow to each set from its own camera only."""
    stacked, sets = per_camera_scene(60, 30)
    viewmats, Ks = two_cameras()
    sh = torch.zeros(2, 60, 4, 3)
    sh[:, :, 0] = (stacked[4] - 0.5) / 0.28209479177387814
    rgb_sh = rasterize(*stacked[:4], sh, viewmats, Ks, 40, 32, backend=backend)[0]
    rgb = rasterize(*stacked, viewmats, Ks, 40, 32, backend=backend)[0]
    assert (rgb_sh - rgb).abs().max() < 1e-5
    inputs = [t.clone().requires_grad_(True) for t in stacked]
    rgb, alpha, _ = rasterize(*inputs, viewmats, Ks, 40, 32, backend=backend)
    (rgb[1].sum() + alpha[1].sum()).backward()  # camera 1 only
    assert inputs[0].grad[0].abs().max() == 0 and inputs[0].grad[1].abs().max() > 0
    alone = [t.clone().requires_grad_(True) for t in sets[1]]
    rgb1, alpha1, _ = rasterize(*alone, viewmats[1:], Ks[1:], 40, 32, backend=backend)
    (rgb1.sum() + alpha1.sum()).backward()
    for batched, single in zip(inputs, alone, strict=True):
        assert torch.allclose(batched.grad[1], single.grad, rtol=1e-4, atol=1e-6)


def test_backends_agree_on_sh_dc_colors():
    means, quats, scales, opacities, colors = random_scene(80, 5)
    sh = torch.zeros(80, 4, 3)
    sh[:, 0] = (colors - 0.5) / 0.28209479177387814  # degree 0 only; higher bands ignored
    sh[:, 1:] = 0.3
    viewmats, Ks = two_cameras()
    rgb_sh = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, 40, 32, backend="torch")[0]
    rgb = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 40, 32, backend="torch")[0]
    assert (rgb_sh - rgb).abs().max() < 1e-5
    for backend in CPU_BACKENDS:
        other = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, 40, 32, backend=backend)[0]
        assert (other - rgb_sh).abs().max() < 1e-5


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


def smooth_scene():
    """Three large, half-transparent Gaussians covering a tiny image: every pixel sees every
    Gaussian far above the 1/255 cut and far below the 0.999 clamp, and T stays >> 1e-4, so the
    render is smooth in all inputs (finite differences are valid)."""
    means = torch.tensor([[0.01, -0.02, 0.0], [-0.03, 0.02, 0.05], [0.02, 0.03, -0.04]], dtype=torch.float64)
    quats = torch.tensor(
        [[1.0, 0.2, -0.1, 0.3], [0.8, -0.3, 0.4, 0.1], [0.5, 0.5, 0.2, -0.6]], dtype=torch.float64
    )
    scales = torch.tensor([[0.06, 0.04, 0.05], [0.05, 0.07, 0.03], [0.04, 0.05, 0.06]], dtype=torch.float64)
    opacities = torch.tensor([0.5, 0.6, 0.4], dtype=torch.float64)
    colors = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=torch.float64)
    viewmats = look_at(torch.tensor([0.1, 0.05, 1.0]), torch.zeros(3))[None].double()
    Ks = intrinsics(100.0, 8, 6)[None].double()
    return [means, quats, scales, opacities, colors], viewmats, Ks


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck(backend):
    inputs, viewmats, Ks = smooth_scene()
    inputs = [t.clone().requires_grad_(True) for t in inputs]

    def render(*gaussians):
        return rasterize(*gaussians, viewmats, Ks, 8, 6, backend=backend)

    rgb, alpha, depth = render(*inputs)
    assert alpha.min() > 0.5 and alpha.max() < 0.99  # all pixels covered, none saturated
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    (rgb.sum() + alpha.sum() + depth.sum()).backward()
    for name, tensor in zip(["means", "quats", "scales", "opacities", "colors"], inputs, strict=True):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name


def test_numba_gradients_match_torch():
    if not numba_available():
        pytest.skip("numba not installed")
    scene = random_scene(150, 7, dtype=torch.float64)
    viewmats, Ks = two_cameras(dtype=torch.float64)
    weights = torch.rand(2, 32, 40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = {}
    for backend in ("torch", "numba"):
        inputs = [t.clone().requires_grad_(True) for t in scene]
        rgb, alpha, depth = rasterize(*inputs, viewmats, Ks, 40, 32, backend=backend)
        (torch.cat([rgb, alpha, depth], -1) * weights).sum().backward()
        grads[backend] = [t.grad for t in inputs]
    for g_torch, g_numba in zip(grads["torch"], grads["numba"], strict=True):
        assert torch.allclose(g_torch, g_numba, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Conventions and edge cases
# ----------------------------------------------------------------------------------------------


def single_gaussian(point, scale=0.001, opacity=0.99, dtype=torch.float32):
    return (
        torch.tensor([point], dtype=dtype),
        torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype),
        torch.full((1, 3), scale, dtype=dtype),
        torch.tensor([opacity], dtype=dtype),
        torch.tensor([[1.0, 1.0, 1.0]], dtype=dtype),
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_camera_convention(backend):
    width, height = 64, 48
    camera = Camera(
        look_at(torch.tensor([0.3, 0.2, 1.5]), torch.tensor([0.0, 0.05, 0.0])),
        torch.tensor([[70.0, 0.0, 30.0], [0.0, 72.0, 25.0], [0.0, 0.0, 1.0]]),
        width,
        height,
    )
    point = torch.tensor([0.08, 0.12, -0.05])
    uvw = camera.K @ (camera.viewmat[:3, :3] @ point + camera.viewmat[:3, 3])
    u, v = (uvw[:2] / uvw[2]).tolist()
    _, alpha, depth = rasterize(*single_gaussian(point.tolist()), camera.viewmat[None], camera.K[None],
                                width, height, backend=backend)  # fmt: skip
    row, col = divmod(int(alpha[0, ..., 0].argmax()), width)
    assert (col, row) == (math.floor(u), math.floor(v))
    # The expected depth at the peak is the camera-space z of the point.
    peak = alpha[0, row, col, 0]
    assert abs(depth[0, row, col, 0] / peak - uvw[2]) < 1e-4

    behind = (2 * camera.position - point).tolist()  # mirrored through the camera centre
    _, alpha_behind, _ = rasterize(*single_gaussian(behind), camera.viewmat[None], camera.K[None],
                                   width, height, backend=backend)  # fmt: skip
    assert alpha_behind.abs().max() == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_background_and_multiple_cameras(backend):
    scene = random_scene(100, 3)
    viewmats, Ks = two_cameras()
    rgb, alpha, depth = rasterize(*scene, viewmats, Ks, 40, 32, backend=backend)
    background = torch.tensor([0.2, 0.5, 1.0])
    rgb_bg, alpha_bg, depth_bg = rasterize(
        *scene, viewmats, Ks, 40, 32, background=background, backend=backend
    )
    assert torch.allclose(rgb_bg, rgb + (1 - alpha) * background, atol=1e-6)
    assert torch.equal(alpha_bg, alpha) and torch.equal(depth_bg, depth)
    per_camera = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    rgb_pc = rasterize(*scene, viewmats, Ks, 40, 32, background=per_camera, backend=backend)[0]
    assert torch.allclose(rgb_pc, rgb + (1 - alpha) * per_camera[:, None, None, :], atol=1e-6)
    # Each camera of a batch renders as it would alone.
    for c in range(2):
        single = rasterize(*scene, viewmats[c : c + 1], Ks[c : c + 1], 40, 32, backend=backend)
        for batched, alone in zip((rgb, alpha, depth), single, strict=True):
            assert torch.allclose(batched[c : c + 1], alone, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n", [0, 5])
def test_empty_scene(backend, n):
    viewmats, Ks = two_cameras()
    # All behind the cameras (or no Gaussians at all).
    means = torch.tensor([[0.0, 0.0, 5.0]]).repeat(n, 1)
    scene = (means, torch.randn(n, 4), torch.full((n, 3), 0.01), torch.full((n,), 0.9), torch.rand(n, 3))
    background = torch.tensor([0.1, 0.2, 0.3])
    rgb, alpha, depth = rasterize(*scene, viewmats, Ks, 40, 32, background=background, backend=backend)
    assert torch.equal(rgb, background.expand(2, 32, 40, 3))
    assert alpha.abs().max() == 0 and depth.abs().max() == 0


def test_bad_arguments():
    scene = random_scene(40, 0)
    viewmats, Ks = two_cameras()
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(*scene, viewmats, Ks, 40, 32, backend="gsplat")
    with pytest.raises(ValueError, match="backend"):
        rasterize(*scene, viewmats, Ks, 40, 32, backend="opengl")
    with pytest.raises(ValueError, match="quats"):
        rasterize(scene[0], scene[1][:, :3], *scene[2:], viewmats, Ks, 40, 32)
    three_sets = [t.expand(3, *t.shape) for t in scene]  # 3 Gaussian sets for 2 cameras
    with pytest.raises(ValueError, match="means"):
        rasterize(*three_sets, viewmats, Ks, 40, 32)
    two_sets = [t.expand(2, *t.shape) for t in scene]
    with pytest.raises(ValueError, match="opacities"):
        rasterize(*two_sets[:3], scene[3], two_sets[4], viewmats, Ks, 40, 32)


def test_auto_falls_back_when_gsplat_fails(monkeypatch):
    """On a machine with CUDA but no toolkit, gsplat's JIT build fails: auto warns once and
    renders with the torch backend instead."""
    calls = []

    def broken_gsplat(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("nvcc not found (simulated)")

    import flexavatar.render.gsplat_backend as gsplat_backend

    monkeypatch.setattr(gsplat_backend, "rasterize_gsplat", broken_gsplat)
    monkeypatch.setattr(rasterizer_module, "_is_cuda", lambda tensor: True)
    monkeypatch.setattr(rasterizer_module, "_gsplat_unavailable_reason", None)
    scene = random_scene(60, 4)
    viewmats, Ks = two_cameras()
    expected = rasterize(*scene, viewmats, Ks, 40, 32, backend="torch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = rasterize(*scene, viewmats, Ks, 40, 32, backend="auto")
        second = rasterize(*scene, viewmats, Ks, 40, 32, backend="auto")
    fallback_warnings = [w for w in caught if "falling back" in str(w.message)]
    assert len(fallback_warnings) == 1 and "nvcc not found" in str(fallback_warnings[0].message)
    assert len(calls) == 1  # not retried after the first failure
    for out in (first, second):
        for got, want in zip(out, expected, strict=True):
            assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_parity_with_gsplat():
    scene = [t.cuda() for t in random_scene(200, 11)]
    viewmats, Ks = (t.cuda() for t in two_cameras())
    gs = rasterize(*scene, viewmats, Ks, 40, 32, backend="gsplat")
    ours = rasterize(*scene, viewmats, Ks, 40, 32, backend="torch")
    for got, want in zip(ours, gs, strict=True):
        assert (got - want).abs().max() < 1e-4
    stacked = [t.cuda() for t in per_camera_scene(200, 12)[0]]  # per-camera sets: gsplat's batch dim
    gs = rasterize(*stacked, viewmats, Ks, 40, 32, backend="gsplat")
    ours = rasterize(*stacked, viewmats, Ks, 40, 32, backend="torch")
    for got, want in zip(ours, gs, strict=True):
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4


def test_numba_binning_matches_torch():
    if not numba_available():
        pytest.skip("numba not installed")
    from flexavatar.render.numba_backend import bin_gaussians_to_tiles_numba
    from flexavatar.render.projection import bin_gaussians_to_tiles, project_gaussians

    scene = random_scene(300, 9)
    viewmats, Ks = two_cameras()
    projected = project_gaussians(*scene[:4], viewmats, Ks, 40, 32)
    for tile_size in (8, 16):
        want = bin_gaussians_to_tiles(projected, 40, 32, tile_size)
        got = bin_gaussians_to_tiles_numba(projected, 40, 32, tile_size)
        assert torch.equal(got.pair_gaussian, want.pair_gaussian)
        assert torch.equal(got.tile_offsets, want.tile_offsets)

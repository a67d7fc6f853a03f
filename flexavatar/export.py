"""Avatar exports. ``.ply``: the standard 3D Gaussian splatting layout (Kerbl et al. 2023).

The file is binary little-endian with one ``vertex`` element of float32 properties
``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3``,
which is what the usual viewers (SuperSplat, antimatter15/splat, the INRIA viewer) read:

- position in metres (our canonical head space), normals zero;
- colour as the degree-0 SH coefficient: ``f_dc = (rgb - 0.5) / SH_C0``;
- ``opacity`` stored as a logit, ``scale_*`` as natural logs (the optimiser's parameters);
- ``rot_*`` the quaternion wxyz as given (viewers normalise; we do not, so it round-trips).

Only numpy and torch are imported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SH_C0 = 0.28209479177387814
PLY_PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip
# Opacities are clamped into (eps, 1 - eps) before the logit so 0 and 1 stay finite.
_OPACITY_EPS = 1e-7


def save_ply(
    path: str | Path,
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
) -> Path:
    """Write Gaussians as a standard 3DGS ``.ply``; returns the path.

    means [N,3] m, quats [N,4] wxyz, scales [N,3] m (linear, > 0), opacities [N] in [0,1],
    colors [N,3] RGB in [0,1] (stored as SH DC), any float dtype/device.
    """
    path = Path(path)
    means, quats, scales, opacities, colors = (
        t.detach().to("cpu", torch.float64) for t in (means, quats, scales, opacities, colors)
    )
    n = means.shape[0]
    if not (means.shape == (n, 3) and quats.shape == (n, 4) and scales.shape == (n, 3)
            and opacities.shape == (n,) and colors.shape == (n, 3)):  # fmt: skip
        raise ValueError(
            "save_ply expects means [N,3], quats [N,4], scales [N,3], opacities [N], colors [N,3]; got "
            f"{[tuple(t.shape) for t in (means, quats, scales, opacities, colors)]}"
        )
    opacity = opacities.clamp(_OPACITY_EPS, 1 - _OPACITY_EPS)
    columns = [
        means,
        torch.zeros(n, 3, dtype=torch.float64),
        (colors - 0.5) / SH_C0,
        torch.log(opacity / (1 - opacity))[:, None],
        torch.log(scales),
        quats,
    ]
    data = torch.cat(columns, dim=1).numpy().astype("<f4")
    vertices = np.empty(n, dtype=[(name, "<f4") for name in PLY_PROPERTIES])
    for i, name in enumerate(PLY_PROPERTIES):
        vertices[name] = data[:, i]
    header = "\n".join(
        ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
        + [f"property float {name}" for name in PLY_PROPERTIES]
        + ["end_header"]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write((header + "\n").encode("ascii"))
        f.write(vertices.tobytes())
    return path


def load_ply(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read a 3DGS ``.ply`` written by :func:`save_ply` or a 3DGS trainer.

    Returns float32 (means [N,3], quats [N,4] wxyz, scales [N,3] linear, opacities [N] in (0,1),
    colors [N,3] RGB from the SH DC term). Extra properties (normals, higher SH bands ``f_rest_*``)
    are ignored. Raises ValueError for anything that is not a binary little-endian 3DGS ply.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file (no 'ply' magic / 'end_header')")
    header_lines = raw[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in header_lines:
        raise ValueError(f"{path}: only binary_little_endian PLY is supported")
    n, properties, in_vertex = None, [], False
    type_map = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1",
                "uint8": "u1", "int": "<i4", "int32": "<i4", "uint": "<u4", "short": "<i2", "ushort": "<u2"}  # fmt: skip
    for line in header_lines:
        tokens = line.split()
        if tokens[:1] == ["element"]:
            if tokens[1] == "vertex":
                n, in_vertex = int(tokens[2]), True
            elif in_vertex or n is None:
                # Faces or other elements: only a leading vertex element is supported.
                raise ValueError(f"{path}: not a 3DGS ply (element {tokens[1]!r} besides vertices)")
        elif tokens[:1] == ["property"] and in_vertex:
            if tokens[1] == "list" or tokens[1] not in type_map:
                raise ValueError(f"{path}: unsupported vertex property {' '.join(tokens[1:])!r}")
            properties.append((tokens[2], type_map[tokens[1]]))
    names = [name for name, _ in properties]
    missing = [name for name in PLY_PROPERTIES if name not in names and not name.startswith("n")]
    if n is None or missing:
        raise ValueError(
            f"{path} is not a 3D Gaussian splatting ply: missing properties {missing or ['element vertex']}"
        )
    dtype = np.dtype(properties)
    body = raw[end + len(b"end_header\n") :]
    if len(body) < n * dtype.itemsize:
        raise ValueError(f"{path}: truncated ({len(body)} bytes of data, expected {n * dtype.itemsize})")
    vertices = np.frombuffer(body, dtype=dtype, count=n)

    def columns(*keys: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([vertices[k].astype(np.float64) for k in keys], axis=1))

    means = columns("x", "y", "z")
    f_dc = columns("f_dc_0", "f_dc_1", "f_dc_2")
    opacity_logit = columns("opacity")[:, 0]
    log_scales = columns("scale_0", "scale_1", "scale_2")
    quats = columns("rot_0", "rot_1", "rot_2", "rot_3")
    return (
        means.float(),
        quats.float(),
        torch.exp(log_scales).float(),
        torch.sigmoid(opacity_logit).float(),
        (f_dc * SH_C0 + 0.5).float(),
    )

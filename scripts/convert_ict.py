"""Build ``ict_facekit.npz`` from the public ICT-FaceKit release (an offline tool, not part of the package).

Usage, from the repository root::

    python scripts/convert_ict.py ICT-FaceKit/FaceXModel ict_facekit.npz

Reads ``generic_neutral_mesh.obj``, one OBJ per expression (``jawOpen.obj`` …) and per
identity mode (``identity000.obj`` …), and ``vertex_indices.json``. Quads are fan-
triangulated with corners (0,1,2), (0,2,3); OBJ indices become 0-based; deltas are stored
as float16 offsets from the neutral mesh in centimetres (the release's units). With
``--allow-missing`` absent shapes become zero deltas and are listed in ``missing_shapes``
(useful on a partial copy of the release).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# Run from a checkout without installing the package: the expression names come from it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flexavatar.head.blendshapes import ICT_EXPRESSION_NAMES  # noqa: E402

NUM_IDENTITY = 100

#: First vertex of each region, from the ICT-FaceKit documentation (ranges run to the next start).
REGION_STARTS: tuple[tuple[str, int], ...] = (
    ("face", 0), ("head_neck", 9409), ("mouth_socket", 11248), ("eye_socket_left", 13294),
    ("eye_socket_right", 13678), ("gums_tongue", 14062), ("teeth", 17039), ("eyeball_left", 21451),
    ("eyeball_right", 23021), ("lacrimal_left", 24591), ("lacrimal_right", 24795),
    ("eyeblend_left", 24999), ("eyeblend_right", 25023), ("eye_occlusion_left", 25047),
    ("eye_occlusion_right", 25199), ("eyelashes_left", 25351), ("eyelashes_right", 26035),
)  # fmt: skip

LICENSE_NOTE = "MIT License\n\nCopyright (c) 2020 USC Institute for Creative Technologies"


def read_obj_vertices(path: Path) -> np.ndarray:
    """[V,3] float32 positions of the ``v`` lines of an OBJ file."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("v ")]
    return np.array([ln.split()[1:4] for ln in lines], dtype=np.float32)


def read_obj_topology(path: Path) -> dict[str, np.ndarray]:
    """Triangles, UVs and materials of an OBJ (quads fan-triangulated (0,1,2),(0,2,3))."""
    uvs, tris, tri_uvs, tri_mat, materials = [], [], [], [], []
    current = -1
    for line in path.read_text().splitlines():
        if line.startswith("vt "):
            uvs.append(line.split()[1:3])
        elif line.startswith("usemtl "):
            name = line.split(maxsplit=1)[1].strip()
            if name not in materials:
                materials.append(name)
            current = materials.index(name)
        elif line.startswith("f "):
            corners = [c.split("/") for c in line.split()[1:]]
            v = [int(c[0]) - 1 for c in corners]
            t = [int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in corners]
            for k in range(1, len(v) - 1):  # fan
                tris.append((v[0], v[k], v[k + 1]))
                tri_uvs.append((t[0], t[k], t[k + 1]))
                tri_mat.append(current)
    return {
        "triangles": np.array(tris, dtype=np.int32),
        "uvs": np.array(uvs, dtype=np.float32),
        "triangle_uvs": np.array(tri_uvs, dtype=np.int32),
        "triangle_material": np.array(tri_mat, dtype=np.int16),
        "material_names": np.array(materials),
    }


def convert(facekit_dir: str | Path, out_path: str | Path, allow_missing: bool = False) -> Path:
    """Convert a ``FaceXModel`` folder to the npz layout described in shared/assets/README.md."""
    src = Path(facekit_dir)
    neutral_path = src / "generic_neutral_mesh.obj"
    if not neutral_path.is_file():
        raise FileNotFoundError(f"{neutral_path} not found: pass the FaceXModel folder of ICT-FaceKit")
    neutral = read_obj_vertices(neutral_path)
    arrays: dict[str, np.ndarray] = {"neutral": neutral, **read_obj_topology(neutral_path)}
    missing: list[str] = []

    def deltas(names: list[str]) -> np.ndarray:
        out = np.zeros((len(names), *neutral.shape), dtype=np.float16)
        for i, name in enumerate(names):
            path = src / f"{name}.obj"
            if not path.is_file():
                if not allow_missing:
                    raise FileNotFoundError(f"{path} not found (use --allow-missing for a partial release)")
                missing.append(name)
                continue
            shape = read_obj_vertices(path)
            if shape.shape != neutral.shape:
                raise ValueError(f"{path}: {shape.shape[0]} vertices, the neutral mesh has {neutral.shape[0]}")
            out[i] = (shape - neutral).astype(np.float16)
        return out

    arrays["expression_names"] = np.array(ICT_EXPRESSION_NAMES)
    arrays["expression_deltas"] = deltas(list(ICT_EXPRESSION_NAMES))
    arrays["identity_deltas"] = deltas([f"identity{i:03d}" for i in range(NUM_IDENTITY)])
    region = np.zeros(len(neutral), dtype=np.int16)
    for index, (_, start) in enumerate(REGION_STARTS):
        region[start:] = index
    arrays["vertex_region"] = region
    arrays["region_names"] = np.array([name for name, _ in REGION_STARTS])
    indices = json.loads((src / "vertex_indices.json").read_text())
    arrays["landmarks_multipie68"] = np.array(indices["idx_to_landmark_verts"], dtype=np.int32)
    arrays["fitting_vertices"] = np.array(indices["idx_to_fitting_verts"], dtype=np.int32)
    arrays["rigid_vertices"] = np.array(indices["idx_to_rigid_verts"], dtype=np.int32)
    arrays["units"] = np.array("centimeters")
    arrays["license"] = np.array(LICENSE_NOTE)
    arrays["source"] = np.array(f"ICT-FaceKit FaceXModel converted from {src.name}; MIT license")
    arrays["missing_shapes"] = np.array(missing, dtype=str)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **arrays)
    return out_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("facekit_dir", help="the FaceXModel folder of the ICT-FaceKit release")
    parser.add_argument("out", help="output .npz path")
    parser.add_argument("--allow-missing", action="store_true", help="zero deltas for absent shape OBJs")
    args = parser.parse_args(argv)
    try:
        path = convert(args.facekit_dir, args.out, allow_missing=args.allow_missing)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))  # exits with status 2 and the message, no traceback
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

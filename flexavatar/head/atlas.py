"""One square UV atlas over the ICT head: every valid texel is one Gaussian.

ICT-FaceKit's UVs are multi-tile (face in u∈[0,1), back of head [1,2), gums/tongue [2,3),
teeth [3,4); sclera and iris of each eye reuse [0,1)). We pack the charts that carry
Gaussians into one square atlas on a grid of 8x8 cells; each chart keeps its aspect and gets
a square block:

====================  ======  ========================================================
chart (material)      cells   why
====================  ======  ========================================================
M_Face                5x5     the face carries identity and expression: most texels
M_BackHead            3x3     skull, ears, neck and the mouth/eye sockets
M_GumsTongue          2x2     mouth interior, seen when the jaw opens
M_Teeth               2x2
M_Sclera{Left,Right}  1x1     eyeballs (turned by the gaze, :mod:`flexavatar.head.gaze`)
M_Iris{Left,Right}    1x1
====================  ======  ========================================================

The render-only helper meshes (lacrimal fluid, eye blend, eye occlusion, eyelashes) are
left out on purpose: they are transparent overlays in ICT's own renderer, and as Gaussians
they would float in front of the eyes. Each valid texel stores (triangle, barycentric): its
Gaussian is anchored there, follows the deformed surface, and is rotated by the triangle's
tangent frame. A texel is valid when its centre falls inside a triangle of its chart
(where a chart overlaps itself, the first triangle in mesh order wins).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from flexavatar.head.model import load_ict_arrays

GRID = 8  # the atlas is GRID x GRID cells; block origins below are in cells (row, col, size)

#: name -> (material name, row, col, size in cells, UV tile index along u)
ATLAS_LAYOUT: dict[str, tuple[str, int, int, int, int]] = {
    "face": ("M_Face", 0, 0, 5, 0),
    "back_head": ("M_BackHead", 0, 5, 3, 1),
    "gums_tongue": ("M_GumsTongue", 3, 5, 2, 2),
    "teeth": ("M_Teeth", 5, 0, 2, 3),
    "sclera_left": ("M_ScleraLeft", 5, 2, 1, 0),
    "iris_left": ("M_IrisLeft", 5, 3, 1, 0),
    "sclera_right": ("M_ScleraRight", 6, 2, 1, 0),
    "iris_right": ("M_IrisRight", 6, 3, 1, 0),
}
REGION_NAMES: tuple[str, ...] = tuple(ATLAS_LAYOUT)
REGION_INDEX = {name: i for i, name in enumerate(REGION_NAMES)}


def _rasterize_chart(
    tri_uv: np.ndarray, size_px: int, tile: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels of a ``size_px`` square block covered by UV triangles ``tri_uv [T,3,2]``.

    Returns (row [M], col [M], local triangle index [M]) plus barycentrics via a second call;
    texel (r, c) has its centre at u = (c+0.5)/size, v = 1 - (r+0.5)/size inside the tile.
    """
    # Triangle corners in texel units (x right = u, y down = 1 - v).
    x = (tri_uv[..., 0] - tile) * size_px - 0.5
    y = (1.0 - tri_uv[..., 1]) * size_px - 0.5
    x0 = np.clip(np.floor(x.min(1)).astype(np.int64), 0, size_px - 1)
    x1 = np.clip(np.ceil(x.max(1)).astype(np.int64), 0, size_px - 1)
    y0 = np.clip(np.floor(y.min(1)).astype(np.int64), 0, size_px - 1)
    y1 = np.clip(np.ceil(y.max(1)).astype(np.int64), 0, size_px - 1)
    width, height = x1 - x0 + 1, y1 - y0 + 1
    counts = width * height
    tri_index = np.repeat(np.arange(len(tri_uv)), counts)
    # position of each candidate inside its triangle's bounding box
    start = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(counts.sum()) - start
    cols = x0[tri_index] + local % width[tri_index]
    rows = y0[tri_index] + local // width[tri_index]
    # barycentrics of the texel centre (cols, rows) in triangle (x, y)
    ax, ay = x[tri_index, 0], y[tri_index, 0]
    bx, by = x[tri_index, 1], y[tri_index, 1]
    cx, cy = x[tri_index, 2], y[tri_index, 2]
    det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    w0 = ((by - cy) * (cols - cx) + (cx - bx) * (rows - cy)) / det
    w1 = ((cy - ay) * (cols - cx) + (ax - cx) * (rows - cy)) / det
    w2 = 1.0 - w0 - w1
    eps = -1e-9
    inside = ok & (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
    bary = np.stack([w0, w1, w2], 1)[inside]
    bary = np.clip(bary, 0.0, 1.0)
    bary = bary / bary.sum(1, keepdims=True)
    return rows[inside], cols[inside], tri_index[inside], bary


@functools.lru_cache(maxsize=8)
def _build_atlas(npz_path: str, resolution: int):
    if resolution % GRID:
        raise ValueError(f"atlas resolution must be a multiple of {GRID}, got {resolution}")
    arrays = load_ict_arrays(npz_path)
    materials = [str(m) for m in arrays["material_names"]]
    cell = resolution // GRID
    owner = np.full((resolution, resolution), -1, dtype=np.int64)  # texel -> triangle
    bary_map = np.zeros((resolution, resolution, 3), dtype=np.float64)
    region_map = np.full((resolution, resolution), -1, dtype=np.int64)
    for region, (material, row, col, size, tile) in enumerate(ATLAS_LAYOUT.values()):
        tri_ids = np.nonzero(arrays["triangle_material"] == materials.index(material))[0]
        tri_uv = arrays["uvs"][arrays["triangle_uvs"][tri_ids]].astype(np.float64)
        rows, cols, local_tri, bary = _rasterize_chart(tri_uv, size * cell, tile)
        rows, cols = rows + row * cell, cols + col * cell
        # first triangle in mesh order wins where a chart overlaps itself
        order = np.lexsort((local_tri, rows * resolution + cols))
        flat = (rows * resolution + cols)[order]
        first = np.ones(len(flat), dtype=bool)
        first[1:] = flat[1:] != flat[:-1]
        keep = order[first]
        owner[rows[keep], cols[keep]] = tri_ids[local_tri[keep]]
        bary_map[rows[keep], cols[keep]] = bary[keep]
        region_map[rows[keep], cols[keep]] = region
    mask = owner >= 0
    texel_index = np.nonzero(mask.reshape(-1))[0]
    return {
        "mask": mask,
        "texel_index": texel_index,
        "triangle": owner.reshape(-1)[texel_index],
        "barycentric": bary_map.reshape(-1, 3)[texel_index].astype(np.float32),
        "region": region_map.reshape(-1)[texel_index],
    }


class UVAtlas(nn.Module):
    """Per-texel surface sampler of the ICT head for one atlas resolution R.

    Buffers: ``mask [R,R]`` bool; for the N valid texels in row-major order
    ``texel_index [N]`` (flat index into R*R), ``texel_vertices [N,3]`` (vertex ids of the
    anchoring triangle), ``barycentric [N,3]``, ``region [N]`` (index into
    :data:`REGION_NAMES`).
    """

    def __init__(self, triangles: torch.Tensor, npz_path: str, resolution: int = 128):
        super().__init__()
        built = _build_atlas(npz_path, resolution)
        self.resolution = resolution
        tensors = {
            "mask": torch.from_numpy(built["mask"]),
            "texel_index": torch.from_numpy(built["texel_index"]),
            "texel_triangle": torch.from_numpy(built["triangle"]),
            "texel_vertices": triangles.cpu()[torch.from_numpy(built["triangle"])].clone(),
            "barycentric": torch.from_numpy(built["barycentric"]),
            "region": torch.from_numpy(built["region"]),
        }
        for name, tensor in tensors.items():  # derived from the head asset: never saved
            self.register_buffer(name, tensor, persistent=False)
        self.to(triangles.device)

    @classmethod
    def for_head(cls, head, resolution: int = 128) -> UVAtlas:
        """Atlas over an :class:`~flexavatar.head.model.ICTHead` loaded from its npz."""
        return cls(head.triangles, str(head.npz_path), resolution)

    @property
    def num_texels(self) -> int:
        return int(self.texel_index.numel())

    def region_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.region.cpu(), minlength=len(REGION_NAMES))
        return {name: int(c) for name, c in zip(REGION_NAMES, counts)}

    def region_mask(self, *names: str) -> torch.Tensor:
        """[N] bool: texels of the named regions."""
        ids = torch.tensor([REGION_INDEX[n] for n in names], device=self.region.device)
        return torch.isin(self.region, ids)

    def _corners(self, vertices: torch.Tensor) -> torch.Tensor:
        """[B,N,3(corner),3(xyz)] triangle corners per texel."""
        batch = vertices.shape[0]
        flat = self.texel_vertices.reshape(-1)
        return vertices[:, flat].reshape(batch, -1, 3, 3)

    def surface_points(self, vertices: torch.Tensor) -> torch.Tensor:
        """Surface point of each valid texel: vertices [B,V,3] -> [B,N,3] (same units)."""
        corners = self._corners(vertices)
        return (corners * self.barycentric[None, :, :, None]).sum(2)

    def tangent_frames(self, vertices: torch.Tensor) -> torch.Tensor:
        """Local frame per texel, [B,N,3,3] rotation matrices with columns (tangent, bitangent, normal).

        From the anchoring triangle (edge v0->v1 as tangent), so it turns with the surface.
        """
        corners = self._corners(vertices)
        edge1 = corners[:, :, 1] - corners[:, :, 0]
        edge2 = corners[:, :, 2] - corners[:, :, 0]
        tangent = torch.nn.functional.normalize(edge1, dim=-1, eps=1e-12)
        normal = torch.nn.functional.normalize(torch.linalg.cross(edge1, edge2), dim=-1, eps=1e-12)
        bitangent = torch.linalg.cross(normal, tangent)
        return torch.stack([tangent, bitangent, normal], dim=-1)

    def surface_and_frames(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.surface_points(vertices), self.tangent_frames(vertices)

    def scatter(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Per-texel values [B,N,C] -> UV map [B,C,R,R] (invalid texels = ``fill``)."""
        batch, _, channels = values.shape
        out = values.new_full((batch, channels, self.resolution * self.resolution), fill)
        out = out.index_copy(2, self.texel_index, values.transpose(1, 2))
        return out.view(batch, channels, self.resolution, self.resolution)

    def gather(self, uv_map: torch.Tensor) -> torch.Tensor:
        """UV map [B,C,R,R] -> per-texel values [B,N,C] at the valid texels."""
        batch, channels = uv_map.shape[:2]
        return uv_map.reshape(batch, channels, -1)[:, :, self.texel_index].transpose(1, 2)

    def position_map(self, vertices: torch.Tensor) -> torch.Tensor:
        """UV position map of a (deformed) mesh: vertices [B,V,3] -> [B,3,R,R], 0 off the atlas."""
        return self.scatter(self.surface_points(vertices))


#: Charts whose mirror image is another chart (the eyes); every other chart mirrors onto itself.
MIRROR_REGIONS = {"sclera_left": "sclera_right", "sclera_right": "sclera_left",
                  "iris_left": "iris_right", "iris_right": "iris_left"}  # fmt: skip


def mirror_texels(atlas: UVAtlas, canonical: torch.Tensor, tolerance: float = 2.0) -> torch.Tensor:
    """Left-right mirror map of the atlas: [N] index of the texel nearest to each texel's mirror
    image (x -> -x; ICT is symmetric) in the mirror chart, or the texel itself where none lies
    within ``tolerance`` x the chart's median nearest-neighbour distance.

    canonical [N,3]: texel points on the neutral template (metres).
    """
    from scipy.spatial import cKDTree

    points = canonical.detach().cpu().double().numpy()
    region = atlas.region.cpu().numpy()
    mirror = np.arange(len(points))
    for name, index in REGION_INDEX.items():  # one KD-tree per chart: 8 charts, not per texel
        source = np.nonzero(region == index)[0]
        target = np.nonzero(region == REGION_INDEX[MIRROR_REGIONS.get(name, name)])[0]
        if len(source) == 0 or len(target) < 2:
            continue
        tree = cKDTree(points[target])
        spacing = np.median(tree.query(points[target], k=2)[0][:, 1])
        flipped = points[source] * np.array([-1.0, 1.0, 1.0])
        distance, nearest = tree.query(flipped)
        ok = distance < tolerance * spacing
        mirror[source[ok]] = target[nearest[ok]]
    return torch.from_numpy(mirror).to(atlas.region.device)

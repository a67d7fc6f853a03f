"""MediaPipe FaceLandmarker landmarks -> points on the ICT-FaceKit surface.

Each of the 478 MediaPipe landmarks gets an ICT triangle index, barycentric coordinates in
that triangle and a weight in [0, 1] (0 = not used). A corresponded point follows the ICT
mesh through any identity/expression: ``p = sum_k bary_k * vertices[triangles[tri, k]]``.

Derivation (no hand-made vertex table; everything comes from the two models' geometry):

1. Inputs: MediaPipe's canonical face mesh (``canonical_face_mesh.npz``, 468 vertices, cm,
   same axes as ICT) and the ICT neutral mesh (cm).
2. Anchor similarity: eight unambiguous points whose MediaPipe index and ICT Multi-PIE-68
   vertex are both published: outer/inner eye corners (MP 33/133/362/263 <-> 68-pt 36/39/42/45),
   nose tip (MP 4, the most forward canonical vertex <-> 30), subnasale (MP 2 <-> 33),
   mouth corners (MP 61/291 <-> 48/54). A weighted Umeyama fit gives scale, rotation and
   translation MediaPipe -> ICT. (The chin, MP 152, is a silhouette point and is left out.)
3. ICP refinement of the similarity: the MediaPipe vertices that are not on the mesh
   boundary (the face oval) are matched to their nearest ICT face-region vertex; pairs
   farther than 2.5x the median distance are dropped (trimmed ICP); the anchors stay in
   every fit with a fixed weight so scale cannot drift. 30 iterations.
4. Closest point on the ICT face-skin triangles (all three vertices in region ``face``) for
   each aligned MediaPipe vertex: triangle index + barycentric, and the residual distance.
5. Weights: 1 for interior landmarks; :data:`SILHOUETTE_WEIGHT` for the boundary of the
   MediaPipe mesh (the face oval: on a real face those points slide along the occluding
   contour, they are not fixed surface points); 0 when the residual exceeds
   :data:`MAX_RESIDUAL_MM` (the two mean faces disagree there, e.g. far forehead).
6. Iris (landmarks 468-477): the two iris centres (468: subject's right eye, next to
   landmarks 33/133; 473: subject's left eye) map to the front-most point of the ICT iris
   of that eye (material ``M_IrisRight``/``M_IrisLeft``); weight :data:`IRIS_WEIGHT`. ICT's
   eyeLook shapes do not move the eyeballs (rendering turns them, :mod:`flexavatar.head.gaze`),
   so a fit sees the iris as a point fixed on the head. The 8 iris contour points get weight 0 (their
   radius depends on pupil dilation and image blur more than on geometry).

The result is computed once and cached as ``.npz`` in :func:`flexavatar.assets.cache_dir` (``$FLEXAVATAR_CACHE``, default
``~/.cache/flexavatar``), keyed by a hash of both input meshes and :data:`ALGORITHM_VERSION`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexavatar import assets
from flexavatar.head.model import load_ict_arrays

ALGORITHM_VERSION = "mp2ict-v1"
NUM_MEDIAPIPE_LANDMARKS = 478
NUM_CANONICAL = 468
IRIS_CENTRES = (468, 473)  # subject's right eye, subject's left eye

#: (MediaPipe canonical index, Multi-PIE 68 index) pairs used for the initial similarity.
ANCHOR_PAIRS = ((33, 36), (133, 39), (362, 42), (263, 45), (4, 30), (2, 33), (61, 48), (291, 54))

MAX_RESIDUAL_MM = 5.0
SILHOUETTE_WEIGHT = 0.2
IRIS_WEIGHT = 0.5
ICP_ITERATIONS = 30


@dataclass(frozen=True)
class LandmarkCorrespondence:
    """MediaPipe landmark i -> ICT surface point.

    triangles: [478] int64 ICT triangle index. barycentric: [478,3] float32.
    weights: [478] float32 in [0,1] (0 = unused). residual_mm: [478] float32 distance of the
    aligned canonical vertex to the ICT surface (NaN for iris points). aligned_canonical:
    [468,3] float32 MediaPipe canonical vertices after the similarity, ICT cm.
    silhouette: [478] bool, the face-oval landmarks. scale, rotation [3,3], translation [3] cm:
    the similarity MediaPipe canonical -> ICT neutral (x_ict = scale * R @ x_mp + t).
    """

    triangles: np.ndarray
    barycentric: np.ndarray
    weights: np.ndarray
    residual_mm: np.ndarray
    aligned_canonical: np.ndarray
    silhouette: np.ndarray
    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def vertex_ids_and_bary(self, ict_triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ICT vertex ids [478,3] and barycentric [478,3] for gathering from a vertex array."""
        return ict_triangles[self.triangles], self.barycentric


def _inputs() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(assets.resolve("canonical_face_mesh.npz"), allow_pickle=False) as data:
        canonical = {k: data[k] for k in data.files}
    ict = load_ict_arrays(str(assets.resolve("ict_facekit.npz")))
    return canonical, ict


def _cache_key(canonical: dict[str, np.ndarray], ict: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(ALGORITHM_VERSION.encode())
    for array in (
        canonical["vertices"],
        canonical["triangles"],
        ict["neutral"],
        ict["triangles"],
        ict["vertex_region"],
        ict["triangle_material"],
        ict["landmarks_multipie68"],
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def correspondence_cache_path() -> Path:
    """Where the cached correspondence for the current assets lives (may not exist yet)."""
    canonical, ict = _inputs()
    return assets.cache_dir() / f"mediapipe_to_ict_{_cache_key(canonical, ict)}.npz"


@functools.lru_cache(maxsize=1)
def load_correspondence() -> LandmarkCorrespondence:
    """The correspondence for the current assets: from the disk cache, else computed and cached."""
    canonical, ict = _inputs()
    path = assets.cache_dir() / f"mediapipe_to_ict_{_cache_key(canonical, ict)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return _from_arrays({k: data[k] for k in data.files})
        except (OSError, ValueError, KeyError):
            pass  # a truncated or stale file: recompute below and overwrite it
    arrays = compute_correspondence(canonical, ict)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: parallel processes never read a half-written file
    return _from_arrays(arrays)


def _from_arrays(a: dict[str, np.ndarray]) -> LandmarkCorrespondence:
    return LandmarkCorrespondence(
        triangles=a["triangles"].astype(np.int64),
        barycentric=a["barycentric"].astype(np.float32),
        weights=a["weights"].astype(np.float32),
        residual_mm=a["residual_mm"].astype(np.float32),
        aligned_canonical=a["aligned_canonical"].astype(np.float32),
        silhouette=a["silhouette"].astype(bool),
        scale=float(a["scale"]),
        rotation=a["rotation"].astype(np.float64),
        translation=a["translation"].astype(np.float64),
    )


# --------------------------------------------------------------------------- geometry helpers


def umeyama(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None):
    """Weighted similarity (s, R [3,3], t [3]) minimising sum w |s R source + t - target|^2."""
    w = np.ones(len(source)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_t = w @ source, w @ target
    xs, xt = source - mu_s, target - mu_t
    cov = (xt * w[:, None]).T @ xs
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt))  # no reflections
    rotation = u @ np.diag(d) @ vt
    var_s = (w * (xs**2).sum(1)).sum()
    scale = float((sig * d).sum() / var_s)
    translation = mu_t - scale * rotation @ mu_s
    return scale, rotation, translation


def closest_point_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray):
    """Closest point on triangles (a, b, c) to points p, all [N,3] (Ericson, vectorised).

    Returns (closest [N,3], barycentric [N,3]).
    """
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    eps = 1e-12
    # Default: the face region.
    denom = 1.0 / np.maximum(va + vb + vc, eps)
    v, w = vb * denom, vc * denom
    bary = np.stack([1 - v - w, v, w], -1)
    # Edges and vertices, in reverse priority so the earlier Voronoi tests win.
    on_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    w_bc = (d4 - d3) / np.maximum((d4 - d3) + (d5 - d6), eps)
    bary[on_bc] = np.stack([np.zeros_like(w_bc), 1 - w_bc, w_bc], -1)[on_bc]
    on_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    w_ac = d2 / np.maximum(d2 - d6, eps)
    bary[on_ac] = np.stack([1 - w_ac, np.zeros_like(w_ac), w_ac], -1)[on_ac]
    on_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    v_ab = d1 / np.maximum(d1 - d3, eps)
    bary[on_ab] = np.stack([1 - v_ab, v_ab, np.zeros_like(v_ab)], -1)[on_ab]
    corner_c = (d6 >= 0) & (d5 <= d6)
    corner_b = (d3 >= 0) & (d4 <= d3)
    corner_a = (d1 <= 0) & (d2 <= 0)
    for mask, column in ((corner_c, 2), (corner_b, 1), (corner_a, 0)):
        bary[mask] = np.eye(3)[column]
    closest = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:3] * c
    return closest, bary


def closest_point_on_mesh(
    points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, candidates: int = 48
):
    """Closest surface point of a triangle mesh for each of points [N,3].

    Candidate triangles: the ``candidates`` triangles with the nearest centroids (enough for
    a fine, regular mesh like ICT's). Returns (triangle index [N], barycentric [N,3],
    closest point [N,3], distance [N]).
    """
    from scipy.spatial import cKDTree

    centroids = vertices[triangles].mean(1)
    _, cand = cKDTree(centroids).query(points, k=min(candidates, len(triangles)))  # [N,C]
    n, c = cand.shape
    corners = vertices[triangles[cand]]  # [N,C,3,3]
    repeated = np.repeat(points, c, axis=0)
    closest, bary = closest_point_on_triangles(
        repeated,
        corners[..., 0, :].reshape(-1, 3),
        corners[..., 1, :].reshape(-1, 3),
        corners[..., 2, :].reshape(-1, 3),
    )
    dist = np.linalg.norm(closest - repeated, axis=-1).reshape(n, c)
    best = dist.argmin(1)
    rows = np.arange(n)
    flat = rows * c + best
    return cand[rows, best], bary[flat], closest[flat], dist[rows, best]


def mesh_boundary_vertices(triangles: np.ndarray, num_vertices: int) -> np.ndarray:
    """[num_vertices] bool: vertices on an edge used by exactly one triangle."""
    edges = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), 1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = np.zeros(num_vertices, bool)
    boundary[unique[counts == 1].ravel()] = True
    return boundary


# --------------------------------------------------------------------------- the derivation


def compute_correspondence(
    canonical: dict[str, np.ndarray], ict: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Derive the correspondence (see module docstring); returns the arrays that get cached."""
    from scipy.spatial import cKDTree

    mp_vertices = canonical["vertices"].astype(np.float64)  # [468,3] cm
    ict_vertices = ict["neutral"].astype(np.float64)  # [V,3] cm
    ict_triangles = ict["triangles"].astype(np.int64)
    region_names = [str(n) for n in ict["region_names"]]
    face_region = ict["vertex_region"] == region_names.index("face")
    landmarks68 = ict["landmarks_multipie68"].astype(np.int64)

    mp_anchor = np.array([m for m, _ in ANCHOR_PAIRS])
    ict_anchor = ict_vertices[landmarks68[[k for _, k in ANCHOR_PAIRS]]]
    scale, rotation, translation = umeyama(mp_vertices[mp_anchor], ict_anchor)

    silhouette = mesh_boundary_vertices(canonical["triangles"].astype(np.int64), NUM_CANONICAL)
    interior = np.flatnonzero(~silhouette)
    face_ids = np.flatnonzero(face_region)
    face_tree = cKDTree(ict_vertices[face_ids])
    anchor_weight = 0.25 * len(interior) / len(mp_anchor)  # anchors hold a quarter of the total weight
    for _ in range(ICP_ITERATIONS):
        aligned = scale * mp_vertices @ rotation.T + translation
        dist, nearest = face_tree.query(aligned[interior])
        keep = dist < 2.5 * np.median(dist)
        source = np.concatenate([mp_vertices[interior[keep]], mp_vertices[mp_anchor]])
        target = np.concatenate([ict_vertices[face_ids[nearest[keep]]], ict_anchor])
        weights = np.concatenate([np.ones(keep.sum()), np.full(len(mp_anchor), anchor_weight)])
        scale, rotation, translation = umeyama(source, target, weights)
    aligned = scale * mp_vertices @ rotation.T + translation

    skin_triangles = np.flatnonzero(face_region[ict_triangles].all(1))
    tri_local, bary, _, dist_cm = closest_point_on_mesh(aligned, ict_vertices, ict_triangles[skin_triangles])
    residual_mm = dist_cm * 10.0

    triangles = np.zeros(NUM_MEDIAPIPE_LANDMARKS, np.int64)
    barycentric = np.tile(np.array([1.0, 0.0, 0.0]), (NUM_MEDIAPIPE_LANDMARKS, 1))
    weights = np.zeros(NUM_MEDIAPIPE_LANDMARKS)
    residual_all = np.full(NUM_MEDIAPIPE_LANDMARKS, np.nan)
    triangles[:NUM_CANONICAL] = skin_triangles[tri_local]
    barycentric[:NUM_CANONICAL] = bary
    residual_all[:NUM_CANONICAL] = residual_mm
    weights[:NUM_CANONICAL] = np.where(silhouette, SILHOUETTE_WEIGHT, 1.0)
    weights[:NUM_CANONICAL][residual_mm > MAX_RESIDUAL_MM] = 0.0

    material_names = [str(n) for n in ict["material_names"]]
    for landmark, material in zip(IRIS_CENTRES, ("M_IrisRight", "M_IrisLeft"), strict=True):
        iris_triangles = np.flatnonzero(ict["triangle_material"] == material_names.index(material))
        centre = ict_vertices[np.unique(ict_triangles[iris_triangles])].mean(0)
        # The front-most iris point: closest to a point far in front of the eye (gaze is +z).
        probe = (centre + np.array([0.0, 0.0, 50.0]))[None]
        tri_local, bary, _, _ = closest_point_on_mesh(probe, ict_vertices, ict_triangles[iris_triangles], 256)
        triangles[landmark] = iris_triangles[tri_local[0]]
        barycentric[landmark] = bary[0]
        weights[landmark] = IRIS_WEIGHT

    silhouette_all = np.zeros(NUM_MEDIAPIPE_LANDMARKS, bool)
    silhouette_all[:NUM_CANONICAL] = silhouette
    return {
        "triangles": triangles,
        "barycentric": barycentric.astype(np.float32),
        "weights": weights.astype(np.float32),
        "residual_mm": residual_all.astype(np.float32),
        "aligned_canonical": aligned.astype(np.float32),
        "silhouette": silhouette_all,
        "scale": np.float64(scale),
        "rotation": rotation,
        "translation": translation,
        "version": np.array(ALGORITHM_VERSION),
    }

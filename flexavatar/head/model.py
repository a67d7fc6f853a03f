"""The ICT-FaceKit parametric head as a torch module, in metres.

vertices = neutral + identity @ identity_basis + expression @ expression_basis
(linear blendshapes; identity weights ~ N(0,1), expression weights in [0,1]).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flexavatar import assets
from flexavatar.head.blendshapes import ICT_EXPRESSION_NAMES, NUM_EXPRESSIONS

CM_TO_M = 0.01

#: Vertex ranges of the regions that carry Gaussians (ICT-FaceKit docs), inclusive ends.
FACE_VERTICES = (0, 9408)
HEAD_NECK_VERTICES = (9409, 11247)


@functools.lru_cache(maxsize=4)
def load_ict_arrays(path: str) -> dict[str, np.ndarray]:
    """All arrays of an ``ict_facekit.npz`` (cached per path; read-only)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    names = tuple(str(n) for n in arrays["expression_names"])
    if names != ICT_EXPRESSION_NAMES:
        raise ValueError(f"{path}: expression names differ from the {NUM_EXPRESSIONS} ICT names this code expects")
    return arrays


def ict_npz_path(folder: str | os.PathLike | None = None) -> Path:
    return assets.resolve("ict_facekit.npz", folder)


class ICTHead(nn.Module):
    """ICT-FaceKit head: ``vertices(identity[B,K], expression[B,57]) -> [B,V,3]`` metres.

    Buffers (float32, metres): ``neutral [V,3]``, ``identity_basis [K,V*3]``,
    ``expression_basis [57,V*3]``; ``triangles [F,3]`` long. K = ``num_identity`` <= the modes
    in the file (100 in the full ICT release, 40 in the trimmed copy shipped under ``weights/``);
    None = all of them.
    """

    def __init__(self, arrays: dict[str, np.ndarray], num_identity: int | None = None, npz_path: str | None = None):
        super().__init__()
        self.npz_path = npz_path
        available = arrays["identity_deltas"].shape[0]
        num_identity = available if num_identity is None else num_identity
        if not 0 <= num_identity <= available:
            raise ValueError(
                f"num_identity must be in [0, {available}] for {npz_path or 'this head'}, got {num_identity}; "
                "for more modes point FLEXAVATAR_ASSETS at the full ICT-FaceKit conversion (100 modes)"
            )
        self.num_identity = num_identity
        self.num_vertices = arrays["neutral"].shape[0]
        v3 = self.num_vertices * 3
        # Non-persistent: the head comes from its asset file, never from a model checkpoint.
        tensors = {
            "neutral": arrays["neutral"].astype(np.float32) * CM_TO_M,
            "identity_basis": arrays["identity_deltas"][:num_identity].astype(np.float32).reshape(-1, v3) * CM_TO_M,
            "expression_basis": arrays["expression_deltas"].astype(np.float32).reshape(-1, v3) * CM_TO_M,
            "triangles": arrays["triangles"].astype(np.int64),
            "vertex_region": arrays["vertex_region"].astype(np.int64),
            "landmarks_multipie68": arrays["landmarks_multipie68"].astype(np.int64),
        }
        for name, array in tensors.items():
            self.register_buffer(name, torch.from_numpy(array), persistent=False)
        self.expression_names = ICT_EXPRESSION_NAMES
        self.region_names = tuple(str(n) for n in arrays["region_names"])

    @classmethod
    def load(cls, folder: str | os.PathLike | None = None, num_identity: int | None = None, device=None) -> ICTHead:
        """Load ``ict_facekit.npz`` through :func:`flexavatar.assets.resolve`."""
        path = str(ict_npz_path(folder))
        head = cls(load_ict_arrays(path), num_identity=num_identity, npz_path=path)
        return head.to(device) if device is not None else head

    @property
    def device(self) -> torch.device:
        return self.neutral.device

    def vertices(self, identity: torch.Tensor | None = None, expression: torch.Tensor | None = None) -> torch.Tensor:
        """Deformed vertices.

        identity: [B,K'] with K' <= num_identity (missing modes are 0), or None.
        expression: [B,57] blendshape weights, or None.
        Returns [B,V,3] metres (B = 1 when both are None).
        """
        batch = 1
        for code in (identity, expression):
            if code is not None:
                batch = code.shape[0]
        offsets = torch.zeros(batch, self.num_vertices * 3, device=self.device, dtype=self.neutral.dtype)
        if identity is not None:
            k = identity.shape[-1]
            if k > self.num_identity:
                raise ValueError(f"identity has {k} modes, this head uses {self.num_identity}")
            offsets = offsets + identity.to(offsets) @ self.identity_basis[:k]
        if expression is not None:
            if expression.shape[-1] != NUM_EXPRESSIONS:
                raise ValueError(f"expression must have {NUM_EXPRESSIONS} weights, got {expression.shape[-1]}")
            offsets = offsets + expression.to(offsets) @ self.expression_basis
        return self.neutral + offsets.view(batch, self.num_vertices, 3)

    def head_centre(self) -> torch.Tensor:
        """[3] metres: the middle of the head (between crown and chin, back of head and nose tip).

        Turntables orbit around it and crops frame it.
        """
        chin_y = self.neutral[self.landmarks_multipie68[8], 1]
        top_y = self.neutral[:, 1].max()
        z = self.neutral[:, 2]
        return torch.stack([torch.zeros_like(top_y), (top_y + chin_y) / 2, (z.min() + z.max()) / 2])

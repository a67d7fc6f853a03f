"""Eye gaze: the eyeballs turn with the eyeLook weights.

ICT-FaceKit's eyeLook shapes move the lids (and the lacrimal and lash meshes) but carry no
eyeball deltas: ICT's own renderer turns each eyeball as a rigid body. Without that turn the
avatar's irises stay put whatever the driver looks at. :func:`turn_eyeballs` turns each eyeball
about its centre (a sphere fitted to its vertices) by the eyeLook weights of its eye.
"""

from __future__ import annotations

import torch

from flexavatar.head.blendshapes import EXPRESSION_INDEX

#: Degrees an eyeball turns at eyeLook weight 1 (In / Out about the vertical axis, Up / Down
#: about the horizontal one), about the range of a comfortable human gaze. Both eyes turned at
#: weight 1 re-track (MediaPipe) at 0.58-0.69 looking in, 0.81-0.89 looking out and 0.64-0.82
#: looking down on 4 avatars; looking up reads only 0.10-0.20.
EYE_TURN_DEG = {"In": 30.0, "Out": 30.0, "Up": 25.0, "Down": 30.0}
EYES = (("L", "eyeball_left", 1.0), ("R", "eyeball_right", -1.0))  # (suffix, region, +x is outward)


def eyeball_vertex_ids(head) -> list[torch.Tensor]:
    """[2] index tensors of the left and right eyeball's vertices (ICT regions)."""
    return [torch.nonzero(head.vertex_region == head.region_names.index(region))[:, 0] for _, region, _ in EYES]


def eyeball_centres(points: list[torch.Tensor]) -> torch.Tensor:
    """[2] eyeballs' vertices [B,M,3] m -> [B,2,3] their centres (least-squares sphere fit:
    the mean would sit forward of the centre, where the iris and pupil add vertices)."""
    centres = []
    for p in points:
        ones = torch.ones_like(p[..., :1])
        a = torch.cat([2 * p, ones], -1)  # |p|^2 = 2 p.c + (r^2 - |c|^2)
        b = (p * p).sum(-1, keepdim=True)
        centres.append(torch.linalg.lstsq(a, b).solution[..., :3, 0])
    return torch.stack(centres, 1)


def gaze_rotations(expressions: torch.Tensor) -> torch.Tensor:
    """[B,57] ICT weights -> [B,2,3,3] each eye's turn (left, right), canonical head frame
    (x toward the subject's left, y up, z forward)."""
    turns = []
    for suffix, _, outward in EYES:
        weight = {d: expressions[:, EXPRESSION_INDEX[f"eyeLook{d}_{suffix}"]] for d in EYE_TURN_DEG}
        deg = {d: weight[d] * EYE_TURN_DEG[d] for d in EYE_TURN_DEG}
        yaw = torch.deg2rad(outward * (deg["Out"] - deg["In"]))  # + about y turns z toward +x
        pitch = torch.deg2rad(deg["Down"] - deg["Up"])  # + about x turns z toward -y
        cy, sy, cp, sp = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()
        zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
        r_yaw = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
        r_pitch = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).view(-1, 3, 3)
        turns.append(r_yaw @ r_pitch)
    return torch.stack(turns, 1)


def neutral_eyeball_centres(head, neutral: torch.Tensor) -> torch.Tensor:
    """[1,2,3] float64 m: the eyeball centres of ``neutral`` [1,V,3] (expressions do not move the
    eyeballs, so one avatar's centres hold for all its frames), in double: the same turn whichever
    path (batched or cached) computed the mesh."""
    return eyeball_centres([neutral[:, i].double() for i in eyeball_vertex_ids(head)])


def turn_eyeballs(head, vertices: torch.Tensor, neutral: torch.Tensor, expressions: torch.Tensor,
                  centres: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """vertices [B,V,3] m with each eyeball turned about its centre (from ``neutral`` [1,V,3], the
    same identity, or ``centres`` [1,2,3] when already known: :func:`neutral_eyeball_centres`) by
    the eyeLook weights of ``expressions`` [B,57]. Unchanged (the same tensor) where no eye looks
    anywhere."""
    looks = [EXPRESSION_INDEX[f"eyeLook{d}_{s}"] for s, _, _ in EYES for d in EYE_TURN_DEG]
    if not (expressions[:, looks] != 0).any():
        return vertices
    ids = eyeball_vertex_ids(head)
    centres = neutral_eyeball_centres(head, neutral) if centres is None else centres  # [1,2,3]
    rotations = gaze_rotations(expressions.double())  # [B,2,3,3]
    out = vertices.clone()
    for eye, i in enumerate(ids):  # two eyes
        centre = centres[:, eye, None]  # [1,1,3]
        out[:, i] = (centre + (vertices[:, i].double() - centre) @ rotations[:, eye].transpose(1, 2)).to(vertices)
    return out

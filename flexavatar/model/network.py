"""FlexAvatarModel: 1-4 crops -> Avatar (encode); Avatar + expression -> Gaussians (deform)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from flexavatar.camera import Camera, stack_cameras
from flexavatar.head import ICTHead, UVAtlas
from flexavatar.head.atlas import mirror_texels
from flexavatar.head.blendshapes import EXPRESSION_INDEX, NUM_EXPRESSIONS
from flexavatar.head.gaze import neutral_eyeball_centres, turn_eyeballs
from flexavatar.model.avatar import Avatar
from flexavatar.model.config import FlexAvatarConfig
from flexavatar.model.creases import Creases, LastCreases, crease_colours, crease_skin, source_creases
from flexavatar.model.evidence import uv_evidence
from flexavatar.model.eyes import eyeball_colours, eyeball_geometry, shut_eyeball_colours
from flexavatar.model.field import (
    ATTRIBUTE_SLICES,
    NUM_ATTRIBUTES,
    SHUT_LID_START,
    blur_on_chart,
    gaussians_from_attributes,
    lid_borders,
    lid_closure,
    lid_skin,
    shut_fraction,
    shut_lid_colours,
    shut_lid_targets,
    surface_stretch,
    texel_spacing,
)
from flexavatar.model.hair import WholeHead, shell_maps, whole_head
from flexavatar.model.modules import Deformer, DeformerConstants, HeadQueries, ImageEncoder
from flexavatar.render import rasterize

#: The network's colour correction fades out on texels that face away from every input view
#: (full at a cosine of 1 / COLOUR_DELTA_FULL_FACING_INV): it has no pixels of them, and there it
#: painted skin-coloured blotches and speckle on the back of the head (MediaPipe found a face in
#: 3 of 21 back-quarter turntable frames of an unseen face). What no view faces takes the
#: evidence's completion (mirror, chart fill, the visible hair's colour and strands).
COLOUR_DELTA_FULL_FACING_INV = 20.0
#: Texels within FACING_GROW // 2 of a faced one keep the correction: a small head turn shows the
#: silhouette's rim (single_face.mp4's held-out frames: 21.51 dB without the grow, 21.55 with).
FACING_GROW = 5
#: On face-chart texels the inputs barely cover (coverage below 1 / SMOOTH_FULL_COVERAGE_INV)
#: the network's colour correction is low-passed (:func:`smooth_where_unseen`): on a face unlike
#: its training faces it is large and noisy (|delta| mean 0.05 on face_noface.mov's person,
#: 0.015-0.026 on the public photos, which it was trained on), and turntables showed the sides of
#: the face as grey-white speckle. Its low frequencies stay: gating it off there instead cost
#: 0.1-0.4 dB on held-out frames, which show cheeks a frontal source sees only at grazing angles.
#: The hair chart keeps its correction (low-passed too, held-out frames lost 0.19 dB), and so do
#: the eyelids (low-passed, eval --motion held-out r_key fell 0.906 -> 0.885, one photo's blink r
#: on single_face.mp4 0.69 -> 0.31).
SMOOTH_WINDOW = 3
SMOOTH_FULL_COVERAGE_INV = 20.0


@dataclass
class DeformCache:
    """What :meth:`FlexAvatarModel.deform` computes from the avatar alone, made once per avatar by
    :meth:`FlexAvatarModel.prepare_deform` for frame-by-frame inference (live driving, stills).

    neutral [1,V,3] m: the avatar's neutral mesh; neutral_map [1,3,R,R] m: its UV position map;
    spacing [N] m: texel spacing; static_texels [1,N,14]: the static maps at the valid texels;
    deformer: the UNet's fixed inputs and embeddings. texel_vertices [U]: the vertices the atlas
    reads (corners of the texels' triangles, about half the head's); at them, template [U,3] m,
    identity_offsets [1,U,3] m and expression_basis [57,U*3] m (the head model's terms, so that
    :meth:`FlexAvatarModel.texel_mesh` adds them up as :meth:`FlexAvatarModel.mesh` does).
    lid_skin [2,3] and eye_colours [N,3]: :meth:`FlexAvatarModel.eye_paint` of the static colours;
    eyeball_centres [1,2,3] float64 m (:func:`~flexavatar.head.gaze.neutral_eyeball_centres`);
    creases: :meth:`FlexAvatarModel.creases` of the avatar.
    Valid while the avatar's tensors and the network's weights stay as they were (a new avatar or
    checkpoint needs a new cache).
    """

    neutral: torch.Tensor
    neutral_map: torch.Tensor
    spacing: torch.Tensor
    static_texels: torch.Tensor
    deformer: DeformerConstants
    texel_vertices: torch.Tensor
    template: torch.Tensor
    identity_offsets: torch.Tensor
    expression_basis: torch.Tensor
    lid_skin: torch.Tensor
    eye_colours: torch.Tensor
    eyeball_centres: torch.Tensor
    creases: Creases


def smooth_where_unseen(delta: torch.Tensor, coverage: torch.Tensor, chart: torch.Tensor) -> torch.Tensor:
    """[B,C,R,R] UV maps, coverage [B,1,R,R] in [0,1], chart mask [1,R,R] -> [B,C,R,R]: on the
    chart, the maps low-passed (two :data:`SMOOTH_WINDOW` box passes, normalised by the chart so
    nothing leaks across its edge) where coverage is 0, blending back to them as they are at
    coverage 1 / :data:`SMOOTH_FULL_COVERAGE_INV`; off the chart, unchanged."""
    chart = chart[None].to(delta)
    seen = (coverage * SMOOTH_FULL_COVERAGE_INV).clamp(max=1.0)
    smooth = blur_on_chart(delta, SMOOTH_WINDOW, chart)
    return torch.where(chart > 0.5, seen * delta + (1 - seen) * smooth, delta)


class FlexAvatarModel(nn.Module, PyTorchModelHubMixin):
    """The FlexAvatar network (see DESIGN.md "Network").

    ``save_pretrained(dir)`` writes ``config.json`` + ``model.safetensors``;
    ``from_pretrained(dir_or_repo_id)`` reads them. The ICT head and its atlas are not weights:
    they load from ``ict_facekit.npz`` through :mod:`flexavatar.assets`.
    """

    def __init__(self, config: FlexAvatarConfig | None = None):
        super().__init__()
        config = config or FlexAvatarConfig()
        if isinstance(config, dict):  # from a hand-written config.json
            config = FlexAvatarConfig(**config)
        if isinstance(config.deformer_channels, list):  # JSON has no tuples
            config.deformer_channels = tuple(config.deformer_channels)
        self.config = config
        self._hub_mixin_config = config  # what save_pretrained writes as config.json
        self.head = ICTHead.load(num_identity=config.num_identity)
        self.atlas = UVAtlas.for_head(self.head, config.atlas_resolution)
        self.encoder = ImageEncoder(
            config.crop_size, config.encoder_patch, config.encoder_dim, config.encoder_depth, config.encoder_heads
        )
        self.queries = HeadQueries(
            config.atlas_resolution,
            config.query_patch,
            config.query_dim,
            config.query_depth,
            config.query_heads,
            context_dim=config.encoder_dim,
            static_channels=NUM_ATTRIBUTES,
            identity_channels=config.identity_channels,
        )
        self.deformer = Deformer(
            config.atlas_resolution,
            config.identity_channels,
            NUM_ATTRIBUTES,
            tuple(config.deformer_channels),
            config.deformer_downsample,
            config.num_data_sources,
        )
        with torch.no_grad():
            neutral = self.head.vertices()
            canonical = self.atlas.position_map(neutral)  # [1,3,R,R]
            coverage = self.atlas.mask[None, None].float()
            p = config.query_patch
            patch_positions = F.avg_pool2d(canonical, p) / F.avg_pool2d(coverage, p).clamp_min(1e-6)
        self.register_buffer("patch_positions", patch_positions[0].flatten(1).T.contiguous(), persistent=False)
        self.register_buffer("template_spacing", texel_spacing(self.atlas, neutral), persistent=False)
        mirror = mirror_texels(self.atlas, self.atlas.surface_points(neutral)[0])
        self.register_buffer("mirror", mirror, persistent=False)
        blinks = torch.zeros(2, NUM_EXPRESSIONS)
        blinks[0, EXPRESSION_INDEX["eyeBlink_L"]] = blinks[1, EXPRESSION_INDEX["eyeBlink_R"]] = 1.0
        blink_meshes = self.head.vertices(None, blinks)
        closure = lid_closure(self.atlas, neutral, blink_meshes)
        self.register_buffer("lid_closure", closure, persistent=False)  # [2,N]
        self.register_buffer("lid_borders", lid_borders(self.atlas, neutral, closure), persistent=False)  # [2,N]
        self.register_buffer("eyelid", (closure > 0).any(0), persistent=False)  # [N] the texels a blink moves
        eyeballs, eyeball_angle = eyeball_geometry(self.atlas, self.head, neutral)
        self.register_buffer("eyeballs", eyeballs, persistent=False)  # [2,N] each eye's sclera and iris texels
        self.register_buffer("eyeball_angle", eyeball_angle, persistent=False)  # [N] degrees off its gaze
        face_skin = self.atlas.region_mask("face") & ~self.eyelid
        self.register_buffer("face_skin", face_skin, persistent=False)  # [N] the face's texels off the lids
        # [N] where a photo's expression creases may be taken out (flexavatar.model.creases)
        rolled = torch.zeros(1, NUM_EXPRESSIONS)
        rolled[0, [EXPRESSION_INDEX["mouthRollLower"], EXPRESSION_INDEX["mouthRollUpper"]]] = 1.0
        lips_rolled = self.head.vertices(None, rolled)
        self.register_buffer("crease_skin", crease_skin(self.atlas, neutral, lips_rolled, face_skin, self.eyelid),
                             persistent=False)  # fmt: skip
        self._last_creases = LastCreases()
        # [1,R,R] where encode low-passes the colour correction on unseen texels
        # (smooth_where_unseen): face skin; eyelids keep theirs, because the skin a blink uncovers
        # is hidden in an open-eyed photo too, and its learned colour makes a closed lid read closed
        self.register_buffer("smoothed_chart", self.atlas.scatter(face_skin.float()[None, :, None])[0], persistent=False)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.head.neutral.device

    def model_id(self) -> str:
        """Short fingerprint of config + weights (an avatar records which network made it)."""
        digest = hashlib.sha1(repr(asdict(self.config)).encode())
        for tensor in self.state_dict().values():
            digest.update(tensor.detach().float().sum().cpu().numpy().tobytes())
        return f"{self.config.name}-{digest.hexdigest()[:10]}"

    def avatar_shapes(self) -> dict[str, tuple[int, ...]]:
        r = self.config.atlas_resolution
        return {
            "identity": (self.config.num_identity,),
            "static_maps": (NUM_ATTRIBUTES, r, r),
            "identity_features": (self.config.identity_channels, r, r),
        }

    def mesh(self, identity: torch.Tensor, expressions: torch.Tensor) -> torch.Tensor:
        """identity [K], expressions [B,57] -> vertices [B,V,3] metres."""
        return self.head.vertices(identity[None].expand(expressions.shape[0], -1), expressions)

    # ------------------------------------------------------------------ encode
    def whole_head(self, images, masks, cameras: list[Camera], identity, expressions) -> WholeHead:
        """Hair heights, visual-hull carving and the skin/hair/clothes split of the inputs."""
        viewmats, Ks = stack_cameras(cameras)
        vertices = self.mesh(identity, expressions)
        neutral = self.head.vertices(identity[None])
        landmarks = self.head.landmarks_multipie68
        return whole_head(self.atlas, landmarks, neutral, vertices, images, masks, viewmats.to(images), Ks.to(images))

    def evidence(self, images, masks, cameras: list[Camera], identity, expressions, shape: WholeHead | None = None,
                 mouth_openings: torch.Tensor | None = None):  # fmt: skip
        """UV evidence [4,R,R] (RGB + coverage) of the inputs lifted through the fitted mesh onto
        the hair shell of ``shape`` (default: carved from these inputs), and facing [N] (how
        squarely the best view faces each texel, :func:`~flexavatar.model.evidence.uv_evidence`;
        ``mouth_openings`` [V,20,2] crop pixels as there)."""
        if shape is None:
            shape = self.whole_head(images, masks, cameras, identity, expressions)
        viewmats, Ks = stack_cameras(cameras)
        vertices = self.mesh(identity, expressions)
        # clothes lift no colour onto the neck; the eroded rim keeps the background out of the hair
        head_masks = -F.max_pool2d(-shape.parts.head, 5, 1, 2)
        return uv_evidence(self.atlas, vertices, images, head_masks, viewmats.to(images), Ks.to(images),
                           shape.heights, self.mirror, shape.back_rgb, mouth_openings)  # fmt: skip

    def encode(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        cameras: list[Camera],
        identity: torch.Tensor,
        expressions: torch.Tensor,
        mouth_openings: torch.Tensor | None = None,
    ) -> Avatar:
        """Feed-forward avatar from V = 1…4 views.

        images [V,3,S,S] in [0,1] (masked crops, S = config.crop_size); masks [V,1,S,S];
        cameras: V fitted cameras (canonical head space, K in crop pixels); identity [K] fitted
        ICT identity; expressions [V,57] fitted per-view expressions; mouth_openings [V,20,2]
        (optional) each crop's inner-lip polygon, crop pixels
        (:attr:`~flexavatar.tracking.crop.HeadCrop.mouth_opening`): the lips take no colour from
        inside it (:func:`~flexavatar.model.evidence.lift_views`).
        """
        if not 1 <= images.shape[0] <= 4:
            raise ValueError(f"between 1 and 4 views are supported, got {images.shape[0]}")
        size = self.config.crop_size
        if images.shape[-1] != size or images.shape[-2] != size:
            raise ValueError(f"crops must be {size}x{size}, got {tuple(images.shape[-2:])}")
        shape = self.whole_head(images, masks, cameras, identity, expressions)
        evidence, facing = self.evidence(images, masks, cameras, identity, expressions, shape, mouth_openings)
        tokens = self.encoder(images[None])
        static_delta, identity_features = self.queries(self.patch_positions, evidence[None], tokens)
        neutral = self.head.vertices(identity[None])
        base = shell_maps(self.atlas, shape, self.spacing(neutral), self.config.scale_normal,
                          self.config.offset_unit_m)[None]  # fmt: skip
        colour = ATTRIBUTE_SLICES["colour"]
        base[:, colour] = evidence[None, :3]
        faced = self.atlas.scatter((facing * COLOUR_DELTA_FULL_FACING_INV).clamp(max=1.0)[None, :, None])
        faced = F.max_pool2d(faced, FACING_GROW, 1, FACING_GROW // 2)[0]
        # smoothed after the facing gate, and kept off what that gate drops (nothing spreads there)
        colour_delta = smooth_where_unseen(static_delta[:, colour] * faced, evidence[3:4][None],
                                           self.smoothed_chart) * (faced > 0)  # fmt: skip
        static_delta = torch.cat([static_delta[:, : colour.start], colour_delta,
                                  static_delta[:, colour.stop :]], 1)  # fmt: skip
        static_maps = (base + static_delta) * self.atlas.mask
        return Avatar(
            identity=identity,
            static_maps=static_maps[0],
            identity_features=identity_features[0],
            source_expression=expressions[0],
            source_camera=cameras[0],
            config_name=self.config.name,
            model_id=self.model_id(),
        )

    # ------------------------------------------------------------------ deform
    def spacing(self, neutral: torch.Tensor) -> torch.Tensor:
        """Texel spacing [N] metres on a neutral mesh [1,V,3] (the template's, scaled by head size)."""
        scale = (neutral[0].std(0).norm() / self.head.neutral.std(0).norm()).clamp(0.7, 1.4)
        return self.template_spacing * scale

    def eye_paint(self, colours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An avatar's static texel ``colours`` [N,3] in [0,1] -> the skin around each lid [2,3]
        (:func:`~flexavatar.model.field.lid_skin`) and the colours with its eyeballs painted [N,3]
        (:func:`~flexavatar.model.eyes.eyeball_colours`)."""
        skin = lid_skin(colours, self.lid_borders)
        return skin, eyeball_colours(colours, self.eyeballs, self.eyeball_angle, skin, self.face_skin)

    def creases(self, avatar: Avatar, colours: torch.Tensor, neutral: torch.Tensor) -> Creases:
        """The expression creases in ``avatar``'s static texel ``colours`` [N,3] (its photo's
        smile lines and furrows, :mod:`flexavatar.model.creases`) on its face skin away from the
        eyes (:func:`~flexavatar.model.creases.crease_skin`);
        neutral [1,V,3] its neutral mesh. The last avatar's are kept (:class:`~flexavatar.model.creases.LastCreases`)."""

        def find() -> Creases:
            with torch.no_grad():
                source = self.mesh(avatar.identity, avatar.source_expression[None].to(neutral))
                return source_creases(self.atlas, colours, neutral, source, self.crease_skin)

        return self._last_creases.get((avatar.static_maps, avatar.identity, avatar.source_expression), find)

    @torch.no_grad()
    def prepare_deform(self, avatar: Avatar, data_source: int = 0) -> DeformCache:
        """The expression-independent part of :meth:`deform` for ``avatar`` (inference only):
        pass it as ``cache`` to :meth:`deform` / :meth:`render` for every frame of that avatar."""
        neutral = self.head.vertices(avatar.identity[None])
        neutral_map = self.atlas.position_map(neutral)
        head, texel_vertices = self.head, self.atlas.texel_vertices.unique()
        identity_offsets = (avatar.identity[None] @ head.identity_basis[: avatar.identity.shape[-1]]).view(1, -1, 3)
        basis = head.expression_basis.view(head.expression_basis.shape[0], -1, 3)
        static_texels = self.atlas.gather(avatar.static_maps[None])
        own = static_texels[0, :, ATTRIBUTE_SLICES["colour"]].detach().clamp(0.0, 1.0)
        skin, eye_colours = self.eye_paint(own)
        return DeformCache(
            neutral=neutral,
            neutral_map=neutral_map,
            spacing=self.spacing(neutral),
            static_texels=static_texels,
            deformer=self.deformer.constants(avatar.identity_features[None], neutral_map, data_source),
            texel_vertices=texel_vertices,
            template=head.neutral[texel_vertices],
            identity_offsets=identity_offsets[:, texel_vertices],
            expression_basis=basis[:, texel_vertices].flatten(1).contiguous(),
            lid_skin=skin,
            eye_colours=eye_colours,
            eyeball_centres=neutral_eyeball_centres(head, neutral),
            creases=self.creases(avatar, own, neutral),
        )

    def texel_mesh(self, cache: DeformCache, expressions: torch.Tensor) -> torch.Tensor:
        """The avatar's mesh under expressions [B,57] where the atlas reads it: [B,V,3] metres,
        as :meth:`mesh` at ``cache.texel_vertices`` (the same sums: bit-identical at B = 1) and
        neutral at the other vertices, which no texel uses (a quarter of :meth:`mesh`'s time)."""
        batch = expressions.shape[0]
        expression_offsets = (expressions.to(cache.expression_basis) @ cache.expression_basis).view(batch, -1, 3)
        vertices = cache.neutral.expand(batch, -1, -1).clone()
        vertices[:, cache.texel_vertices] = cache.template + (cache.identity_offsets + expression_offsets)
        return vertices

    def dynamic_maps(
        self,
        avatar: Avatar,
        expressions: torch.Tensor,
        data_source: int | torch.Tensor = 0,
        vertices: torch.Tensor | None = None,
        neutral: torch.Tensor | None = None,
        cache: DeformCache | None = None,
    ) -> torch.Tensor:
        """Deformer output for expressions [B,57]: per-texel deltas [B,14,R,R].

        vertices [B,V,3] / neutral [1,V,3]: the deformed and neutral meshes, if already at hand.
        cache: :meth:`prepare_deform` of this avatar (inference only; same result to float rounding).
        """
        expressions = expressions.to(self.device)
        if cache is not None:
            _check_cache(cache, data_source)
            vertices = self.texel_mesh(cache, expressions) if vertices is None else vertices
            return self.deformer.forward_constant(self.atlas.position_map(vertices) - cache.neutral_map, cache.deformer)
        if vertices is None:
            vertices = self.mesh(avatar.identity, expressions)
        if neutral is None:
            neutral = self.head.vertices(avatar.identity[None])
        neutral_map = self.atlas.position_map(neutral)
        offset_map = self.atlas.position_map(vertices) - neutral_map
        return self.deformer(avatar.identity_features[None], offset_map, neutral_map, data_source)

    def deform(
        self,
        avatar: Avatar,
        expressions: torch.Tensor,
        data_source: int | torch.Tensor = 0,
        dynamic: torch.Tensor | None = None,
        cache: DeformCache | None = None,
    ) -> dict[str, torch.Tensor]:
        """Gaussians of ``avatar`` under expressions [B,57], in canonical head space.

        Returns means [B,N,3] m, quats [B,N,4], scales [B,N,3] m, opacities [B,N], colors [B,N,3].
        ``data_source`` selects the bias sink (0 multi-view: always at inference). ``dynamic``:
        precomputed :meth:`dynamic_maps` for these expressions (refinement reuses them).
        ``cache``: :meth:`prepare_deform` of this avatar, for inference frame by frame.
        """
        expressions = expressions.to(self.device)
        colour = ATTRIBUTE_SLICES["colour"]
        if cache is None:
            neutral, vertices = self.head.vertices(avatar.identity[None]), self.mesh(avatar.identity, expressions)
        else:
            _check_cache(cache, data_source)
            neutral, vertices = cache.neutral, self.texel_mesh(cache, expressions)
        if dynamic is None:
            dynamic = self.dynamic_maps(avatar, expressions, data_source, vertices, neutral, cache)
        if cache is None:
            attributes = self.atlas.gather(avatar.static_maps[None] + dynamic)  # [B,N,14]
            spacing = self.spacing(neutral)
        else:
            attributes, spacing = cache.static_texels + self.atlas.gather(dynamic), cache.spacing
        own = self.atlas.gather(avatar.static_maps[None, colour])[0] if cache is None else cache.static_texels[0, :, colour]
        own = own.detach().clamp(0.0, 1.0)
        # the photo's creases come and go with the skin's motion (flexavatar.model.creases)
        creases = self.creases(avatar, own, neutral) if cache is None else cache.creases
        colours = crease_colours(attributes[..., colour], creases, self.atlas.surface_points(vertices))
        # the eyeballs turn with the gaze after the deformer has read the mesh (it was trained on
        # meshes whose eyeballs never moved)
        vertices = turn_eyeballs(self.head, vertices, neutral, expressions, None if cache is None else cache.eyeball_centres)
        skin, painted = self.eye_paint(own) if cache is None else (cache.lid_skin, cache.eye_colours)
        # painted eyeballs (flexavatar.model.eyes), whatever the deformer adds to them
        colours = torch.where(self.eyeballs.any(0)[None, :, None], painted[None], colours)
        blinks = expressions[:, [EXPRESSION_INDEX["eyeBlink_L"], EXPRESSION_INDEX["eyeBlink_R"]]].to(attributes)
        if (blinks > SHUT_LID_START).any():  # shut lids take skin and a lash line (shut_lid_colours)
            targets = shut_lid_targets(own, self.lid_closure, skin)
            colours = shut_lid_colours(colours, blinks, targets, self.lid_closure)
            colours = shut_eyeball_colours(colours, shut_fraction(blinks), self.eyeballs, skin)
        attributes = torch.cat([attributes[..., : colour.start], colours, attributes[..., colour.stop :]], -1)
        cfg = self.config
        return gaussians_from_attributes(
            self.atlas,
            vertices,
            attributes,
            spacing,
            cfg.scale_tangent,
            cfg.scale_normal,
            cfg.offset_unit_m,
            cfg.init_opacity,
            surface_stretch(self.atlas, vertices, neutral, self.eyelid),
        )

    def render(
        self,
        avatar: Avatar,
        cameras: list[Camera],
        expressions: torch.Tensor,
        background=(1.0, 1.0, 1.0),
        backend: str = "auto",
        data_source: int = 0,
        dynamic: torch.Tensor | None = None,
        cache: DeformCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Render ``avatar`` under expressions [B,57] from C cameras: rgb [F,H,W,3], alpha [F,H,W,1].

        B == C: frame f is expression f seen by camera f (reenactment, training, refinement).
        B == 1: the one expression from every camera (turntable, preview), deformed once.
        C == 1: every expression from the one camera. F = max(B, C). Every frame goes to the
        rasterizer in one call. Differentiable w.r.t. the avatar's tensors and the network.
        ``data_source`` is the bias sink (training only; 0 at inference); ``dynamic`` and
        ``cache`` as in :meth:`deform`.
        """
        gaussians = self.deform(avatar, expressions, data_source, dynamic, cache)
        return self.render_gaussians(gaussians, cameras, background, backend)

    def render_gaussians(
        self,
        gaussians: dict[str, torch.Tensor],
        cameras: list[Camera],
        background=(1.0, 1.0, 1.0),
        backend: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Render :meth:`deform`'s B Gaussian sets from C cameras in one rasterizer call.

        Pairing as in :meth:`render` (B == C, B == 1 or C == 1); all cameras share one image
        size. A turntable deforms once and renders its cameras in chunks through this.
        Returns rgb [F,H,W,3] (background composited) and alpha [F,H,W,1], F = max(B, C).
        """
        num_sets, num_cameras = gaussians["means"].shape[0], len(cameras)
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"render: all cameras must share one image size, got {sorted(sizes)}")
        (width, height), = sizes
        viewmats, Ks = stack_cameras(cameras)
        viewmats, Ks = viewmats.to(self.device), Ks.to(self.device)
        if num_sets == 1:  # one set seen by every camera
            gaussians = {name: tensor[0] for name, tensor in gaussians.items()}
        elif num_cameras == 1:  # one camera for every set
            viewmats, Ks = viewmats.expand(num_sets, 4, 4), Ks.expand(num_sets, 3, 3)
        elif num_sets != num_cameras:
            raise ValueError(
                f"render: {num_sets} expressions (Gaussian sets) and {num_cameras} cameras; give as many of "
                "each, or one expression (seen by every camera), or one camera (for every expression)"
            )
        bg = torch.as_tensor(background, dtype=torch.float32, device=self.device)
        rgb, alpha, _ = rasterize(
            **gaussians, viewmats=viewmats, Ks=Ks, width=width, height=height, background=bg, backend=backend
        )
        return rgb, alpha


def _check_cache(cache: DeformCache, data_source) -> None:
    """A :class:`DeformCache` holds no gradients and one bias sink: refuse anything else."""
    if torch.is_grad_enabled():
        raise ValueError("a DeformCache is for inference: call under torch.no_grad(), or deform without it")
    if not isinstance(data_source, int) or data_source != cache.deformer.data_source:
        raise ValueError(f"this DeformCache was made for data_source {cache.deformer.data_source}, got {data_source!r}")

"""The T-MSPR model (docs/reference.md §1-§8): four views through the TransReID backbone, the global branch b1, JPM,
HSPM and HSRM on branch b2, BNNecks and classifiers.

Each box of the paper's figure is one method of :class:`TMSPR` (``backbone_views``, ``global_branch``, ``jpm``,
``hspm``, ``hsrm``, ``bnneck_classifiers``) built from the pieces in :mod:`tmspr_jax.models.branches`; the training
forward returns :class:`tmspr_jax.models.outputs.TrainOutputs` by name. Parameter names are the contract in
docs/interfaces.md (``convert_weights.mapping`` maps them to the reference's). With ``stack_branches`` the views, the
four JPM groups and the part sequences run as stacked batches; the result is the same as the plain per-branch
computation (only the drop-path draws differ). b1 and b2 compute only their cls token (``TransformerHead.cls``),
which is all the model keeps of them.

Three switches turn off the paper's additions, everything else staying the same code (docs/reference.md §1, §5, §6):
``multi_view=False`` trains on the based view only, ``perception=False`` removes the part head and the part
features (HSPM), ``recovery=False`` removes the recovered-part feature (HSRM). With all three off and TransReID's JPM
settings the model is the TransReID baseline, including its test feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from tmspr_jax.models.attention import ATTENTION_IMPLEMENTATIONS
from tmspr_jax.models.branches import (
    NUM_PARTS,
    PART_NORMS,
    PART_POOLS,
    CosineClassifier,
    TransformerHead,
    jpm_groups,
    nearest_neighbour,
    part_attention,
    part_pooling,
    part_weights,
    recover_parts,
    visibility,
)
from tmspr_jax.models.outputs import TrainOutputs
from tmspr_jax.models.vit import (
    BACKBONES,
    DEFAULT_BACKBONE,
    POS_EMBED_INITS,
    REMAT_MODES,
    VisionTransformer,
    backbone,
    compute_dtype,
    drop_path_rates,
    patch_grid,
)
from tmspr_jax.utils import pair

Dtype = Any

NUM_VIEWS = 4  # based, amplifying, covering, shrinking (docs/reference.md §1)
NECK_FEATS = ("before", "after")
# 'linear' = the reference's bias-free nn.Linear; 'cosine' = cosine similarities, for losses.ID_LOSSES' margin losses
CLASSIFIERS = ("linear", "cosine")
# The BNNeck (and its classifier) after each feature, under the reference's module names.
GLOBAL_NECKS = ("bottleneck", "bottleneck_occ1", "bottleneck_occ2", "bottleneck_occ3")
GLOBAL_CLASSIFIERS = ("classifier", "classifier_occ1", "classifier_occ2", "classifier_occ3")
JPM_NECKS = ("bottleneck_1", "bottleneck_2", "bottleneck_3", "bottleneck_4")
# JPM group k and body part k (k = 1..4) share classifier_k (docs/reference.md §7.2); part 0 and part 5 have their own.
JPM_CLASSIFIERS = ("classifier_1", "classifier_2", "classifier_3", "classifier_4")
PART_NECKS = tuple(f"bottleneck_bp{i}" for i in range(NUM_PARTS))
PART_CLASSIFIERS = ("classifier_0", *JPM_CLASSIFIERS, "classifier_5")


class TMSPR(nn.Module):
    """T-MSPR. ``__call__(views [B,V,H,W,3], camids [B], *, train) -> TrainOutputs``;
    ``extract(images [B,H,W,3], camids [B], valid=None) -> [B, feature_dim]`` (call with ``method=TMSPR.extract``).
    """

    num_classes: int
    img_size: tuple[int, int] = (256, 128)
    num_cameras: int = 0  # SIE camera table rows (0 = off)
    num_views: int = 0
    patch_size: int = 16
    stride: tuple[int, int] = (11, 11)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    sie_coe: float = 3.0
    re_arrange: bool = True
    shift_num: int = 5
    shuffle_groups: int = 2
    divide_length: int = 6
    part_norm: str = "batch"
    part_pool: str = "scale"
    neck_feat: str = "before"
    classifier_kind: str = "linear"  # config.model.classifier (`classifier` is the global classifier module)
    dtype: Dtype = jnp.float32
    remat: str = "none"  # vit.REMAT_MODES
    attention: str = "auto"  # vit.ATTENTION_IMPLEMENTATIONS
    stack_branches: bool = True
    pos_embed_init: str = "normal"  # vit.POS_EMBED_INITS
    multi_view: bool = True  # the four training views (False: the based view only)
    perception: bool = True  # HSPM: part head, part features, segmentation loss
    recovery: bool = True  # HSRM: recovered-part feature, reconstruction loss (needs perception)
    backbone_type: str = DEFAULT_BACKBONE  # config.model.backbone: vit.BACKBONES (qkv bias, attention scale)

    @property
    def grid(self) -> tuple[int, int]:
        return patch_grid(self.img_size, self.patch_size, self.stride)

    @property
    def qkv_bias(self) -> bool:
        return backbone(self.backbone_type).qkv_bias

    @property
    def attn_scale(self) -> float:
        """The attention scores' scale of every block (the backbone's rule at this width)."""
        return backbone(self.backbone_type).attention_scale(self.embed_dim, self.num_heads)

    @property
    def feature_dim(self) -> int:
        """Width of the eval feature: 10*D for neck_feat 'before' with HSPM, 5*D otherwise."""
        return (10 if self.neck_feat == "before" and self.perception else 5) * self.embed_dim

    def setup(self) -> None:
        if self.depth < 2:
            raise ValueError(f"model.depth={self.depth}: T-MSPR needs depth >= 2 (the last block becomes b1/b2)")
        for key, value, allowed in (
            ("part_norm", self.part_norm, PART_NORMS),
            ("part_pool", self.part_pool, PART_POOLS),
            ("neck_feat", self.neck_feat, NECK_FEATS),
            ("classifier", self.classifier_kind, CLASSIFIERS),
        ):
            if value not in allowed:
                raise ValueError(f"model.{key}={value!r}: expected one of {allowed}")
        if self.recovery and not self.perception:
            raise ValueError("model.recovery=True needs model.perception=True (HSRM recovers HSPM's part features)")
        gh, gw = self.grid
        if self.divide_length < 1 or (gh * gw) // self.divide_length < 1:
            raise ValueError(f"model.divide_length={self.divide_length}: must be in 1..{gh * gw} (patch count)")
        self.backbone = VisionTransformer(
            img_size=tuple(self.img_size),
            patch_size=self.patch_size,
            stride=tuple(self.stride),
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            drop_path=self.drop_path,
            num_cameras=self.num_cameras,
            num_views=self.num_views,
            sie_coe=self.sie_coe,
            local_feature=True,
            dtype=self.dtype,
            remat=self.remat,
            attention=self.attention,
            pos_embed_init=self.pos_embed_init,
            qkv_bias=self.qkv_bias,
            attn_scale=self.attn_scale,
        )
        last_rate = drop_path_rates(self.drop_path, self.depth)[-1]  # b1/b2 copy the last block: rate = drop_path
        head = lambda: TransformerHead(
            self.embed_dim,
            self.num_heads,
            self.mlp_ratio,
            last_rate,
            self.dtype,
            self.remat,
            self.attention,
            self.qkv_bias,
            self.attn_scale,
        )
        self.b1 = head()
        self.b2 = head()
        bn = lambda name: nn.BatchNorm(
            use_bias=False,
            epsilon=1e-5,
            momentum=0.9,
            scale_init=nn.initializers.ones,
            name=name,
        )
        if self.classifier_kind == "cosine":
            cls = lambda name: CosineClassifier(self.num_classes, name=name)
        else:
            cls = lambda name: nn.Dense(
                self.num_classes,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.initializers.normal(1e-3),
                name=name,
            )
        views = NUM_VIEWS if self.multi_view else 1
        self.global_necks = [bn(n) for n in GLOBAL_NECKS[:views]]
        self.global_classifiers = [cls(n) for n in GLOBAL_CLASSIFIERS[:views]]
        self.jpm_necks = [bn(n) for n in JPM_NECKS]
        self.jpm_classifiers = [cls(n) for n in JPM_CLASSIFIERS]
        if self.perception:
            self.part_head = nn.Dense(NUM_PARTS, use_bias=False, kernel_init=nn.initializers.normal(1e-4))
            self.part_necks = [bn(n) for n in PART_NECKS]
            # Parts 1..4 reuse the JPM classifiers (the same modules, so the same parameters).
            self.part_classifiers = [cls("classifier_0"), *self.jpm_classifiers, cls("classifier_5")]
        if self.recovery:
            self.recovered_neck = bn("bottleneck_cp")
            self.recovered_classifier = cls("classifier_cp")

    # ------------------------------------------------------------------------------------------------ the boxes
    def backbone_views(self, views: jax.Array, camids: jax.Array, train: bool) -> list[jax.Array]:
        """The backbone's tokens ``[B, 1+L, D]`` of each view (stacked into one ``[V*B]`` pass)."""
        b, v = views.shape[:2]
        if self.stack_branches and v > 1:
            x = jnp.swapaxes(views, 0, 1).reshape((v * b,) + views.shape[2:])  # view-major [V*B, H, W, 3]
            f = self.backbone(x, jnp.tile(camids, v), train=train)
            return [f[i * b : (i + 1) * b] for i in range(v)]
        return [self.backbone(views[:, i], camids, train=train) for i in range(v)]

    def global_branch(self, feats: Sequence[jax.Array], train: bool) -> list[jax.Array]:
        """b1's cls feature ``[B, D]`` of each view's tokens."""
        if self.stack_branches and len(feats) > 1:
            b = feats[0].shape[0]
            g = self.b1.cls(jnp.concatenate(feats, axis=0), train=train)[0]
            return [g[i * b : (i + 1) * b] for i in range(len(feats))]
        return [self.b1.cls(f, train=train)[0] for f in feats]

    def jpm(self, feats: jax.Array, train: bool) -> list[jax.Array]:
        """JPM: b2's cls feature of each of the four shifted and shuffled patch groups, ``4 x [B, D]``."""
        seqs = jpm_groups(
            feats,
            re_arrange=self.re_arrange,
            shift=self.shift_num,
            groups=self.shuffle_groups,
            divide_length=self.divide_length,
        )
        if self.stack_branches:
            b = feats.shape[0]
            out = self.b2.cls(jnp.concatenate(seqs, axis=0), train=train)[0]
            return [out[k * b : (k + 1) * b] for k in range(len(seqs))]
        return [self.b2.cls(s, train=train)[0] for s in seqs]

    def part_logits(self, feats: jax.Array) -> jax.Array:
        """HSPM's per-patch part logits ``O [B, gh, gw, 6]`` (float32: argmax and min-max are precision-sensitive)."""
        b, _, d = feats.shape
        gh, gw = self.grid
        return self.part_head(feats[:, 1:].reshape(b, gh, gw, d).astype(jnp.float32))

    def hspm(
        self, feats: jax.Array, which: Sequence[int], train: bool, valid: jax.Array | None
    ) -> tuple[jax.Array, list[jax.Array]]:
        """HSPM: the raw part logits ``O`` and b2's cls feature of each part ``which`` (0 = foreground), the patch
        tokens weighted by the part's attention as ``part_pool`` says (branches.PART_POOLS)."""
        logits = self.part_logits(feats)
        weights = part_weights(part_attention(logits, self.part_norm, valid), which)  # [P, B, L]
        pooling = part_pooling(weights, self.part_pool)
        if self.stack_branches:
            out = self.b2.cls(feats, train=train, **pooling)
            return logits, list(out)
        return logits, [
            self.b2.cls(feats, train=train, **{k: v[i : i + 1] for k, v in pooling.items()})[0]
            for i in range(len(which))
        ]

    def hsrm(
        self, parts: Sequence[jax.Array], logits: jax.Array, global_feat: jax.Array, train: bool
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """HSRM: ``(Q, Qc, feature)``: parts 1..5 ``Q [B, 5, D]``, with the parts invisible in an image (by the raw
        logits' argmax) taken from its most similar sample ``Qc``, and b2 over ``Qc`` (output slot 0)."""
        q = jnp.stack(parts, axis=1)
        qc = recover_parts(q, visibility(logits), nearest_neighbour(global_feat))
        return q, qc, self.b2.cls(qc, train=train)[0]

    def bnneck_classifiers(
        self, necks: Sequence[nn.Module], classifiers: Sequence[nn.Module], feats: Sequence[jax.Array], train: bool
    ) -> tuple[jax.Array, ...]:
        """Each feature through its BNNeck (batch statistics in training) and classifier: float32 logits."""
        return tuple(
            c(bn(f, use_running_average=not train)).astype(jnp.float32) for bn, c, f in zip(necks, classifiers, feats)
        )

    # ------------------------------------------------------------------------------------------------ entry points
    def __call__(self, views: jax.Array, camids: jax.Array, *, train: bool) -> TrainOutputs:
        """The training forward on the views ``[B,4,H,W,3]`` (docs/reference.md §3-§8); with ``multi_view=False``
        only the based view ``views[:, 0]`` is used (``[B,1,H,W,3]`` is accepted).

        ``train=True`` uses batch statistics in every BNNeck (mutable ``'batch_stats'``) and stochastic depth (rng
        ``'drop_path'`` when ``drop_path > 0``); ``train=False`` uses the running statistics, as torch ``eval()``.
        """
        need = NUM_VIEWS if self.multi_view else 1
        if views.ndim != 5 or views.shape[1] < need or views.shape[-1] != 3:
            raise ValueError(f"TMSPR: expected views [B,{NUM_VIEWS},H,W,3], got shape {views.shape}")
        camids = jnp.asarray(camids, jnp.int32)
        f = self.backbone_views(views[:, :need], camids, train)
        g = self.global_branch(f, train)
        locals_ = self.jpm(f[0], train)
        out = dict(
            global_feats=tuple(g),
            global_logits=self.bnneck_classifiers(self.global_necks, self.global_classifiers, g, train),
            jpm_feats=tuple(locals_),
            jpm_logits=self.bnneck_classifiers(self.jpm_necks, self.jpm_classifiers, locals_, train),
        )
        if self.perception:
            logits_o, parts = self.hspm(f[0], range(NUM_PARTS), train, None)
            out.update(
                parsing_logits=logits_o,
                part_feats=tuple(parts),
                part_logits=self.bnneck_classifiers(self.part_necks, self.part_classifiers, parts, train),
                visible_parts=jnp.stack(parts[1:], axis=1),
            )
        if self.recovery:
            q, qc, feat_c = self.hsrm(parts[1:], logits_o, g[0], train)
            out.update(
                visible_parts=q,
                recovered_parts=qc,
                recovered_feat=feat_c,
                recovered_logits=self.bnneck_classifiers(
                    [self.recovered_neck], [self.recovered_classifier], [feat_c], train
                )[0],
            )
        return TrainOutputs(**out)

    def extract(self, images: jax.Array, camids: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """The eval feature (docs/reference.md §13.1), computing only view 1, b1, JPM and (for 'before') parts 1..5.

        'before': T-MSPR's ``[g1, jpm1..4, p1..p5]`` ``[B, 10*D]``, or without HSPM TransReID's
        ``[g1, jpm1/4, .., jpm4/4]`` ``[B, 5*D]``; 'after': ``[bn(g1), bn_k(jpm_k)/4]`` ``[B, 5*D]`` (running
        statistics). ``valid`` (bool ``[B]``) excludes padding rows from the batch-wise min-max.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"TMSPR.extract: expected images [B,H,W,3], got shape {images.shape}")
        f1 = self.backbone(images, jnp.asarray(camids, jnp.int32), train=False)
        g1 = self.global_branch([f1], False)[0]
        locals_ = self.jpm(f1, False)
        if self.neck_feat == "after":
            out = [self.global_necks[0](g1, use_running_average=True)]
            out += [bn(lk, use_running_average=True) / 4.0 for bn, lk in zip(self.jpm_necks, locals_)]
            return jnp.concatenate(out, axis=-1)
        if not self.perception:
            return jnp.concatenate([g1] + [lk / 4.0 for lk in locals_], axis=-1)
        _, parts = self.hspm(f1, range(1, NUM_PARTS), False, valid)
        return jnp.concatenate([g1, *locals_, *parts], axis=-1)

    def part_maps(
        self, images: jax.Array, camids: jax.Array, valid: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """What HSPM sees on test images: the part attention ``[B,gh,gw,6]`` (softmax over the 6 channels of the
        normalised part logits, as b2's part pooling uses it) and HSRM's visibility flags ``[B,5]`` of parts 1..5."""
        if not self.perception:
            raise ValueError("TMSPR.part_maps: the model has no part head (model.perception=False)")
        logits = self.part_logits(self.backbone(images, jnp.asarray(camids, jnp.int32), train=False))
        return part_attention(logits, self.part_norm, valid), visibility(logits)[..., 0]


# What model.pretrained_heads does with a trained model of other identities or cameras: 'strict' refuses it, 'reinit'
# re-initialises its classifiers (and SIE table) for fine-tuning (tmspr_jax.weights.fine_tune_start).
PRETRAINED_HEADS = ("strict", "reinit")


def check_backbone_sizes(m: ml_collections.ConfigDict) -> None:
    """``model.backbone`` with the sizes of ANOTHER of the reference's backbones (e.g. ``--config.model.backbone=
    vit_small_patch16_224_TransReID`` on a ViT-B config) is one error naming the keys to set; the backbone's own
    sizes, or sizes of none of them (small test models), pass."""
    spec = backbone(str(m.backbone))
    sizes = lambda b: (int(b.embed_dim), int(b.depth), int(b.num_heads), float(b.mlp_ratio))
    have, want = sizes(m), sizes(spec)
    if have != want and any(have == sizes(b) for b in BACKBONES.values()):
        keys = ("embed_dim", "depth", "num_heads", "mlp_ratio")
        fix = " ".join(f"--config.model.{k}={w}" for k, h, w in zip(keys, have, want, strict=True) if h != w)
        raise ValueError(
            f"config.model.backbone={m.backbone!r} has embed_dim {want[0]}, depth {want[1]}, num_heads {want[2]}, "
            f"mlp_ratio {want[3]}, but the config has another backbone's sizes {have}: also set {fix}"
        )


def build_model(m: ml_collections.ConfigDict, img_size: Sequence[int], num_classes: int, num_cameras: int) -> TMSPR:
    """Build :class:`TMSPR` from the ``config.model`` node ``m`` (its keys and defaults: tmspr_jax/config.py).

    The SIE camera table gets ``num_cameras`` rows when ``model.sie_camera`` (it exists only if there are > 1
    cameras); ``model.sie_view`` adds a view term with 1 view (all person datasets have a single view).
    """
    if int(num_classes) < 1:
        raise ValueError(f"build_model: num_classes={num_classes}, expected >= 1")
    if int(num_cameras) < 0:
        raise ValueError(f"build_model: num_cameras={num_cameras}, expected >= 0")
    stride = pair(m.stride, "config.model.stride")  # one number: a square stride
    img_size = tuple(int(s) for s in img_size)
    patch_grid(img_size, int(m.patch_size), stride)  # validates the geometry early
    for key, allowed in (
        ("part_norm", PART_NORMS),
        ("part_pool", PART_POOLS),
        ("neck_feat", NECK_FEATS),
        ("classifier", CLASSIFIERS),
        ("pos_embed_init", POS_EMBED_INITS),
        ("remat", REMAT_MODES),
        ("attention", ATTENTION_IMPLEMENTATIONS),
        ("pretrained_heads", PRETRAINED_HEADS),
    ):
        if m[key] not in allowed:
            raise ValueError(f"config.model.{key}={m[key]!r}: expected one of {allowed}")
    check_backbone_sizes(m)
    perception, recovery = bool(m.perception), bool(m.recovery)
    if recovery and not perception:
        raise ValueError("config.model.recovery=True needs config.model.perception=True (HSRM recovers HSPM's parts)")
    return TMSPR(
        num_classes=int(num_classes),
        img_size=img_size,
        num_cameras=int(num_cameras) if m.sie_camera else 0,
        num_views=1 if m.sie_view else 0,
        patch_size=int(m.patch_size),
        stride=stride,
        embed_dim=int(m.embed_dim),
        depth=int(m.depth),
        num_heads=int(m.num_heads),
        mlp_ratio=float(m.mlp_ratio),
        drop_path=float(m.drop_path),
        sie_coe=float(m.sie_coe),
        re_arrange=bool(m.re_arrange),
        shift_num=int(m.shift_num),
        shuffle_groups=int(m.shuffle_groups),
        divide_length=int(m.divide_length),
        part_norm=str(m.part_norm),
        part_pool=str(m.part_pool),
        neck_feat=str(m.neck_feat),
        classifier_kind=str(m.classifier),
        dtype=compute_dtype(str(m.dtype)),
        remat=str(m.remat),
        attention=str(m.attention),
        stack_branches=bool(m.stack_branches),
        pos_embed_init=str(m.pos_embed_init),
        multi_view=bool(m.multi_view),
        perception=perception,
        recovery=recovery,
        backbone_type=str(m.backbone),
    )


def init_variables(model: TMSPR, rng: jax.Array, batch_size: int = 2) -> dict:
    """Random ``{'params', 'batch_stats'}`` for ``model`` (built with the training call so every parameter exists)."""
    h, w = model.img_size
    views = jnp.zeros((batch_size, NUM_VIEWS, h, w, 3), jnp.float32)
    camids = jnp.zeros((batch_size,), jnp.int32)
    p_rng, d_rng = jax.random.split(rng)
    variables = jax.jit(lambda r1, r2: model.init({"params": r1, "drop_path": r2}, views, camids, train=True))(
        p_rng, d_rng
    )
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}

"""The T-MSPR model (docs/reference.md §3-§8): ViT backbone, global branch b1, JPM and HSPM/HSRM branch b2,
BNNecks and classifiers.

Parameter names are the contract in docs/interfaces.md (``convert_weights.mapping`` relies on them). With
``stack_branches`` the four views, the four JPM groups and the six part sequences run as stacked batches; the result is
the same as the plain per-branch computation (only the drop-path draws differ).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import struct

from tmspr_jax.utils import pair

from tmspr_jax.models.vit import (
    LN_EPS, POS_EMBED_INITS, VisionTransformer, block_class, compute_dtype, drop_path_rates, patch_grid,
)

Dtype = Any

NUM_PARTS = 6  # background, head, body, accessory, legs, feet
MINMAX_EPS = 1e-8
# 'none': no min-max, the softmax of the raw logits (the per-patch part probabilities loss.seg_loss='soft_ce' trains)
PART_NORMS = ("batch", "sample", "none")
# How the part attention w [B,gh,gw] shapes b2's pass for each part (model.part_pool):
#   'scale' (reference): the patch tokens are multiplied by w. b2 starts with a LayerNorm of every token and
#     LN(w * x) = LN(x), so the cls output does not depend on w (up to LayerNorm's epsilon): all six part features are
#     b2 on the plain tokens, and the ID losses send no gradient into the part head through w.
#   'attention': log(w) is added to b2's attention scores for each patch key, so the cls token pools patch j with a
#     weight proportional to w_j * exp(q . k_j): the part features pool their parts' patches.
PART_POOLS = ("scale", "attention")
PART_BIAS_EPS = 1e-6  # log(w + eps): a patch with w = 0 keeps a finite score
NECK_FEATS = ("before", "after")
# 'linear' = the reference's bias-free nn.Linear; 'cosine' = cosine similarities, for losses.ID_LOSSES' margin losses
CLASSIFIERS = ("linear", "cosine")


@struct.dataclass
class TrainOutputs:
    """Training outputs in the reference order (docs/reference.md §8): 15 logits ``[B,C]`` and 18 features."""

    logits: tuple
    feats: tuple


class TransformerHead(nn.Module):
    """b1 / b2: one transformer block followed by a LayerNorm (copies of the backbone's last block and norm)."""

    dim: int
    num_heads: int
    mlp_ratio: float
    drop_path: float
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, key_bias: jax.Array | None = None) -> jax.Array:
        x = block_class(self.remat)(self.dim, self.num_heads, self.mlp_ratio, self.drop_path, self.dtype,
                                    name="block")(x, not train, key_bias)
        return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name="norm")(x)


def l2_normalise(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """``x / max(|x|, eps)`` along ``axis`` (torch ``F.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


class CosineClassifier(nn.Module):
    """Cosine of the angle between each feature and each class's weight vector: ``[B, D] -> [B, C]`` in [-1, 1].

    The head of NormFace/CosFace/ArcFace/circle losses (fast-reid's ``CosSoftmax`` and relatives); their scale and
    margin are applied in the loss (``losses.margin_logits``), which knows the labels. The weight is ``kernel [D, C]``
    as in ``nn.Dense``, so checkpoints keep one layout whichever classifier trained them. Computed in float32.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.num_classes), jnp.float32)
        return l2_normalise(x.astype(jnp.float32)) @ l2_normalise(kernel, axis=0)


def shuffle_unit(features: jax.Array, shift: int, groups: int) -> jax.Array:
    """The reference's JPM rearrangement of ``[B, 1+L, D]`` tokens (cls dropped).

    Shift: ``concat(F[:, shift:], F[:, 1:shift])`` (effectively a cyclic shift of the patches by ``shift - 1``).
    Shuffle: view as ``[B, groups, L/groups, D]``, swap the two middle axes, flatten. When ``L`` is not divisible by
    ``groups`` the reference appends the second-to-last token once and retries; if that still does not divide, the
    reference crashes and so do we, with a clear error.
    """
    b, _, d = features.shape
    x = jnp.concatenate([features[:, shift:], features[:, 1:shift]], axis=1)
    n = x.shape[1]
    if n % groups:
        x = jnp.concatenate([x, x[:, -2:-1]], axis=1)
        n += 1
        if n % groups:
            raise ValueError(f"JPM shuffle: {n - 1} shifted tokens cannot be split into model.shuffle_groups="
                             f"{groups} groups (nor {n} after the reference's one-token padding)")
    x = x.reshape(b, groups, n // groups, d)
    return jnp.swapaxes(x, 1, 2).reshape(b, n, d)


def part_minmax(logits: jax.Array, mode: str, valid: jax.Array | None = None) -> jax.Array:
    """Per-channel min-max normalisation of part logits ``[B,gh,gw,6]``: ``(O - min) / (max - min + 1e-8)``.

    ``mode='batch'``: statistics over (batch, y, x), as the reference (rows with ``valid == False`` excluded);
    ``'sample'``: per image over (y, x).
    """
    if mode == "batch":
        axes: tuple[int, ...] = (0, 1, 2)
    elif mode == "sample":
        axes = (1, 2)
    else:
        raise ValueError(f"part_minmax: mode={mode!r}, expected 'batch' or 'sample'")
    if valid is None:
        lo = jnp.min(logits, axis=axes, keepdims=True)
        hi = jnp.max(logits, axis=axes, keepdims=True)
    else:
        v = jnp.asarray(valid, bool).reshape(-1, 1, 1, 1)
        lo = jnp.min(jnp.where(v, logits, jnp.inf), axis=axes, keepdims=True)
        hi = jnp.max(jnp.where(v, logits, -jnp.inf), axis=axes, keepdims=True)
        if mode == "sample":  # padding rows: keep finite values (they are discarded anyway)
            lo, hi = jnp.where(v, lo, 0.0), jnp.where(v, hi, 1.0)
    return (logits - lo) / (hi - lo + MINMAX_EPS)


def visibility(logits: jax.Array) -> jax.Array:
    """``vis[b, i-1] = 1`` if part ``i`` (1..5) is the argmax of the RAW logits anywhere in image ``b``; ``[B,5,1]``."""
    parsing = jnp.argmax(logits, axis=-1)  # [B, gh, gw]
    parts = jnp.arange(1, NUM_PARTS)
    vis = jnp.any(parsing[:, None, :, :] == parts[None, :, None, None], axis=(2, 3))
    return vis.astype(jnp.float32)[..., None]


def nearest_neighbour(global_feat: jax.Array) -> jax.Array:
    """Index of each sample's most cosine-similar sample; the diagonal is set to 0 (not -inf), first index on ties."""
    g = jax.lax.stop_gradient(global_feat)
    n = l2_normalise(g)
    sim = n @ n.T
    sim = jnp.where(jnp.eye(sim.shape[0], dtype=bool), 0.0, sim)
    return jnp.argmax(sim, axis=1)


def recover_parts(parts: jax.Array, vis: jax.Array, nn_idx: jax.Array) -> jax.Array:
    """HSRM completion ``Q * vis + Q[nn] * (1 - vis)``; the gather keeps the gradient to the neighbour's parts."""
    return parts * vis + parts[nn_idx] * (1.0 - vis)


class TMSPR(nn.Module):
    """T-MSPR (docs/reference.md §1-§8). ``__call__(views [B,4,H,W,3], camids [B], *, train) -> TrainOutputs``;
    ``extract(images [B,H,W,3], camids [B], valid=None) -> [B, 7680 | 3840]`` (call with ``method=TMSPR.extract``).
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
    remat: bool = False
    stack_branches: bool = True
    pos_embed_init: str = "normal"  # vit.POS_EMBED_INITS
    local_mlp: bool = False  # vit.VisionTransformer.local_mlp: the backbone blocks only (b1/b2 see token subsets)

    @property
    def grid(self) -> tuple[int, int]:
        return patch_grid(self.img_size, self.patch_size, self.stride)

    @property
    def feature_dim(self) -> int:
        """Width of the eval feature: 10*D for neck_feat 'before', 5*D for 'after'."""
        return (10 if self.neck_feat == "before" else 5) * self.embed_dim

    def setup(self) -> None:
        if self.depth < 2:
            raise ValueError(f"model.depth={self.depth}: T-MSPR needs depth >= 2 (the last block becomes b1/b2)")
        if self.part_norm not in PART_NORMS:
            raise ValueError(f"model.part_norm={self.part_norm!r}: expected one of {PART_NORMS}")
        if self.part_pool not in PART_POOLS:
            raise ValueError(f"model.part_pool={self.part_pool!r}: expected one of {PART_POOLS}")
        if self.neck_feat not in NECK_FEATS:
            raise ValueError(f"model.neck_feat={self.neck_feat!r}: expected one of {NECK_FEATS}")
        if self.classifier_kind not in CLASSIFIERS:
            raise ValueError(f"model.classifier={self.classifier_kind!r}: expected one of {CLASSIFIERS}")
        gh, gw = self.grid
        if self.divide_length < 1 or (gh * gw) // self.divide_length < 1:
            raise ValueError(f"model.divide_length={self.divide_length}: must be in 1..{gh * gw} (patch count)")
        self.backbone = VisionTransformer(
            img_size=tuple(self.img_size), patch_size=self.patch_size, stride=tuple(self.stride),
            embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            drop_path=self.drop_path, num_cameras=self.num_cameras, num_views=self.num_views, sie_coe=self.sie_coe,
            local_feature=True, dtype=self.dtype, remat=self.remat, pos_embed_init=self.pos_embed_init,
            local_mlp=self.local_mlp)
        last_rate = drop_path_rates(self.drop_path, self.depth)[-1]  # b1/b2 copy the last block: rate = drop_path
        head = lambda: TransformerHead(self.embed_dim, self.num_heads, self.mlp_ratio, last_rate, self.dtype,
                                       self.remat)
        self.b1 = head()
        self.b2 = head()
        self.part_head = nn.Dense(NUM_PARTS, use_bias=False, kernel_init=nn.initializers.normal(1e-4))
        bn = lambda: nn.BatchNorm(use_bias=False, epsilon=1e-5, momentum=0.9, scale_init=nn.initializers.ones)
        self.bottleneck = bn()
        self.bottleneck_occ1, self.bottleneck_occ2, self.bottleneck_occ3 = bn(), bn(), bn()
        self.bottleneck_1, self.bottleneck_2, self.bottleneck_3, self.bottleneck_4 = bn(), bn(), bn(), bn()
        self.bottleneck_cp = bn()
        (self.bottleneck_bp0, self.bottleneck_bp1, self.bottleneck_bp2, self.bottleneck_bp3, self.bottleneck_bp4,
         self.bottleneck_bp5) = (bn() for _ in range(6))
        if self.classifier_kind == "cosine":
            cls = lambda: CosineClassifier(self.num_classes)
        else:
            cls = lambda: nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                                   kernel_init=nn.initializers.normal(1e-3))
        self.classifier = cls()
        self.classifier_occ1, self.classifier_occ2, self.classifier_occ3 = cls(), cls(), cls()
        (self.classifier_1, self.classifier_2, self.classifier_3, self.classifier_4,
         self.classifier_5) = (cls() for _ in range(5))
        self.classifier_0 = cls()
        self.classifier_cp = cls()

    # ------------------------------------------------------------------------------------------------ pieces
    def _b2_cls(self, seqs: Sequence[jax.Array], train: bool, key_biases: Sequence[jax.Array] | None = None
                ) -> list[jax.Array]:
        """b2 cls output of each sequence (with its attention key bias ``[B, N]`` if given); stacked along the batch
        axis when they share a length."""
        if self.stack_branches and len(seqs) > 1:
            b = seqs[0].shape[0]
            bias = None if key_biases is None else jnp.concatenate(key_biases, axis=0)
            out = self.b2(jnp.concatenate(seqs, axis=0), train=train, key_bias=bias)[:, 0]
            return [out[i * b:(i + 1) * b] for i in range(len(seqs))]
        biases = [None] * len(seqs) if key_biases is None else key_biases
        return [self.b2(s, train=train, key_bias=kb)[:, 0] for s, kb in zip(seqs, biases)]

    def _jpm(self, feats: jax.Array, train: bool) -> list[jax.Array]:
        """The four JPM local features ``local_feat_1..4`` from the backbone tokens ``[B, 1+L, D]``."""
        num_patches = feats.shape[1] - 1
        patch_length = num_patches // self.divide_length
        token = feats[:, 0:1]
        x = shuffle_unit(feats, self.shift_num, self.shuffle_groups) if self.re_arrange else feats[:, 1:]
        if 4 * patch_length > x.shape[1]:
            raise ValueError(f"JPM: model.divide_length={self.divide_length} gives 4 groups of {patch_length} tokens, "
                             f"more than the {x.shape[1]} available")
        seqs = [jnp.concatenate([token, x[:, k * patch_length:(k + 1) * patch_length]], axis=1) for k in range(4)]
        return self._b2_cls(seqs, train)

    def _parts(self, feats: jax.Array, which: Sequence[int], train: bool, valid: jax.Array | None
               ) -> tuple[jax.Array, list[jax.Array]]:
        """HSPM: raw part logits ``O [B,gh,gw,6]`` and the b2 cls features of part sequences ``which`` (0 = fg),
        pooled as ``part_pool`` says (see PART_POOLS)."""
        b, _, d = feats.shape
        gh, gw = self.grid
        token = feats[:, 0:1]
        patches = feats[:, 1:].reshape(b, gh, gw, d)
        logits = self.part_head(patches.astype(jnp.float32))  # f32: argmax/min-max are precision-sensitive
        scores = logits if self.part_norm == "none" else part_minmax(logits, self.part_norm, valid)
        attn = jax.nn.softmax(scores, axis=-1)
        seqs, biases = [], []
        for i in which:
            # foreground mask = sum of channels 1..5, as the reference computes it
            w = jnp.sum(attn[..., 1:], axis=-1, keepdims=True) if i == 0 else attn[..., i:i + 1]
            pooled = w * patches if self.part_pool == "scale" else patches
            seqs.append(jnp.concatenate([token, pooled.reshape(b, gh * gw, d)], axis=1))
            if self.part_pool == "attention":
                logw = jnp.log(w.reshape(b, gh * gw) + PART_BIAS_EPS)
                biases.append(jnp.concatenate([jnp.zeros((b, 1), logw.dtype), logw], axis=1))
        return logits, self._b2_cls(seqs, train, biases if biases else None)

    def _backbone_views(self, views: jax.Array, camids: jax.Array, train: bool) -> list[jax.Array]:
        b = views.shape[0]
        if self.stack_branches:
            x = jnp.swapaxes(views, 0, 1).reshape((4 * b,) + views.shape[2:])  # view-major [4B, H, W, 3]
            f = self.backbone(x, jnp.tile(camids, 4), train=train)
            return [f[v * b:(v + 1) * b] for v in range(4)]
        return [self.backbone(views[:, v], camids, train=train) for v in range(4)]

    def _global(self, feats: Sequence[jax.Array], train: bool) -> list[jax.Array]:
        if self.stack_branches and len(feats) > 1:
            b = feats[0].shape[0]
            g = self.b1(jnp.concatenate(feats, axis=0), train=train)[:, 0]
            return [g[v * b:(v + 1) * b] for v in range(len(feats))]
        return [self.b1(f, train=train)[:, 0] for f in feats]

    # ------------------------------------------------------------------------------------------------ entry points
    def __call__(self, views: jax.Array, camids: jax.Array, *, train: bool) -> TrainOutputs:
        """Full reference forward on the four views ``[B,4,H,W,3]`` (docs/reference.md §3-§8).

        ``train=True`` uses batch statistics in every BNNeck (mutable ``'batch_stats'``) and stochastic depth (rng
        ``'drop_path'`` when ``drop_path > 0``); ``train=False`` uses the running statistics, as torch ``eval()``.
        """
        if views.ndim != 5 or views.shape[1] != 4 or views.shape[-1] != 3:
            raise ValueError(f"TMSPR: expected views [B,4,H,W,3], got shape {views.shape}")
        camids = jnp.asarray(camids, jnp.int32)
        f = self._backbone_views(views, camids, train)
        g1, g2, g3, g4 = self._global(f, train)
        locals_ = self._jpm(f[0], train)
        logits_o, parts = self._parts(f[0], range(NUM_PARTS), train, None)
        p0, p_vis = parts[0], parts[1:]
        vis = visibility(logits_o)
        nn_idx = nearest_neighbour(g1)
        q = jnp.stack(p_vis, axis=1)  # [B, 5, D]
        qc = recover_parts(q, vis, nn_idx)
        feat_c1 = self.b2(qc, train=train)[:, 0]  # 5 tokens, no cls: output slot 0

        ura = not train
        feat = self.bottleneck(g1, use_running_average=ura)
        feat2 = self.bottleneck_occ1(g2, use_running_average=ura)
        feat3 = self.bottleneck_occ2(g3, use_running_average=ura)
        feat4 = self.bottleneck_occ3(g4, use_running_average=ura)
        local_bn = [bnk(lk, use_running_average=ura) for bnk, lk in
                    zip((self.bottleneck_1, self.bottleneck_2, self.bottleneck_3, self.bottleneck_4), locals_)]
        bp_cp = self.bottleneck_cp(feat_c1, use_running_average=ura)
        bp_bns = (self.bottleneck_bp0, self.bottleneck_bp1, self.bottleneck_bp2, self.bottleneck_bp3,
                  self.bottleneck_bp4, self.bottleneck_bp5)
        bp = [bnk(pk, use_running_average=ura) for bnk, pk in zip(bp_bns, parts)]

        shared = (self.classifier_1, self.classifier_2, self.classifier_3, self.classifier_4)  # JPM k == part k
        f32 = lambda x: x.astype(jnp.float32)
        logits = (
            f32(self.classifier(feat)), f32(self.classifier_occ1(feat2)), f32(self.classifier_occ2(feat3)),
            f32(self.classifier_occ3(feat4)),
            *(f32(c(x)) for c, x in zip(shared, local_bn)),
            f32(self.classifier_cp(bp_cp)), f32(self.classifier_0(bp[0])),
            *(f32(c(x)) for c, x in zip(shared + (self.classifier_5,), bp[1:])),
        )
        feats = (g1, logits_o, q, qc, g2, g3, g4, *locals_, feat_c1, p0, *p_vis)
        return TrainOutputs(logits=logits, feats=feats)

    def extract(self, images: jax.Array, camids: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """The eval feature (docs/reference.md §13.1), computing only view 1, b1, JPM and (for 'before') parts 1..5.

        'before': ``[g1, jpm1..4, p1..p5]`` ``[B, 10*D]``; 'after': ``[bn(g1), bn_k(jpm_k)/4]`` ``[B, 5*D]``
        (running statistics). ``valid`` (bool ``[B]``) excludes padding rows from the batch-wise min-max.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"TMSPR.extract: expected images [B,H,W,3], got shape {images.shape}")
        f1 = self.backbone(images, jnp.asarray(camids, jnp.int32), train=False)
        g1 = self.b1(f1, train=False)[:, 0]
        locals_ = self._jpm(f1, False)
        if self.neck_feat == "after":
            bns = (self.bottleneck_1, self.bottleneck_2, self.bottleneck_3, self.bottleneck_4)
            out = [self.bottleneck(g1, use_running_average=True)]
            out += [bn(lk, use_running_average=True) / 4.0 for bn, lk in zip(bns, locals_)]
            return jnp.concatenate(out, axis=-1)
        _, parts = self._parts(f1, range(1, NUM_PARTS), False, valid)
        return jnp.concatenate([g1, *locals_, *parts], axis=-1)

    def part_maps(self, images: jax.Array, camids: jax.Array, valid: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
        """What HSPM sees on test images: the part attention ``[B,gh,gw,6]`` (softmax over the 6 channels of the
        normalised part logits, as b2's part pooling uses it) and HSRM's visibility flags ``[B,5]`` of parts 1..5."""
        f1 = self.backbone(images, jnp.asarray(camids, jnp.int32), train=False)
        b, _, d = f1.shape
        gh, gw = self.grid
        logits = self.part_head(f1[:, 1:].reshape(b, gh, gw, d).astype(jnp.float32))
        scores = logits if self.part_norm == "none" else part_minmax(logits, self.part_norm, valid)
        return jax.nn.softmax(scores, axis=-1), visibility(logits)[..., 0]


def build_model(model_cfg: Any, img_size: Sequence[int], num_classes: int, num_cameras: int) -> TMSPR:
    """Build :class:`TMSPR` from the ``config.model`` node (keys in configs/common.py).

    The SIE camera table gets ``num_cameras`` rows when ``model.sie_camera`` (it exists only if there are > 1
    cameras); ``model.sie_view`` adds a view term with 1 view (all person datasets have a single view).
    """
    def get(key: str) -> Any:
        try:
            return model_cfg[key]
        except (KeyError, AttributeError) as e:
            raise KeyError(f"config.model.{key} is missing (see configs/common.py)") from e

    if int(num_classes) < 1:
        raise ValueError(f"build_model: num_classes={num_classes}, expected >= 1")
    if int(num_cameras) < 0:
        raise ValueError(f"build_model: num_cameras={num_cameras}, expected >= 0")
    stride = pair(get("stride"), "config.model.stride")  # one number: a square stride
    img_size = tuple(int(s) for s in img_size)
    patch_grid(img_size, int(get("patch_size")), stride)  # validates the geometry early
    for key, allowed in (("part_norm", PART_NORMS), ("part_pool", PART_POOLS), ("neck_feat", NECK_FEATS),
                         ("classifier", CLASSIFIERS), ("pos_embed_init", POS_EMBED_INITS)):
        if get(key) not in allowed:
            raise ValueError(f"config.model.{key}={get(key)!r}: expected one of {allowed}")
    return TMSPR(
        num_classes=int(num_classes), img_size=img_size,
        num_cameras=int(num_cameras) if get("sie_camera") else 0, num_views=1 if get("sie_view") else 0,
        patch_size=int(get("patch_size")), stride=stride, embed_dim=int(get("embed_dim")), depth=int(get("depth")),
        num_heads=int(get("num_heads")), mlp_ratio=float(get("mlp_ratio")), drop_path=float(get("drop_path")),
        sie_coe=float(get("sie_coe")), re_arrange=bool(get("re_arrange")), shift_num=int(get("shift_num")),
        shuffle_groups=int(get("shuffle_groups")), divide_length=int(get("divide_length")),
        part_norm=str(get("part_norm")), part_pool=str(get("part_pool")), neck_feat=str(get("neck_feat")),
        classifier_kind=str(get("classifier")), dtype=compute_dtype(str(get("dtype"))),
        remat=bool(get("remat")), stack_branches=bool(get("stack_branches")), pos_embed_init=str(get("pos_embed_init")),
        local_mlp=bool(get("local_mlp")))


def init_variables(model: TMSPR, rng: jax.Array, batch_size: int = 2) -> dict:
    """Random ``{'params', 'batch_stats'}`` for ``model`` (built with the training call so every parameter exists)."""
    h, w = model.img_size
    views = jnp.zeros((batch_size, 4, h, w, 3), jnp.float32)
    camids = jnp.zeros((batch_size,), jnp.int32)
    p_rng, d_rng = jax.random.split(rng)
    variables = jax.jit(lambda r1, r2: model.init({"params": r1, "drop_path": r2}, views, camids, train=True))(
        p_rng, d_rng)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}

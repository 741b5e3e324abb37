"""TransReID ViT backbone (docs/reference.md §2) in Flax linen.

Overlapping patch embedding, cls token, position embedding, SIE camera/view embedding, pre-norm transformer blocks
with per-sample stochastic depth. In JPM mode (``local_feature=True``) only the first ``depth - 1`` blocks exist and the
raw residual stream is returned (the last block and the final norm become the model's b1/b2 heads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from tmspr_jax.models.attention import ATTN_LSE, attend
from tmspr_jax.utils import patch_grid

Dtype = Any

LN_EPS = 1e-6
# PyTorch trunc_normal_(std=.02, a=-2, b=2) cuts at +-100 sigma: effectively a plain normal (docs/reference.md §2.4).
_normal02 = nn.initializers.normal(stddev=0.02)
# How the position embedding starts: 'normal' = the reference's N(0, 0.02) (pretrained weights overwrite it);
# 'sincos' = 2-D sine-cosine codes, which a model trained from scratch need not learn first (see sincos_embedding).
POS_EMBED_INITS = ("normal", "sincos")

# What the backward pass keeps of each transformer block (config.model.remat; docs/memory.md):
#   'none':  everything autodiff keeps (LayerNorm and GELU intermediates; no N x N attention tensor either way,
#            see models.attention);
#   'dots':  the block's input, the qkv and fc1 matmul outputs and the attention's output (with its softmax
#            normaliser), named below; the backward pass recomputes the LayerNorms, GELU and the attention
#            projection's output (one D x D matmul per token, to rebuild the residual stream);
#   'block': the block's input only; the whole block is recomputed in the backward pass.
REMAT_MODES = ("none", "dots", "block")
QKV, ATTN_OUT, MLP_HIDDEN = "qkv", "attn_out", "mlp_hidden"  # checkpoint names of the tensors 'dots' keeps


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One backbone of the reference's model factory (``MODEL.TRANSFORMER_TYPE``): its sizes and shape rules.

    ``config.model.embed_dim / depth / num_heads / mlp_ratio`` give the sizes (the factory's are below); the rules
    hold at any size: the qkv projection's bias and the attention scale, ``head_dim ** -0.5`` or, for the old timm
    ViT-S, ``embed_dim ** -0.5`` (its factory sets ``qk_scale = 768 ** -0.5``, which is that at its width).
    """

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool = True
    width_scale: bool = False  # attention scale embed_dim ** -0.5 instead of head_dim ** -0.5
    imagenet: str = ""  # the ImageNet weights the reference starts it from

    def attention_scale(self, embed_dim: int, num_heads: int) -> float:
        """The attention scores' scale at width ``embed_dim`` with ``num_heads`` heads."""
        return float(embed_dim**-0.5 if self.width_scale else (embed_dim // num_heads) ** -0.5)


# The reference's four names; deit_base is vit_base's network started from DeiT's weights (the factory maps it to
# vit_base_patch16_224_TransReID). The reference's T-MSPR heads are hard-coded to width 768, so its deit_small model
# does not build; here every head is sized from the backbone.
BACKBONES = {
    "vit_base_patch16_224_TransReID": Backbone(
        768, 12, 12, 4.0, imagenet="jx_vit_base_p16_224-80ecf9dd.pth (timm vit_base_patch16_224.orig_in21k_ft_in1k)"
    ),
    "deit_base_patch16_224_TransReID": Backbone(
        768, 12, 12, 4.0, imagenet="deit_base_distilled_patch16_224-df68dfff.pth or deit_base_patch16_224-b5f2ef4d.pth"
    ),
    "vit_small_patch16_224_TransReID": Backbone(
        768, 8, 8, 3.0, qkv_bias=False, width_scale=True, imagenet="vit_small_p16_224-15ec54c9.pth (timm's first ViT-S)"
    ),
    "deit_small_patch16_224_TransReID": Backbone(
        384, 12, 6, 4.0, imagenet="deit_small_distilled_patch16_224-649709d9.pth or deit_small_patch16_224-cd65a155.pth"
    ),
}
DEFAULT_BACKBONE = "vit_base_patch16_224_TransReID"


def backbone(name: str) -> Backbone:
    """The :class:`Backbone` named by ``config.model.backbone``; another name is one error listing the four."""
    if name not in BACKBONES:
        raise ValueError(f"model.backbone={name!r}: expected one of {list(BACKBONES)}")
    return BACKBONES[name]


def backbone_settings(name: str) -> dict[str, Any]:
    """``config.model`` keys for the backbone ``name`` at the reference's sizes: ``c.model.update(...)``."""
    spec = backbone(name)
    return dict(
        backbone=name,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_ratio,
    )


def sie_table_rows(num_cameras: int, num_views: int) -> int:
    """Rows of the SIE table (0 = none): it exists only if cameras > 1 or views > 1 (docs/reference.md §2.2)."""
    c, v = int(num_cameras), int(num_views)
    if c > 1 and v > 1:
        return c * v
    if c > 1:
        return c
    if v > 1:
        return v
    return 0


def sincos_embedding(grid: Sequence[int], dim: int) -> np.ndarray:
    """2-D sine-cosine position codes ``[1 + gh*gw, dim]`` in the token order (cls first, then row-major patches).

    A quarter of the channels each holds sin and cos of the patch column and of the patch row at the frequencies
    ``10000 ** (-i / (dim/4))``, ``i = 0 .. dim/4 - 1``; the cls row is zero. Nearby patches get similar codes, so
    a model trained from scratch starts with the 2-D layout instead of having to learn it.
    """
    gh, gw = int(grid[0]), int(grid[1])
    if dim % 4:
        raise ValueError(f"sine-cosine position embedding: embed_dim={dim} must be a multiple of 4")
    freqs = 10000.0 ** (-np.arange(dim // 4) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
    x = cols.reshape(-1, 1) * freqs
    y = rows.reshape(-1, 1) * freqs
    codes = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return np.concatenate([np.zeros((1, dim)), codes]).astype(np.float32)


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates, ``linspace(0, drop_path, depth)`` as the reference."""
    return [float(r) for r in np.linspace(0.0, drop_path, depth)]


def compute_dtype(name: str) -> Dtype:
    """Map the config's ``model.dtype`` string to a JAX dtype."""
    table = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if name not in table:
        raise ValueError(f"model.dtype={name!r}: expected one of {sorted(table)}")
    return table[name]


def drop_path(module: nn.Module, x: jax.Array, rate: float, deterministic: bool) -> jax.Array:
    """Per-sample stochastic depth: keep each row with prob ``1 - rate`` and scale kept rows by ``1 / keep``."""
    if deterministic or rate == 0.0:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # [B, 1, 1]: one draw per sample
    mask = jax.random.bernoulli(module.make_rng("drop_path"), keep, shape)
    return x * (mask.astype(x.dtype) / keep)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (bias unless ``qkv_bias=False``) laid out as (3, heads,
    head_dim).

    Scores go through :func:`tmspr_jax.models.attention.attend`; the softmax is taken in float32. The qkv projection's
    output and the attention's output are named (``QKV``, ``ATTN_OUT``) for the memory modes' checkpoint policy.
    """

    dim: int
    num_heads: int
    dtype: Dtype = jnp.float32
    implementation: str = "auto"  # ATTENTION_IMPLEMENTATIONS
    qkv_bias: bool = True  # False: the old timm ViT-S (Backbone.qkv_bias)
    scale: float | None = None  # the scores' scale; None: head_dim ** -0.5 (Backbone.attention_scale)

    def setup(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"embed_dim {self.dim} is not divisible by num_heads {self.num_heads}")
        dense = lambda feats, bias=True: nn.Dense(
            feats,
            use_bias=bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=_normal02,
            bias_init=nn.initializers.zeros,
        )
        self.qkv = dense(3 * self.dim, self.qkv_bias)
        self.proj = dense(self.dim)

    @property
    def score_scale(self) -> float:
        return float((self.dim // self.num_heads) ** -0.5 if self.scale is None else self.scale)

    def __call__(self, x: jax.Array, key_bias: jax.Array | None = None) -> jax.Array:
        """``key_bias [B, N]`` (optional) is added to every query's attention scores for each key token."""
        b, n, d = x.shape
        hd = d // self.num_heads
        qkv = checkpoint_name(self.qkv(x), QKV).reshape(b, n, 3, self.num_heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
        bias = None if key_bias is None else key_bias.astype(jnp.float32)[:, None, None, :]
        out = attend(q, k, v, bias, self.dtype, self.implementation, self.score_scale)
        return self.proj(checkpoint_name(out.reshape(b, n, d), ATTN_OUT))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    hidden: int
    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_normal02, name="fc1")(x)
        x = nn.gelu(checkpoint_name(x, MLP_HIDDEN), approximate=False)  # exact erf GELU as torch nn.GELU()
        return nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_normal02, name="fc2")(x)


class Block(nn.Module):
    """Pre-norm transformer block; the residual stream and LayerNorms stay float32.

    ``__call__`` is the full block. :meth:`cls_forward` computes only the cls token's output, which is all that b1 and
    b2 keep (docs/reference.md §3-§6), and does it for several token scalings at the price of one: the reference's
    HSPM multiplies the patch tokens by each part's attention before b2, and ``LN(w x) = (x - mu) w / sqrt(w^2 var +
    eps)`` differs from ``LN(x)`` by one factor per token, so the qkv projection of the centred tokens is shared and
    each part only rescales keys and values.
    """

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    attention: str = "auto"  # ATTENTION_IMPLEMENTATIONS
    qkv_bias: bool = True
    scale: float | None = None  # attention scale (None: head_dim ** -0.5)

    def setup(self) -> None:
        self.norm1 = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32)
        self.attn = Attention(self.dim, self.num_heads, self.dtype, self.attention, self.qkv_bias, self.scale)
        self.norm2 = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32)
        self.mlp = Mlp(int(self.dim * self.mlp_ratio), self.dim, self.dtype)

    def __call__(self, x: jax.Array, deterministic: bool = True, key_bias: jax.Array | None = None) -> jax.Array:
        x = x.astype(jnp.float32)
        h = self.attn(self.norm1(x), key_bias)
        x = x + drop_path(self, h.astype(jnp.float32), self.drop_path, deterministic)
        h = self.mlp(self.norm2(x))
        return x + drop_path(self, h.astype(jnp.float32), self.drop_path, deterministic)

    def cls_forward(
        self,
        x: jax.Array,
        deterministic: bool = True,
        token_scale: jax.Array | None = None,
        key_bias: jax.Array | None = None,
    ) -> jax.Array:
        """The block's output at token 0 only, for ``P`` variants of the sequence ``x [B, N, D]``: ``[P, B, D]``.

        Variant ``p`` is the sequence with token ``j`` multiplied by ``token_scale[p, :, j]`` (``[P, B, N]``, > 0;
        None = 1) and ``key_bias[p]`` (``[P, B, N]`` or None) added to the attention scores: equal, up to float
        rounding, to ``__call__(token_scale[p][..., None] * x, key_bias=key_bias[p])[:, 0]``, LayerNorm's epsilon
        included (tests/test_vit.py checks it on small-norm tokens, where the epsilon matters). Each variant costs
        ``O(N D)`` after one shared ``[B, N, D] x [D, 2D]`` key-value projection. Stochastic depth draws one mask per
        variant and sample, as ``P`` separate passes would.
        """
        if self.is_initializing():  # create every parameter through the full block
            self(x, deterministic, None if key_bias is None else key_bias[0])
        x = x.astype(jnp.float32)
        b, n, d = x.shape
        heads, hd = self.num_heads, d // self.num_heads
        ln = self.norm1.variables["params"]
        qkv = self.attn.qkv.variables["params"]
        mu = jnp.mean(x, axis=-1, keepdims=True)
        centred = x - mu
        var = jnp.mean(jnp.square(centred), axis=-1)  # [B, N]
        if token_scale is None:
            r = jax.lax.rsqrt(var + LN_EPS)[None]  # [1, B, N]
        else:
            w = token_scale.astype(jnp.float32)
            r = w * jax.lax.rsqrt(jnp.square(w) * var + LN_EPS)  # LN(w x) = (x - mu) * r
        kernel = qkv["kernel"]  # [D, 3D]: query | key | value
        cg = (centred * ln["scale"]).astype(self.dtype)
        # LN(w x) @ W + b = r * ((x - mu) * gamma) @ W + (beta @ W + b): one matmul for every variant. Every token's
        # key and value, but only the cls token's query (the only output kept).
        kv = checkpoint_name(jnp.dot(cg, kernel[:, d:].astype(self.dtype)), QKV).reshape(b, n, 2, heads, hd)
        zq = jnp.dot(cg[:, 0], kernel[:, :d].astype(self.dtype)).astype(jnp.float32).reshape(b, heads, hd)
        c = ln["bias"] @ kernel + (qkv["bias"] if "bias" in qkv else 0.0)
        c = c.reshape(3, heads, hd)
        # The cls token's query, per variant (its scale may differ from 1 in general).
        q = r[..., 0, None, None] * zq[None] + c[0]  # [P, B, H, hd]
        qk = jnp.einsum("pbhd,bnhd->pbhn", q.astype(self.dtype), kv[:, :, 0]).astype(jnp.float32)
        qc = jnp.einsum("pbhd,hd->pbh", q, c[1])
        scores = (r[:, :, None, :] * qk + qc[..., None]) * self.attn.score_scale  # [P, B, H, N]
        if key_bias is not None:
            scores = scores + key_bias.astype(jnp.float32)[:, :, None, :]
        probs = jax.nn.softmax(scores, axis=-1)
        # sum_j a_j (r_j V_j + c_v) = (a * r) @ V + c_v, since the a_j sum to 1
        weights = (probs * r[:, :, None, :]).astype(self.dtype)
        out = jnp.einsum("pbhn,bnhd->pbhd", weights, kv[:, :, 1]).astype(jnp.float32) + c[2]
        p = out.shape[0]
        h = self.attn.proj(out.reshape(p * b, d).astype(self.dtype)).astype(jnp.float32)
        x0 = x[:, 0] if token_scale is None else token_scale[..., 0, None].astype(jnp.float32) * x[:, 0]
        x0 = jnp.broadcast_to(x0, (p, b, d)).reshape(p * b, d)  # the cls token's own (scaled) residual
        x0 = x0 + drop_path(self, h, self.drop_path, deterministic)
        h = self.mlp(self.norm2(x0)).astype(jnp.float32)
        x0 = x0 + drop_path(self, h, self.drop_path, deterministic)
        return x0.reshape(p, b, d)


def remat_policy(remat: str) -> Callable[..., bool] | None:
    """The ``jax.checkpoint`` policy of a memory mode (:data:`REMAT_MODES`; None: save nothing)."""
    if remat not in REMAT_MODES:
        raise ValueError(f"model.remat={remat!r}: expected one of {REMAT_MODES}")
    names = (QKV, ATTN_OUT, ATTN_LSE, MLP_HIDDEN)
    return jax.checkpoint_policies.save_only_these_names(*names) if remat == "dots" else None


def block_class(remat: str) -> type[nn.Module]:
    """``Block`` as the memory mode ``remat`` (:data:`REMAT_MODES`) keeps it for the backward pass."""
    policy = remat_policy(remat)
    if remat == "none":
        return Block
    # static_argnums counts the module itself as argument 0: ``deterministic`` is static.
    return nn.remat(Block, static_argnums=(2,), policy=policy, methods=["__call__", "cls_forward"])


class VisionTransformer(nn.Module):
    """TransReID ViT (docs/reference.md §2). ``__call__(images [B,H,W,3], camids [B], viewids=None, *, train)``.

    Returns ``[B, 1 + gh*gw, D]``: with ``local_feature`` the raw residual stream after ``depth - 1`` blocks (blocks
    ``depth - 1`` and ``norm`` are not created), otherwise the layer-normalised output of all ``depth`` blocks.
    """

    img_size: tuple[int, int] = (256, 128)
    patch_size: int = 16
    stride: tuple[int, int] = (11, 11)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    num_cameras: int = 0  # 0 = no camera SIE
    num_views: int = 0  # 0 = no view SIE
    sie_coe: float = 3.0
    local_feature: bool = True
    dtype: Dtype = jnp.float32
    remat: str = "none"  # one of REMAT_MODES
    attention: str = "auto"  # one of ATTENTION_IMPLEMENTATIONS
    pos_embed_init: str = "normal"  # one of POS_EMBED_INITS
    qkv_bias: bool = True  # Backbone.qkv_bias
    attn_scale: float | None = None  # Backbone.attention_scale (None: head_dim ** -0.5)

    @property
    def grid(self) -> tuple[int, int]:
        return patch_grid(self.img_size, self.patch_size, self.stride)

    @property
    def num_sie(self) -> int:
        """Rows of the SIE table (0 = none)."""
        return sie_table_rows(self.num_cameras, self.num_views)

    def setup(self) -> None:
        d = self.embed_dim
        gh, gw = self.grid
        self.patch_embed = nn.Conv(
            d,
            (self.patch_size, self.patch_size),
            strides=tuple(self.stride),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.normal(np.sqrt(2.0 / (self.patch_size**2 * d))),
            bias_init=nn.initializers.zeros,
        )
        self.cls_token = self.param("cls_token", _normal02, (1, 1, d))
        if self.pos_embed_init not in POS_EMBED_INITS:
            raise ValueError(f"pos_embed_init={self.pos_embed_init!r}: expected one of {POS_EMBED_INITS}")
        if self.pos_embed_init == "sincos":
            pos_init = lambda key, shape, dtype=jnp.float32: jnp.asarray(sincos_embedding((gh, gw), d)[None], dtype)
        else:
            pos_init = _normal02
        self.pos_embed = self.param("pos_embed", pos_init, (1, 1 + gh * gw, d))
        if self.num_sie:
            self.sie_embed = self.param("sie_embed", _normal02, (self.num_sie, 1, d))
        rates = drop_path_rates(self.drop_path, self.depth)
        n_blocks = self.depth - 1 if self.local_feature else self.depth
        cls = block_class(self.remat)
        self.blocks = [
            cls(d, self.num_heads, self.mlp_ratio, rates[i], self.dtype, self.attention, self.qkv_bias, self.attn_scale)
            for i in range(n_blocks)
        ]
        if not self.local_feature:
            self.norm = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32)

    def sie_index(self, camids: jax.Array, viewids: jax.Array | None) -> jax.Array | None:
        """Row of the SIE table per sample (general rule of docs/reference.md §2.2), or None when nothing is added."""
        if not self.num_sie:
            return None
        cams = jnp.asarray(camids, jnp.int32)
        views = jnp.zeros_like(cams) if viewids is None else jnp.asarray(viewids, jnp.int32)
        if self.num_cameras > 0 and self.num_views > 0:
            return cams * self.num_views + views
        if self.num_cameras > 0:
            return cams
        return views

    def __call__(
        self, images: jax.Array, camids: jax.Array, viewids: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"VisionTransformer: expected NHWC images [B,H,W,3], got shape {images.shape}")
        if tuple(images.shape[1:3]) != tuple(self.img_size):
            raise ValueError(
                f"VisionTransformer: image size {tuple(images.shape[1:3])} != configured img_size "
                f"{tuple(self.img_size)} (the position embedding is sized for the latter)"
            )
        b = images.shape[0]
        x = self.patch_embed(images).astype(jnp.float32)  # [B, gh, gw, D]
        x = x.reshape(b, -1, self.embed_dim)  # row-major patch p = gw*y + x
        cls = jnp.broadcast_to(self.cls_token, (b, 1, self.embed_dim))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed
        idx = self.sie_index(camids, viewids)
        if idx is not None:
            x = x + self.sie_coe * self.sie_embed[idx]  # [B, 1, D]: added to every token, cls included
        for blk in self.blocks:
            x = blk(x, not train)
        if not self.local_feature:
            x = self.norm(x)
        return x

"""The boxes of T-MSPR's figure after the backbone, as functions and small modules (docs/reference.md §3-§7).

* b1 / b2: :class:`TransformerHead`, a copy of the backbone's last block and its norm.
* JPM (§4): :func:`shuffle_unit` and :func:`jpm_groups`.
* HSPM (§5): :func:`part_minmax`, :func:`part_attention` and :func:`part_pooling`.
* HSRM (§6): :func:`visibility`, :func:`nearest_neighbour` and :func:`recover_parts`.
* Classifiers (§7): the reference's bias-free linear layer or :class:`CosineClassifier` for margin losses.

:class:`tmspr_jax.models.TMSPR` wires them together.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tmspr_jax.models.vit import LN_EPS, block_class
from tmspr_jax.utils import l2_normalise

Dtype = Any

NUM_PARTS = 6  # background, head, upper body, accessory, legs, feet (LIP grouped as in docs/reference.md §12.2)
MINMAX_EPS = 1e-8
# How the part attention is normalised before its softmax (model.part_norm): 'batch' (reference: min-max over the
# whole batch), 'sample' (per image), 'none' (the softmax of the raw logits, the probabilities loss.seg_loss='soft_ce'
# trains).
PART_NORMS = ("batch", "sample", "none")
# How the part attention w [B,gh,gw] shapes b2's pass for each part (model.part_pool):
#   'scale' (reference): the patch tokens are multiplied by w. b2 starts with a LayerNorm of every token and
#     LN(w * x) = LN(x) up to LayerNorm's epsilon, so all six part features are nearly b2 on the plain tokens, and
#     the ID losses send almost no gradient into the part head through w (docs/reference.md §14).
#   'attention': log(w) is added to b2's attention scores for each patch key, so the cls token pools patch j with a
#     weight proportional to w_j * exp(q . k_j): the part features pool their parts' patches.
PART_POOLS = ("scale", "attention")
PART_BIAS_EPS = 1e-6  # log(w + eps): a patch with w = 0 keeps a finite score


# ------------------------------------------------------------------------------------------------------ b1 / b2
class TransformerHead(nn.Module):
    """b1 / b2: one transformer block followed by a LayerNorm (copies of the backbone's last block and norm)."""

    dim: int
    num_heads: int
    mlp_ratio: float
    drop_path: float
    dtype: Dtype = jnp.float32
    remat: str = "none"  # vit.REMAT_MODES
    attention: str = "auto"  # vit.ATTENTION_IMPLEMENTATIONS
    qkv_bias: bool = True  # vit.Backbone.qkv_bias
    attn_scale: float | None = None  # vit.Backbone.attention_scale (None: head_dim ** -0.5)

    def setup(self) -> None:
        self.block = block_class(self.remat)(
            self.dim,
            self.num_heads,
            self.mlp_ratio,
            self.drop_path,
            self.dtype,
            self.attention,
            self.qkv_bias,
            self.attn_scale,
        )
        self.norm = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32)

    def __call__(self, x: jax.Array, *, train: bool, key_bias: jax.Array | None = None) -> jax.Array:
        """Every token's output ``[B, N, D]``."""
        return self.norm(self.block(x, not train, key_bias))

    def cls(
        self, x: jax.Array, *, train: bool, token_scale: jax.Array | None = None, key_bias: jax.Array | None = None
    ) -> jax.Array:
        """The cls token's output only, ``[P, B, D]`` for ``P`` scalings / key biases (``vit.Block.cls_forward``);
        ``[1, B, D]`` without either. This is all b1 and b2 contribute, at a fraction of the full pass's cost."""
        return self.norm(self.block.cls_forward(x, not train, token_scale, key_bias))


# ------------------------------------------------------------------------------------------------------ JPM
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
            raise ValueError(
                f"JPM shuffle: {n - 1} shifted tokens cannot be split into model.shuffle_groups="
                f"{groups} groups (nor {n} after the reference's one-token padding)"
            )
    x = x.reshape(b, groups, n // groups, d)
    return jnp.swapaxes(x, 1, 2).reshape(b, n, d)


def jpm_groups(
    features: jax.Array, *, re_arrange: bool, shift: int, groups: int, divide_length: int
) -> list[jax.Array]:
    """The four JPM sequences ``[cls, group k]`` (``[B, 1 + L // divide_length, D]`` each) from the backbone tokens."""
    patch_length = (features.shape[1] - 1) // divide_length
    token = features[:, 0:1]
    x = shuffle_unit(features, shift, groups) if re_arrange else features[:, 1:]
    if 4 * patch_length > x.shape[1]:
        raise ValueError(
            f"JPM: model.divide_length={divide_length} gives 4 groups of {patch_length} tokens, "
            f"more than the {x.shape[1]} available"
        )
    return [jnp.concatenate([token, x[:, k * patch_length : (k + 1) * patch_length]], axis=1) for k in range(4)]


# ------------------------------------------------------------------------------------------------------ HSPM
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


def part_attention(logits: jax.Array, norm: str, valid: jax.Array | None = None) -> jax.Array:
    """HSPM's part attention ``[B,gh,gw,6]``: softmax over the channels of the normalised part logits."""
    scores = logits if norm == "none" else part_minmax(logits, norm, valid)
    return jax.nn.softmax(scores, axis=-1)


def part_weights(attn: jax.Array, which: range | list[int]) -> jax.Array:
    """Each part's weight of every patch, ``[P, B, gh*gw]``: channel ``i`` of the attention, or for ``i = 0`` the
    foreground (the sum of channels 1..5, as the reference computes it)."""
    b = attn.shape[0]
    ws = [jnp.sum(attn[..., 1:], axis=-1) if i == 0 else attn[..., i] for i in which]
    return jnp.stack(ws).reshape(len(ws), b, -1)


def part_pooling(weights: jax.Array, pool: str) -> dict[str, jax.Array]:
    """How the part weights ``[P, B, L]`` enter b2 over ``[cls, patches]``: ``token_scale`` ('scale') or
    ``key_bias`` ('attention'), both ``[P, B, 1 + L]`` with the cls token untouched (see PART_POOLS)."""
    p, b, _ = weights.shape
    if pool == "scale":
        return {"token_scale": jnp.concatenate([jnp.ones((p, b, 1), weights.dtype), weights], axis=-1)}
    if pool == "attention":
        logw = jnp.log(weights + PART_BIAS_EPS)
        return {"key_bias": jnp.concatenate([jnp.zeros((p, b, 1), logw.dtype), logw], axis=-1)}
    raise ValueError(f"part_pooling: pool={pool!r}, expected one of {PART_POOLS}")


# ------------------------------------------------------------------------------------------------------ HSRM
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


# ------------------------------------------------------------------------------------------------------ classifiers
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

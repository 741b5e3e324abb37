"""Scaled dot-product attention for the backbone's blocks: which implementation runs, and the project's own.

* :func:`attention_implementation` picks one for ``config.model.attention``: cuDNN's fused (flash) kernel through
  ``jax.nn.dot_product_attention`` for 16-bit on an NVIDIA GPU, the project's :func:`softmax_attention` elsewhere.
* :func:`softmax_attention` computes ``softmax(scale q k^T) v`` (scale ``d ** -0.5`` unless given) with a custom
  backward pass that keeps no ``N x N`` tensor: its residuals are ``q``, ``k``, ``v`` and the softmax's
  log-normaliser (``[B, H, N]``); the backward pass recomputes the probabilities from them (one ``q k^T``), as flash
  attention does. Besides memory, on the CPU this backward pass (five batched matmuls in layouts XLA runs well, one
  fused elementwise pass for the softmax) is faster than autodiff of ``jax.nn.dot_product_attention``
  (docs/memory.md).

Scores, softmax and the normaliser are float32 whatever the compute dtype; matmul inputs are in the compute dtype.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Dtype = Any

# How the backbone's attention is computed (config.model.attention; see attention_implementation).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")
# Checkpoint name of the softmax's log-normaliser, which the memory mode 'dots' keeps (models.vit.REMAT_MODES).
ATTN_LSE = "attn_lse"


def attention_implementation(requested: str, platform: str, dtype: Dtype, head_dim: int, has_bias: bool) -> str:
    """The implementation :func:`attend` uses for ``model.attention``: ``'cudnn'`` or ``'xla'``.

    ``'auto'``: cuDNN's fused kernel where it applies: an NVIDIA GPU, bfloat16 or float16, a head width cuDNN takes
    (a multiple of 8, at most 128) and no bias; :func:`softmax_attention` in XLA everywhere else. ``'xla'``: always
    XLA. ``'cudnn'``: the fused kernel, refused where it does not apply.
    """
    if requested not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"model.attention={requested!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")
    fused_dtype = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    fused = platform == "gpu" and fused_dtype and head_dim % 8 == 0 and head_dim <= 128 and not has_bias
    if requested == "cudnn" and not fused:
        raise ValueError(
            f"model.attention='cudnn': cuDNN's fused attention needs an NVIDIA GPU, bfloat16 or float16 and a head "
            f"width that is a multiple of 8 up to 128; here: {platform}, {jnp.dtype(dtype).name}, head width "
            f"{head_dim}{', with a bias' if has_bias else ''} (use 'auto' or 'xla')"
        )
    return "cudnn" if fused and requested != "xla" else "xla"


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    dtype: Dtype,
    implementation: str = "auto",
    scale: float | None = None,
) -> jax.Array:
    """Scaled dot-product attention of ``q, k, v [B, N, H, hd]`` -> ``[B, N, H, hd]`` in ``dtype``, through the
    implementation :func:`attention_implementation` picks for the default backend.

    ``bias`` (float32, broadcastable to ``[B, H, Nq, Nk]``) is added to the scores; with a bias the XLA path is
    ``jax.nn.dot_product_attention`` (autodiff gives the bias its gradient). ``scale`` multiplies the scores (None:
    ``hd ** -0.5``; the old timm ViT-S uses ``embed_dim ** -0.5``, models.vit.BACKBONES).
    """
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    impl = attention_implementation(implementation, jax.default_backend(), dtype, q.shape[-1], bias is not None)
    if impl == "cudnn" or bias is not None:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation=impl)
    heads_first = lambda t: jnp.swapaxes(t, 1, 2)  # [B, H, N, hd]: the batched matmuls' layout
    return heads_first(softmax_attention(heads_first(q), heads_first(k), heads_first(v), scale))


def _scores(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    return jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale


def _forward(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> tuple[jax.Array, jax.Array]:
    s = _scores(q, k, scale)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    e = jnp.exp(s - m)
    total = jnp.sum(e, axis=-1, keepdims=True)
    out = jnp.einsum("bhqk,bhkd->bhqd", (e / total).astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype), (m + jnp.log(total))[..., 0]


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float | None = None) -> jax.Array:
    """``softmax(scale q k^T) v`` for ``q, k, v [B, H, N, hd]`` (heads first; ``scale`` None: ``hd ** -0.5``),
    keeping no ``N x N`` tensor for the backward pass (see the module docstring)."""
    return _softmax_attention(q, k, v, float(q.shape[-1] ** -0.5 if scale is None else scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    return _forward(q, k, v, scale)[0]


def _softmax_attention_fwd(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> tuple[jax.Array, tuple]:
    out, lse = _forward(q, k, v, scale)
    return out, (q, k, v, checkpoint_name(lse, ATTN_LSE))


def _softmax_attention_bwd(scale: float, res: tuple, d_out: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    q, k, v, lse = res
    p = jnp.exp(_scores(q, k, scale) - lse[..., None])  # the probabilities, recomputed
    dv = jnp.einsum("bhqk,bhqd->bhkd", p.astype(d_out.dtype), d_out, preferred_element_type=jnp.float32)
    dp = jnp.einsum("bhqd,bhkd->bhqk", d_out, v, preferred_element_type=jnp.float32)
    # softmax's backward: ds = p * (dp - sum_k p dp), then the scale of the scores
    ds = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True)) * scale).astype(q.dtype)
    dq = jnp.einsum("bhqk,bhkd->bhqd", ds, k, preferred_element_type=jnp.float32)
    dk = jnp.einsum("bhqk,bhqd->bhkd", ds, q, preferred_element_type=jnp.float32)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)

"""tmspr_jax.models.attention: the implementation choice, and softmax_attention's custom backward pass against
autodiff of the plain formula, a finite difference in float64, and what it keeps (no N x N tensor)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tmspr_jax.models.attention import attend, attention_implementation, softmax_attention
from tmspr_jax.tools.benchmark_memory import saved_residuals


@pytest.mark.parametrize(
    "requested, platform, dtype, head_dim, bias, want",
    [
        ("auto", "gpu", jnp.bfloat16, 64, False, "cudnn"),
        ("auto", "gpu", jnp.float16, 128, False, "cudnn"),
        ("auto", "gpu", jnp.float32, 64, False, "xla"),  # cuDNN's fused kernel is 16-bit only
        ("auto", "gpu", jnp.bfloat16, 12, False, "xla"),  # head width not a multiple of 8
        ("auto", "gpu", jnp.bfloat16, 256, False, "xla"),  # wider than 128
        ("auto", "gpu", jnp.bfloat16, 64, True, "xla"),  # a key bias (HSPM's part_pool='attention')
        ("auto", "cpu", jnp.bfloat16, 64, False, "xla"),
        ("xla", "gpu", jnp.bfloat16, 64, False, "xla"),
        ("cudnn", "gpu", jnp.bfloat16, 64, False, "cudnn"),
    ],
)
def test_attention_implementation_choice(requested, platform, dtype, head_dim, bias, want):
    assert attention_implementation(requested, platform, dtype, head_dim, bias) == want


def test_cudnn_attention_where_it_does_not_apply_is_one_clear_error():
    with pytest.raises(ValueError, match=r"model.attention='cudnn': .* here: cpu, float32, head width 64"):
        attention_implementation("cudnn", "cpu", jnp.float32, 64, False)
    with pytest.raises(ValueError, match=r"model.attention='flash': expected one of"):
        attention_implementation("flash", "gpu", jnp.bfloat16, 64, False)


def _qkv(shape=(3, 4, 21, 16), seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return [2.0 * jax.random.normal(k, shape) for k in keys]


def _plain(q, k, v):
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
    return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)


def _rel(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_softmax_attention_equals_autodiff_of_the_plain_formula():
    q, k, v, g = _qkv()
    out, vjp = jax.vjp(softmax_attention, q, k, v)
    want, want_vjp = jax.vjp(_plain, q, k, v)
    assert _rel(out, want) < 1e-6
    for got, ref in zip(vjp(g), want_vjp(g)):
        assert _rel(got, ref) < 1e-5


def test_softmax_attention_gradient_against_a_float64_finite_difference():
    q, k, v, g = (np.asarray(t, np.float64) for t in _qkv(shape=(1, 2, 7, 8), seed=1))

    def f64(q, k, v):
        s = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
        p = np.exp(s - s.max(-1, keepdims=True))
        return np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), v)

    grads = jax.vjp(softmax_attention, *(jnp.asarray(t, jnp.float32) for t in (q, k, v)))[1](
        jnp.asarray(g, jnp.float32)
    )
    eps = 1e-6
    for which in range(3):
        for idx in [(0, 0, 0, 0), (0, 1, 3, 5), (0, 1, 6, 7)]:
            plus, minus = [q.copy(), k.copy(), v.copy()], [q.copy(), k.copy(), v.copy()]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            fd = np.sum((f64(*plus) - f64(*minus)) * g) / (2 * eps)
            assert abs(float(grads[which][idx]) - fd) < 1e-4 * max(1.0, abs(fd)), (which, idx)


def test_softmax_attention_keeps_no_n_by_n_tensor():
    q, k, v = _qkv(shape=(2, 3, 50, 8))[:3]
    kept = saved_residuals(lambda q, k, v: jnp.sum(softmax_attention(q, k, v) ** 2), q, k, v)
    assert kept and all(50 * 50 > int(np.prod(r.shape[-2:])) for r in kept), kept
    plain = saved_residuals(lambda q, k, v: jnp.sum(_plain(q, k, v) ** 2), q, k, v)
    assert any(r.shape[-2:] == (50, 50) for r in plain)  # what autodiff of the formula keeps


@pytest.mark.parametrize("dtype, bound", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_attend_equals_softmax_attention_in_float64(dtype, bound):
    """What the blocks compute with 'auto' on this machine against softmax(q k^T / sqrt(d)) v in float64 ([B, N, H, hd]
    layout); bfloat16 within its rounding. With a key bias, jax.nn.dot_product_attention takes it."""
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 7, 3, 16)) for i in range(3))
    bias = jax.random.normal(jax.random.key(9), (2, 1, 1, 7))
    q64, k64, v64, b64 = (np.asarray(t, np.float64) for t in (q, k, v, bias))
    for b, b_np in ((None, 0.0), (bias, b64)):
        got = np.asarray(attend(q, k, v, b, dtype, "auto"), np.float64)
        s = np.einsum("bqhd,bkhd->bhqk", q64, k64) / 4.0 + b_np
        p = np.exp(s - s.max(-1, keepdims=True))
        want = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v64)
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < bound

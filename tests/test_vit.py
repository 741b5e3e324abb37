"""tmspr_jax.models.vit: grid, overlapping patch embedding, SIE, blocks, stochastic depth, init, JPM mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tmspr_jax.models.vit import (
    Block,
    VisionTransformer,
    drop_path,
    drop_path_rates,
    patch_grid,
    sincos_embedding,
)


def test_patch_grid_reference_geometry():
    assert patch_grid((256, 128), 16, (11, 11)) == (22, 11)
    assert patch_grid((256, 128), 16, (12, 12)) == (21, 10)
    assert patch_grid((384, 128), 16, 12) == (31, 10)
    assert patch_grid((64, 32), 16, (8, 4)) == (7, 5)  # y stride first, x stride second


@pytest.mark.parametrize(
    "img,stride,match",
    [
        ((10, 128), (11, 11), "smaller than the patch"),
        ((256, 128), (0, 11), "must be >= 1"),
        ((256, 128), (11, 11, 11), "stride"),
    ],
)
def test_patch_grid_rejects_bad_geometry(img, stride, match):
    with pytest.raises(ValueError, match=match):
        patch_grid(img, 16, stride)


def _vit(**kw):
    base = dict(
        img_size=(48, 40), patch_size=16, stride=(8, 12), embed_dim=32, depth=3, num_heads=4, num_cameras=3, sie_coe=3.0
    )
    base.update(kw)
    return VisionTransformer(**base)


def test_tokens_are_overlapping_patches_plus_pos_and_sie():
    # depth 1 in JPM mode runs zero blocks: the output is exactly the token embedding of docs/reference.md §2.2
    vit = _vit(depth=1, local_feature=True)
    gh, gw = vit.grid
    assert (gh, gw) == (5, 3)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 48, 40, 3)).astype(np.float32)
    camids = np.array([2, 0])
    v = vit.init(jax.random.key(0), images, camids)
    p = jax.tree_util.tree_map(np.asarray, v["params"])
    assert not any(k.startswith("blocks_") for k in p)
    out = np.asarray(vit.apply(v, images, camids))
    assert out.shape == (2, 1 + gh * gw, 32)
    k, bias = p["patch_embed"]["kernel"], p["patch_embed"]["bias"]  # HWIO
    for b in range(2):
        sie = 3.0 * p["sie_embed"][camids[b], 0]
        np.testing.assert_allclose(out[b, 0], p["cls_token"][0, 0] + p["pos_embed"][0, 0] + sie, rtol=1e-5, atol=1e-5)
        for y in range(gh):
            for x in range(gw):
                crop = images[b, 8 * y : 8 * y + 16, 12 * x : 12 * x + 16]  # overlapping windows, stride (8, 12)
                want = np.einsum("hwi,hwio->o", crop, k) + bias + p["pos_embed"][0, 1 + gw * y + x] + sie
                np.testing.assert_allclose(out[b, 1 + gw * y + x], want, rtol=1e-4, atol=1e-4)


def test_sie_table_and_index_rule():
    x = np.zeros((2, 48, 40, 3), np.float32)
    # only cameras: rows = cameras, index = camid
    assert _vit(num_cameras=3, num_views=0).init(jax.random.key(0), x, np.zeros(2, int))["params"][
        "sie_embed"
    ].shape == (3, 1, 32)
    # one camera and no views: no table, nothing added (the reference would crash)
    assert "sie_embed" not in _vit(num_cameras=1).init(jax.random.key(0), x, np.zeros(2, int))["params"]
    # cameras and views: rows = C*V, index cam*V + view
    vit = _vit(num_cameras=3, num_views=2, depth=1)
    v = vit.init(jax.random.key(0), x, np.zeros(2, int))
    assert v["params"]["sie_embed"].shape == (6, 1, 32)
    cams, views = np.array([2, 1]), np.array([1, 0])
    out = np.asarray(vit.apply(v, x, cams, views))
    base = np.asarray(vit.apply({"params": {**v["params"], "sie_embed": jnp.zeros((6, 1, 32))}}, x, cams, views))
    sie = np.asarray(v["params"]["sie_embed"])
    for b, row in enumerate(cams * 2 + views):
        np.testing.assert_allclose(out[b] - base[b], np.broadcast_to(3.0 * sie[row], out[b].shape), atol=1e-5)


def test_jpm_mode_omits_last_block_and_norm():
    x = np.zeros((1, 48, 40, 3), np.float32)
    p_jpm = _vit(local_feature=True).init(jax.random.key(0), x, np.zeros(1, int))["params"]
    p_full = _vit(local_feature=False).init(jax.random.key(0), x, np.zeros(1, int))["params"]
    assert sorted(k for k in p_jpm if k.startswith("blocks_")) == ["blocks_0", "blocks_1"]
    assert "norm" not in p_jpm
    assert sorted(k for k in p_full if k.startswith("blocks_")) == ["blocks_0", "blocks_1", "blocks_2"]
    assert "norm" in p_full


def test_init_is_untruncated_normal_and_zero_biases():
    vit = VisionTransformer(img_size=(128, 64), stride=(4, 4), embed_dim=64, depth=2, num_heads=4, num_cameras=8)
    p = vit.init(jax.random.key(0), np.zeros((1, 128, 64, 3), np.float32), np.zeros(1, int))["params"]
    pos = np.asarray(p["pos_embed"])
    assert abs(pos.std() - 0.02) < 0.001
    # truncated_normal(0.02) would never exceed 2 sigma = 0.04; N(0, 0.02^2) does for ~4.6% of 24k values
    assert np.abs(pos).max() > 0.05
    qkv = p["blocks_0"]["attn"]["qkv"]
    assert abs(float(np.std(qkv["kernel"])) - 0.02) < 0.002
    assert not np.any(np.asarray(qkv["bias"]))
    assert np.all(np.asarray(p["blocks_0"]["norm1"]["scale"]) == 1.0)


def test_sincos_embedding_codes_rows_and_columns():
    gh, gw, dim = 8, 4, 64
    pe = sincos_embedding((gh, gw), dim)
    assert pe.shape == (1 + gh * gw, dim) and pe.dtype == np.float32
    assert not np.any(pe[0])  # the cls token has no position
    q = dim // 4
    for r in range(gh):
        for c in range(gw):
            row = pe[1 + r * gw + c]
            for i in range(q):
                f = 1.0 / 10000 ** (i / q)
                want = [np.sin(c * f), np.cos(c * f), np.sin(r * f), np.cos(r * f)]
                np.testing.assert_allclose(row[[i, q + i, 2 * q + i, 3 * q + i]], want, atol=1e-6)
    # Nearby patches get similar codes: down a column the similarity falls over the first rows (farther on, the
    # fastest frequencies wrap round, so it is not monotone over the whole height).
    sims = pe[1:] @ pe[1 + 0 * gw + 1]
    down_the_column = [sims[r * gw + 1] for r in range(4)]
    assert all(a > b for a, b in zip(down_the_column, down_the_column[1:])), down_the_column
    assert np.argmax(sims) == 1
    with pytest.raises(ValueError, match="embed_dim=18 must be a multiple of 4"):
        sincos_embedding((gh, gw), 18)


def test_sincos_start_keeps_the_parameter_tree_and_trains():
    args = (np.zeros((1, 48, 40, 3), np.float32), np.zeros(1, int))
    normal = _vit().init(jax.random.key(0), *args)["params"]
    sincos = _vit(pos_embed_init="sincos").init(jax.random.key(0), *args)["params"]
    shapes = lambda t: jax.tree_util.tree_map(np.shape, t)
    assert shapes(sincos) == shapes(normal)  # checkpoints and converted weights fit either start
    grid = _vit().grid
    np.testing.assert_array_equal(np.asarray(sincos["pos_embed"])[0], sincos_embedding(grid, 32))
    assert "pos_embed" in jax.grad(lambda p: jnp.sum(_vit(pos_embed_init="sincos").apply({"params": p}, *args)))(
        sincos
    )  # a start, not a frozen table
    with pytest.raises(ValueError, match="pos_embed_init='learned'"):
        _vit(pos_embed_init="learned").init(jax.random.key(0), *args)


def test_drop_path_rates_linspace():
    r = drop_path_rates(0.1, 12)
    assert r[0] == 0.0 and abs(r[11] - 0.1) < 1e-12 and abs(r[1] - 0.1 / 11) < 1e-12
    vit = _vit(depth=4, drop_path=0.3)
    v = vit.init(jax.random.key(0), np.zeros((1, 48, 40, 3), np.float32), np.zeros(1, int))
    vit = vit.bind(v)
    assert [blk.drop_path for blk in vit.blocks] == pytest.approx([0.0, 0.1, 0.2])


def test_drop_path_is_per_sample_and_rescaled():
    import flax.linen as nn

    class Probe(nn.Module):
        @nn.compact
        def __call__(self, x):
            return drop_path(self, x, 0.25, deterministic=False)

    x = jnp.ones((2000, 3, 4))
    y = np.asarray(Probe().apply({}, x, rngs={"drop_path": jax.random.key(1)}))
    rows = y.reshape(2000, -1)
    assert np.all((rows == 0).all(1) | np.isclose(rows, 1 / 0.75).all(1))  # whole sample kept or dropped
    assert 0.70 < np.isclose(rows[:, 0], 1 / 0.75).mean() < 0.80
    assert np.array_equal(np.asarray(Probe().apply({}, x, rngs={"drop_path": jax.random.key(1)})), y)


def test_block_branches_draw_independent_masks():
    blk = Block(dim=16, num_heads=2, drop_path=0.5)
    x = jax.random.normal(jax.random.key(0), (400, 5, 16))
    v = blk.init(jax.random.key(1), x)
    y = np.asarray(blk.apply(v, x, False, rngs={"drop_path": jax.random.key(2)}))
    untouched = np.all(np.isclose(y, np.asarray(x), atol=0), axis=(1, 2)).mean()
    # both branches dropped: 0.25 with independent draws (0.5 if one mask served both)
    assert 0.17 < untouched < 0.33
    # eval is deterministic and needs no rng
    np.testing.assert_array_equal(blk.apply(v, x, True), blk.apply(v, x, True))


def test_drop_path_rng_changes_output_only_in_training():
    vit = _vit(depth=3, drop_path=0.5)
    x = jax.random.normal(jax.random.key(0), (4, 48, 40, 3))
    c = np.array([0, 1, 2, 0])
    v = vit.init(jax.random.key(1), x, c)
    a = vit.apply(v, x, c, train=True, rngs={"drop_path": jax.random.key(5)})
    b = vit.apply(v, x, c, train=True, rngs={"drop_path": jax.random.key(6)})
    a2 = vit.apply(v, x, c, train=True, rngs={"drop_path": jax.random.key(5)})
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(vit.apply(v, x, c, train=False), vit.apply(v, x, c))


def test_bfloat16_keeps_float32_params_and_stream():
    x = jax.random.normal(jax.random.key(0), (2, 48, 40, 3))
    c = np.array([0, 1])
    f32 = _vit()
    bf16 = _vit(dtype=jnp.bfloat16)
    v = f32.init(jax.random.key(1), x, c)
    assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(bf16.init(jax.random.key(1), x, c)))
    a, b = f32.apply(v, x, c), bf16.apply(v, x, c)
    assert b.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) < 2e-2
    assert not np.array_equal(a, b)  # the matmuls really ran in bfloat16


def test_wrong_image_size_is_a_clear_error():
    vit = _vit()
    v = vit.init(jax.random.key(0), np.zeros((1, 48, 40, 3), np.float32), np.zeros(1, int))
    with pytest.raises(ValueError, match=r"image size \(64, 40\) != configured img_size \(48, 40\)"):
        vit.apply(v, np.zeros((1, 64, 40, 3), np.float32), np.zeros(1, int))


@pytest.mark.parametrize("bias", [False, True])
def test_cls_forward_equals_one_full_block_pass_per_variant(bias):
    """b1/b2's cls-only path against the full block on each scaled sequence, on tokens of norm ~1e-3 so that
    LayerNorm's epsilon (1e-6) is not negligible: ``LN(w x) != LN(x)`` there, and a path that ignored ``token_scale``
    (b2's LayerNorm hides it on tokens of ordinary norm) fails by orders of magnitude more than the bound."""
    d, n, b, p = 32, 9, 3, 4
    blk = Block(dim=d, num_heads=4)
    x = 1e-3 * jax.random.normal(jax.random.key(0), (b, n, d))
    v = blk.init(jax.random.key(1), x)
    # random positive scales, the cls token's included (the model's HSPM passes 1 for it)
    w = jax.random.uniform(jax.random.key(2), (p, b, n), minval=0.2, maxval=2.0)
    kb = jax.random.normal(jax.random.key(3), (p, b, n)) if bias else None
    got = blk.apply(v, x, True, w, kb, method=Block.cls_forward)
    assert got.shape == (p, b, d)
    for i in range(p):
        want = blk.apply(v, w[i][..., None] * x, True, None if kb is None else kb[i])[:, 0]
        err = float(jnp.max(jnp.abs(got[i] - want)) / jnp.max(jnp.abs(want)))
        assert err < 1e-5, (i, err)
        unscaled = blk.apply(v, x, True, None if kb is None else kb[i])[:, 0]
        assert float(jnp.max(jnp.abs(unscaled - want)) / jnp.max(jnp.abs(want))) > 1e-2

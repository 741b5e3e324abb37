"""tmspr_jax.models.tmspr on a tiny model: parameter contract, stacked == plain, eval path, masking, part norm,
bfloat16, stochastic depth, visibility/recovery, remat."""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_utils import TINY_IMG, rel_err, tiny_config
from tmspr_jax.models import TMSPR, build_model, init_variables
from tmspr_jax.models.branches import (
    PART_BIAS_EPS,
    nearest_neighbour,
    part_minmax,
    recover_parts,
    shuffle_unit,
    visibility,
)
from tmspr_jax.models.outputs import reference_order

C, CAMS, D = 7, 3, 64


@functools.cache
def _model(**overrides) -> TMSPR:
    return build_model(tiny_config(**overrides), TINY_IMG, C, CAMS)


@functools.cache
def _variables():
    """Initialised variables with a larger part head (N(0, 0.05^2)), so that the part attention is far from flat, and
    10x larger b2 weights, so that b2's cls output depends visibly on the weighted patches."""
    v = init_variables(_model(), jax.random.key(0))
    params = dict(v["params"])
    params["part_head"] = {"kernel": 0.05 * jax.random.normal(jax.random.key(1), (D, 6))}
    params["b2"] = jax.tree_util.tree_map_with_path(
        lambda path, x: 10.0 * x if "kernel" in jax.tree_util.keystr(path) else x, params["b2"]
    )
    return {"params": params, "batch_stats": v["batch_stats"]}


def _views(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, 4) + TINY_IMG + (3,)).astype(np.float32)


CAMIDS = np.array([0, 1, 2, 1, 0], np.int32)


def _ref(out) -> types.SimpleNamespace:
    """The training outputs as the reference's lists: ``.logits`` (15) and ``.feats`` (18)."""
    logits, feats = reference_order(out)
    return types.SimpleNamespace(logits=logits, feats=feats)


def _train(model, variables, views, camids, rng=None):
    rngs = {} if rng is None else {"drop_path": rng}
    out, _ = jax.jit(lambda v, x, c: model.apply(v, x, c, train=True, mutable=["batch_stats"], rngs=rngs))(
        variables, views, camids
    )
    return _ref(out)


def _extract(model, variables, images, camids, valid=None):
    return np.asarray(
        jax.jit(lambda v, x, c, m: model.apply(v, x, c, m, method=TMSPR.extract))(variables, images, camids, valid)
    )


# ---------------------------------------------------------------------------------------------------- contract
def test_parameter_tree_matches_interface_contract():
    v = _variables()
    p, s = v["params"], v["batch_stats"]
    gh, gw = _model().grid
    bns = (
        ["bottleneck", "bottleneck_cp"]
        + [f"bottleneck_occ{i}" for i in (1, 2, 3)]
        + [f"bottleneck_{i}" for i in (1, 2, 3, 4)]
        + [f"bottleneck_bp{i}" for i in range(6)]
    )
    clss = (
        ["classifier", "classifier_0", "classifier_cp"]
        + [f"classifier_occ{i}" for i in (1, 2, 3)]
        + [f"classifier_{i}" for i in (1, 2, 3, 4, 5)]
    )
    assert set(p) == {"backbone", "b1", "b2", "part_head", *bns, *clss}
    assert set(s) == set(bns)
    bb = p["backbone"]
    assert set(bb) == {"patch_embed", "cls_token", "pos_embed", "sie_embed", "blocks_0"}  # depth 2: one block
    assert bb["patch_embed"]["kernel"].shape == (16, 16, 3, D)
    assert bb["pos_embed"].shape == (1, 1 + gh * gw, D) and bb["sie_embed"].shape == (CAMS, 1, D)
    blk = bb["blocks_0"]
    assert blk["attn"]["qkv"]["kernel"].shape == (D, 3 * D) and blk["mlp"]["fc1"]["kernel"].shape == (D, 4 * D)
    assert set(p["b1"]) == {"block", "norm"} and set(p["b2"]) == {"block", "norm"}
    assert p["part_head"] == {"kernel": p["part_head"]["kernel"]} and p["part_head"]["kernel"].shape == (D, 6)
    for n in bns:
        assert set(p[n]) == {"scale"} and set(s[n]) == {"mean", "var"}  # no BN bias: frozen at 0
    for n in clss:
        assert set(p[n]) == {"kernel"} and p[n]["kernel"].shape == (D, C)
    # init: part head N(0, 1e-4^2), classifiers N(0, 1e-3^2), BN scale 1
    assert np.std(init_variables(_model(), jax.random.key(0))["params"]["part_head"]["kernel"]) < 2e-4
    assert 5e-4 < np.std(p["classifier"]["kernel"]) < 2e-3
    assert np.all(np.asarray(p["bottleneck"]["scale"]) == 1.0)


def test_output_shapes_and_order():
    out = _train(_model(), _variables(), _views(3), CAMIDS[:3])
    gh, gw = _model().grid
    assert len(out.logits) == 15 and all(l.shape == (3, C) for l in out.logits)
    shapes = [f.shape for f in out.feats]
    assert shapes[1] == (3, gh, gw, 6) and shapes[2] == shapes[3] == (3, 5, D)
    assert all(s == (3, D) for i, s in enumerate(shapes) if i not in (1, 2, 3)) and len(shapes) == 18
    # channel_features are parts 1..5 (feats 13..17); logits 10..13 reuse classifiers 1..4 of JPM (4..7)
    np.testing.assert_array_equal(out.feats[2], np.stack(out.feats[13:18], axis=1))
    k = np.asarray(_variables()["params"]["classifier_1"]["kernel"])
    # logit 10 = classifier_1(bottleneck_bp1(p1)) in train mode: recompute from feature 13 with batch statistics
    x = np.asarray(out.feats[13], np.float64)
    bn = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) * np.asarray(_variables()["params"]["bottleneck_bp1"]["scale"])
    np.testing.assert_allclose(out.logits[10], bn @ k, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("part_norm", "image", "config.model.part_norm='image'"),
        ("part_pool", "mean", "config.model.part_pool='mean'"),
        ("neck_feat", "middle", "config.model.neck_feat='middle'"),
        ("classifier", "arc", "config.model.classifier='arc'"),
        ("pos_embed_init", "zeros", "config.model.pos_embed_init='zeros'"),
        ("dtype", "float16", "model.dtype='float16'"),
    ],
)
def test_build_model_rejects_bad_config(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_model(tiny_config(**{key: value}), TINY_IMG, C, CAMS)


def test_cosine_classifier_gives_cosines_with_the_linear_parameter_layout():
    linear, cosine = _model(), _model(classifier="cosine")
    assert (linear.classifier_kind, cosine.classifier_kind) == ("linear", "cosine")
    lv, cv = init_variables(linear, jax.random.key(0)), init_variables(cosine, jax.random.key(0))
    # One checkpoint layout for both: the same names and shapes everywhere.
    assert jax.tree.map(jnp.shape, lv) == jax.tree.map(jnp.shape, cv)
    out = _train(cosine, cv, _views(5), CAMIDS)
    k = np.asarray(cv["params"]["classifier"]["kernel"], np.float64)  # [D, C]
    x = np.asarray(out.feats[0], np.float64)
    bn = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) * np.asarray(cv["params"]["bottleneck"]["scale"])
    expected = (bn / np.linalg.norm(bn, axis=1, keepdims=True)) @ (k / np.linalg.norm(k, axis=0, keepdims=True))
    np.testing.assert_allclose(out.logits[0], expected, rtol=1e-4, atol=1e-5)
    for logit in out.logits:
        assert logit.shape == (5, C) and np.all(np.abs(np.asarray(logit)) <= 1.0 + 1e-6)
    # Evaluation features do not involve the classifiers.
    np.testing.assert_array_equal(
        _extract(cosine, lv, _views(5)[:, 0], CAMIDS), _extract(linear, lv, _views(5)[:, 0], CAMIDS)
    )


def test_build_model_reads_config_node():
    m = build_model(tiny_config(stride=(12, 8), sie_camera=False, divide_length=4, shift_num=3), (64, 32), 9, 5)
    assert (m.stride, m.num_cameras, m.divide_length, m.shift_num, m.num_classes) == ((12, 8), 0, 4, 3, 9)
    assert m.grid == (5, 3)


# ---------------------------------------------------------------------------------------------------- equivalences
def test_stacked_equals_plain_train_and_eval():
    v = _variables()
    views, cams = _views(4), CAMIDS[:4]
    a = _train(_model(stack_branches=True), v, views, cams)
    b = _train(_model(stack_branches=False), v, views, cams)
    for x, y in zip(a.logits + a.feats, b.logits + b.feats):
        assert rel_err(x, y) < 1e-5
    ea = _extract(_model(stack_branches=True), v, views[:, 0], cams)
    eb = _extract(_model(stack_branches=False), v, views[:, 0], cams)
    assert rel_err(ea, eb) < 1e-5


def test_extract_equals_eval_slice_of_full_forward():
    v = _variables()
    img = _views(4)[:, 0]
    views = np.repeat(img[:, None], 4, axis=1)  # the reference's test path: the same image as all four views
    m = _model()
    full = _ref(jax.jit(lambda v, x, c: m.apply(v, x, c, train=False))(v, views, CAMIDS[:4]))
    want = np.concatenate([full.feats[0], *full.feats[7:11], *full.feats[13:18]], axis=-1)
    got = _extract(m, v, img, CAMIDS[:4])
    assert got.shape == (4, 10 * D)
    assert rel_err(got, want) < 1e-6


def test_neck_feat_after_is_bn_global_and_quartered_jpm():
    v = _variables()
    img = _views(3)[:, 0]
    # non-trivial running statistics
    stats = jax.tree_util.tree_map(lambda a: a + 0.3, v["batch_stats"])
    v = {"params": v["params"], "batch_stats": stats}
    m = _model(neck_feat="after")
    got = _extract(m, v, img, CAMIDS[:3])
    full = _ref(m.apply(v, np.repeat(img[:, None], 4, axis=1), CAMIDS[:3], train=False))
    p, s = v["params"], v["batch_stats"]

    def bn(x, name):
        return (np.asarray(x) - s[name]["mean"]) / np.sqrt(s[name]["var"] + 1e-5) * p[name]["scale"]

    want = np.concatenate(
        [bn(full.feats[0], "bottleneck")] + [bn(full.feats[7 + k], f"bottleneck_{k + 1}") / 4 for k in range(4)],
        axis=-1,
    )
    assert got.shape == (3, 5 * D)
    assert rel_err(got, want) < 1e-5


def test_valid_mask_makes_padded_batch_equal_unpadded():
    v, m = _variables(), _model()
    img = _views(3)[:, 0]
    pad = np.concatenate([img, 50.0 * np.ones_like(img[:2])])  # padding rows with extreme content
    cams = CAMIDS[:5]
    ref = _extract(m, v, img, cams[:3])
    masked = _extract(m, v, pad, cams, np.array([True, True, True, False, False]))
    assert rel_err(masked[:3], ref) < 1e-6
    unmasked = _extract(m, v, pad, cams, None)
    # the padding rows do change the batch min-max when not masked
    assert rel_err(unmasked[:3, 5 * D :], ref[:, 5 * D :]) > 1e-4


@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_part_norm_batch_dependence(mode):
    v, m = _variables(), _model(part_norm=mode)
    a, b = _views(3, seed=1)[:, 0], _views(3, seed=2)[:, 0]
    b[0] = a[0]
    b[1:] *= 4.0  # batch-mates with larger logits move the batch min/max
    fa = _extract(m, v, a, CAMIDS[:3])
    fb = _extract(m, v, b, CAMIDS[:3])
    if mode == "sample":
        assert rel_err(fb[0], fa[0]) < 1e-6
    else:  # the reference: sample 0's part features depend on the rest of its batch
        assert rel_err(fb[0, 5 * D :], fa[0, 5 * D :]) > 1e-4
    np.testing.assert_allclose(fb[0, : 5 * D], fa[0, : 5 * D], rtol=1e-5, atol=1e-6)  # global + JPM never do


def test_bfloat16_eval_feature_close_to_float32():
    v = _variables()
    img = _views(4)[:, 0]
    f32 = _extract(_model(), v, img, CAMIDS[:4])
    bf16 = _extract(_model(dtype="bfloat16"), v, img, CAMIDS[:4])
    assert bf16.dtype == np.float32
    err = rel_err(bf16, f32)
    assert 0 < err < 2e-2, err


def test_drop_path_randomness_train_only():
    m = _model(drop_path=0.5)
    v = _variables()
    views = _views(3)
    a = _train(m, v, views, CAMIDS[:3], jax.random.key(1))
    b = _train(m, v, views, CAMIDS[:3], jax.random.key(2))
    a2 = _train(m, v, views, CAMIDS[:3], jax.random.key(1))
    assert rel_err(a.feats[0], b.feats[0]) > 1e-3
    np.testing.assert_array_equal(a.feats[0], a2.feats[0])
    e1 = _extract(m, v, views[:, 0], CAMIDS[:3])
    np.testing.assert_array_equal(e1, _extract(m, v, views[:, 0], CAMIDS[:3]))
    ev = _ref(m.apply(v, views, CAMIDS[:3], train=False))  # eval needs no drop_path rng and is deterministic
    np.testing.assert_array_equal(ev.feats[0], _ref(m.apply(v, views, CAMIDS[:3], train=False)).feats[0])
    bound = m.bind(v)
    assert bound.b1.drop_path == bound.b2.drop_path == 0.5  # b1/b2 copy the last block: rate = drop_path
    assert [blk.drop_path for blk in bound.backbone.blocks] == [0.0]


@pytest.mark.parametrize("mode", ["dots", "block"])
@pytest.mark.parametrize("part_pool", ["scale", "attention"])  # 'attention' passes a key bias through the remat
def test_memory_modes_same_outputs_and_gradients(mode, part_pool):
    """Every memory mode (model.remat) computes the loss and gradients of no rematerialisation, to float rounding.

    Plain initial weights: ``_variables()``'s 10x b2 amplifies the backbone's rounding into b2's gradients (up to 2e-3
    between two attention implementations that agree to 1e-6), which would hide what this test looks for."""
    v, views, cams = init_variables(_model(), jax.random.key(3)), _views(3), CAMIDS[:3]

    def loss(params, model):
        out, _ = model.apply(
            {"params": params, "batch_stats": v["batch_stats"]}, views, cams, train=True, mutable=["batch_stats"]
        )
        out = _ref(out)
        return sum(jnp.sum(l**2) for l in out.logits) + jnp.sum(out.feats[11] ** 2)

    def n_remat(model):
        return str(jax.make_jaxpr(lambda p: loss(p, model))(v["params"])).count("remat")

    assert n_remat(_model(remat="none", part_pool=part_pool)) == 0
    # one per block: backbone block 0, b1 once, b2 three times (stacked)
    assert n_remat(_model(remat=mode, part_pool=part_pool)) == 5
    la, ga = jax.jit(jax.value_and_grad(lambda p: loss(p, _model(remat="none", part_pool=part_pool))))(v["params"])
    lb, gb = jax.jit(jax.value_and_grad(lambda p: loss(p, _model(remat=mode, part_pool=part_pool))))(v["params"])
    assert rel_err(lb, la) < 1e-6
    leaves_a, leaves_b = jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)
    assert len(leaves_a) == len(leaves_b)
    # float re-association only: each leaf within 1e-3 of its own largest gradient, or within 1e-6 of the largest of
    # all where that is looser. Leaves whose gradients are 1e4 times smaller than the largest (the biases of b2's fc2
    # and projection here) carry the rounding of the large ones: the same 'none' program run op by op instead of
    # compiled differs from it there by 4e-3 of the leaf (3e-7 of the largest gradient).
    scale = max(float(jnp.max(jnp.abs(x))) for x in leaves_a)
    for x, y in zip(leaves_a, leaves_b):
        err = float(jnp.max(jnp.abs(y - x))) / max(float(jnp.max(jnp.abs(x))), 1e-3 * scale)
        assert err < 1e-3, err


def test_an_unknown_memory_mode_is_refused():
    with pytest.raises(ValueError, match=r"config.model.remat='all': expected one of \('none', 'dots', 'block'\)"):
        build_model(tiny_config(remat="all"), TINY_IMG, C, CAMS)


# ---------------------------------------------------------------------------------------------------- pieces
def test_shuffle_unit_hand_example():
    tokens = jnp.arange(6, dtype=jnp.float32).reshape(1, 6, 1)  # cls = 0, patches 1..5
    # shift 2: [p2..p5, p1]; 5 tokens with 2 groups: pad with the second-to-last (p5); then interleave the halves
    out = shuffle_unit(tokens, shift=2, groups=2)[0, :, 0]
    np.testing.assert_array_equal(out, [2, 5, 3, 1, 4, 5])
    even = jnp.arange(7, dtype=jnp.float32).reshape(1, 7, 1)  # 6 patches, shift 5 -> cyclic shift by 4
    np.testing.assert_array_equal(shuffle_unit(even, shift=5, groups=2)[0, :, 0], [5, 2, 6, 3, 1, 4])
    with pytest.raises(ValueError, match="shuffle_groups=4"):
        shuffle_unit(tokens, shift=2, groups=4)


def test_part_minmax_batch_and_sample():
    o = jnp.array([[[[0.0, 1.0]], [[2.0, 3.0]]], [[[4.0, -1.0]], [[6.0, 5.0]]]])  # [B=2, 2, 1, C=2]
    batch = part_minmax(o, "batch")
    np.testing.assert_allclose(batch[..., 0].ravel(), np.array([0, 2, 4, 6]) / (6 + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(batch[..., 1].ravel(), (np.array([1, 3, -1, 5]) + 1) / (6 + 1e-8), rtol=1e-6)
    sample = part_minmax(o, "sample")
    np.testing.assert_allclose(sample[..., 0].ravel(), [0, 1, 0, 1], rtol=1e-6)
    valid = part_minmax(o, "batch", jnp.array([True, False]))
    np.testing.assert_allclose(valid[0, ..., 0].ravel(), [0, 1], rtol=1e-6)


def test_visibility_from_raw_logit_argmax():
    logits = np.zeros((2, 2, 2, 6), np.float32)
    logits[..., 0] = 1.0  # background everywhere ...
    logits[0, 0, 0, 2] = 2.0  # ... except body at one cell of image 0
    logits[0, 1, 1, 5] = 3.0  # and feet at another
    logits[1, 0, 1, 1] = 5.0  # head in image 1
    vis = np.asarray(visibility(jnp.asarray(logits)))
    assert vis.shape == (2, 5, 1)
    np.testing.assert_array_equal(vis[..., 0], [[0, 1, 0, 0, 1], [1, 0, 0, 0, 0]])


def test_nearest_neighbour_and_recovery_hand_example():
    g = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    # 0 <-> 1 are closest; 2 is closest to 1 (cos 0.11); 3 has only non-positive cosines: ties at 0 between
    # sample 2 (cos 0) and its own zeroed diagonal -> first index, 2
    np.testing.assert_array_equal(nearest_neighbour(g), [1, 0, 1, 2])
    np.testing.assert_array_equal(nearest_neighbour(jnp.array([[1.0, 0.0], [-1.0, 0.0]])), [0, 1])  # picks itself
    q = jnp.arange(4 * 5 * 2, dtype=jnp.float32).reshape(4, 5, 2)
    vis = jnp.array([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]], jnp.float32)[..., None]
    nn_idx = nearest_neighbour(g)
    qc = np.asarray(recover_parts(q, vis, nn_idx))
    want = np.asarray(q).copy()
    want[0, 1] = q[1, 1]  # invisible part 2 of sample 0 borrowed from sample 1
    want[2] = q[1]  # nothing visible in sample 2: everything from sample 1
    want[3, 4] = q[2, 4]
    np.testing.assert_array_equal(qc, want)
    # the gather carries the gradient to the neighbour's parts; the selection itself has none
    grad = jax.grad(lambda q: jnp.sum(recover_parts(q, vis, nn_idx)))(q)
    assert float(grad[1, 1, 0]) == 3.0  # sample 1's part 2: itself + sample 0 + sample 2
    assert float(jnp.sum(jax.grad(lambda g: jnp.sum(nearest_neighbour(g).astype(jnp.float32)))(g))) == 0.0


def test_package_imports_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; import tmspr_jax.models, convert_weights.mapping; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_flip_test_feature_is_mirror_invariant_mean(neck_feat):
    from tmspr_jax import inference

    m, v = _model(neck_feat=neck_feat), _variables()
    img = _views(4, seed=5)[:, 0]
    mirrored = np.ascontiguousarray(img[:, :, ::-1])
    cams, valid = CAMIDS[:4], np.ones(4, bool)
    plain = inference.make_extract_fn(m)
    flip = inference.make_extract_fn(m, flip=True)
    a, b = np.asarray(plain(v, img, cams, valid)), np.asarray(plain(v, mirrored, cams, valid))
    assert rel_err(a, b) > 1e-2  # the model itself tells a person from its mirror image
    f = np.asarray(flip(v, img, cams, valid))
    np.testing.assert_allclose(f, (a + b) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(flip(v, mirrored, cams, valid)), f, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- part pooling
def _part_features(model, variables, tokens):
    """``(logits, [six part features], b2 cls on the plain tokens)`` for backbone tokens ``[B, 1+L, D]``."""

    def f(m, x):
        logits, parts = m.hspm(x, range(6), False, None)
        return logits, parts, m.b2.cls(x, train=False)[0]

    return model.apply(variables, tokens, method=f)


def _part_feature_grads(part_pool: str) -> dict:
    """Gradients of a function of the six part features (nothing else) with respect to all parameters."""
    v, m = _variables(), _model(part_pool=part_pool)

    def part_sum(params):
        _, ps, _ = _part_features(m, {"params": params, "batch_stats": v["batch_stats"]}, _tokens())
        return sum(jnp.sum(jnp.sin(p)) for p in ps)

    return jax.grad(part_sum)(v["params"])


def _tokens(b: int = 3, seed: int = 0) -> np.ndarray:
    # unit-scale tokens, as a trained backbone's (its residual stream is not small next to LayerNorm's epsilon)
    return np.random.default_rng(seed).standard_normal((b, 1 + 7 * 3, D)).astype(np.float32)


def test_scaled_part_tokens_are_undone_by_b2_layernorm():
    """The reference's part pooling multiplies the patch tokens by the part attention; b2 layer-normalises every token
    first, so each part feature is b2 on the plain tokens and the part head gets no gradient from the part features."""
    v, m = _variables(), _model(part_pool="scale")
    logits, parts, plain = _part_features(m, v, _tokens())
    attn = jax.nn.softmax(part_minmax(logits, "batch"), axis=-1)
    assert float(attn.max() / attn.min()) > 1.5  # the attention itself is not flat
    for p in parts:
        assert rel_err(p, plain) < 1e-4  # what is left comes from LayerNorm's epsilon (1e-6)
    g = _part_feature_grads("scale")
    assert float(jnp.abs(g["part_head"]["kernel"]).max()) < 1e-4 * float(jnp.abs(g["b2"]["norm"]["scale"]).max())


def test_attention_part_pool_pools_each_parts_patches():
    v, m = _variables(), _model(part_pool="attention")
    x = _tokens()
    logits, parts, plain = _part_features(m, v, x)
    assert all(rel_err(p, plain) > 1e-3 for p in parts)
    assert min(rel_err(parts[i], parts[j]) for i in range(1, 6) for j in range(i + 1, 6)) > 1e-3
    # b2's cls output for part i equals plain attention whose key weights are multiplied by the part's attention
    w = np.asarray(jax.nn.softmax(part_minmax(logits, "batch"), axis=-1)[..., 2]).reshape(3, -1)

    def b2_weighted(mdl, tokens, weights):
        bias = jnp.log(jnp.concatenate([jnp.ones((3, 1)), weights], axis=1))
        return mdl.b2.cls(tokens, train=False, key_bias=bias[None])[0]

    np.testing.assert_allclose(parts[2], m.apply(v, x, w + PART_BIAS_EPS, method=b2_weighted), rtol=1e-5, atol=1e-6)
    # a 0/1 attention pools the chosen patches only: the same as b2 on the cls token and those patches
    keep = np.zeros((3, 21), np.float32)
    keep[:, [0, 4, 5, 11, 20]] = 1.0
    masked = m.apply(v, x, keep, method=b2_weighted)
    subset = m.apply(
        v,
        np.concatenate([x[:, :1], x[:, 1:][:, [0, 4, 5, 11, 20]]], axis=1),
        method=lambda mdl, t: mdl.b2.cls(t, train=False)[0],
    )
    np.testing.assert_allclose(masked, subset, rtol=1e-4, atol=1e-5)


def test_attention_part_pool_trains_the_part_head_through_the_part_features():
    def head_grad(pool):
        return float(jnp.abs(_part_feature_grads(pool)["part_head"]["kernel"]).max())

    assert head_grad("attention") > 1e3 * head_grad("scale")


def test_part_norm_none_is_the_softmax_of_the_raw_logits():
    v = _variables()
    x = _tokens()
    m = _model(part_pool="attention", part_norm="none")
    logits, parts, _ = _part_features(m, v, x)
    w = np.asarray(jax.nn.softmax(logits, axis=-1)[..., 3]).reshape(3, -1)
    bias = np.log(np.concatenate([np.ones((3, 1)), w + PART_BIAS_EPS], axis=1))
    ref = m.apply(v, x, bias, method=lambda mdl, t, kb: mdl.b2.cls(t, train=False, key_bias=kb[None])[0])
    np.testing.assert_allclose(parts[3], ref, rtol=1e-5, atol=1e-6)
    # per image: a batch-mate does not change it
    other = x.copy()
    other[1:] *= 3.0
    _, parts_other, _ = _part_features(m, v, other)
    np.testing.assert_allclose(parts_other[3][0], parts[3][0], rtol=1e-5, atol=1e-6)


def test_attention_part_pool_trains_end_to_end_and_keeps_the_parameter_tree():
    m = _model(part_pool="attention", part_norm="none")
    v = init_variables(m, jax.random.key(0))
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(init_variables(_model(), jax.random.key(0)))
    out = _train(m, v, _views(4), CAMIDS[:4])
    assert all(np.isfinite(np.asarray(x)).all() for x in out.logits)
    feats = _extract(m, v, _views(4)[:, 0], CAMIDS[:4])
    assert feats.shape == (4, 10 * D) and np.isfinite(feats).all()

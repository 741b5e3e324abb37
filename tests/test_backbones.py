"""model.backbone: the reference's four backbones (tmspr_jax.models.vit.BACKBONES) against the PyTorch oracle, each
in its own shape rules at tiny sizes (qkv bias or not, attention scale head_dim ** -0.5 or embed_dim ** -0.5, its MLP
ratio), in every memory mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert_weights.mapping import reference_to_variables
from model_utils import TINY_IMG, parity_errors, randomize_reference_state, rel_err, tiny_config
from tmspr_jax.models import build_model, init_variables
from tmspr_jax.models.outputs import reference_order
from tmspr_jax.models.vit import BACKBONES, Block, backbone, backbone_settings
from tmspr_jax.oracles.tmspr import build_torch_model, load_numpy_state, state_dict_numpy

C, CAMS = 7, 3
# Each backbone's rules at a tiny size: vit_small keeps its MLP ratio 3, no qkv bias and the scale embed_dim ** -0.5;
# deit_small its 64-wide heads' ratio to the width (384 / 6) shrunk to width 48 with 6 heads of 8.
TINY = {
    "vit_base_patch16_224_TransReID": dict(embed_dim=64, num_heads=4),
    "deit_base_patch16_224_TransReID": dict(embed_dim=64, num_heads=4),
    "vit_small_patch16_224_TransReID": dict(embed_dim=64, num_heads=8, mlp_ratio=3.0),
    "deit_small_patch16_224_TransReID": dict(embed_dim=48, num_heads=6),
}


def _config(name: str, **overrides):
    return tiny_config(backbone=name, **{**TINY[name], **overrides})


def test_the_reference_factory_sizes_and_rules():
    sizes = {n: (b.embed_dim, b.depth, b.num_heads, b.mlp_ratio, b.qkv_bias) for n, b in BACKBONES.items()}
    assert sizes == {
        "vit_base_patch16_224_TransReID": (768, 12, 12, 4.0, True),
        "deit_base_patch16_224_TransReID": (768, 12, 12, 4.0, True),
        "vit_small_patch16_224_TransReID": (768, 8, 8, 3.0, False),
        "deit_small_patch16_224_TransReID": (384, 12, 6, 4.0, True),
    }
    assert backbone("vit_small_patch16_224_TransReID").attention_scale(768, 8) == 768**-0.5
    assert backbone("deit_small_patch16_224_TransReID").attention_scale(384, 6) == 64**-0.5
    assert (
        BACKBONES["deit_base_patch16_224_TransReID"].qkv_bias
        and not BACKBONES["deit_base_patch16_224_TransReID"].width_scale
    )
    with pytest.raises(ValueError, match=r"model.backbone='vit_large': expected one of \['vit_base_patch16"):
        backbone("vit_large")


# vit_base's rules are those of tests/test_oracles_tmspr.py and deit_base's are the same (the factory builds one
# network for both): the two others here.
@pytest.mark.parametrize("name", ["vit_small_patch16_224_TransReID", "deit_small_patch16_224_TransReID"])
def test_tiny_oracle_parity_per_backbone(name):
    """Eval feature at 1e-5, training features at 1e-5 and the BNNeck-amplified logits at 5e-4 (the bounds of
    tests/test_oracles_tmspr.py), with the backbone's shape rules on both sides (vit_small's scale differs from the
    default head_dim ** -0.5 here, so a port that ignored it would fail)."""
    cfg = _config(name)
    torch.manual_seed(1)
    oracle = build_torch_model(cfg, TINY_IMG, C, CAMS)
    state = randomize_reference_state(state_dict_numpy(oracle), 1)
    load_numpy_state(oracle, state)
    spec = backbone(name)
    assert ("base.blocks.0.attn.qkv.bias" in state) == spec.qkv_bias
    assert oracle.b1[0].attn.scale == spec.attention_scale(cfg.embed_dim, cfg.num_heads)
    assert (oracle.b1[0].attn.scale != (cfg.embed_dim // cfg.num_heads) ** -0.5) == spec.width_scale
    model = build_model(cfg, TINY_IMG, C, CAMS)
    variables, _ = reference_to_variables(state, model)
    eval_err, feature_errs, logit_errs, eval_shape = parity_errors(model, variables, oracle)
    assert eval_shape == (4, 10 * cfg.embed_dim)
    assert eval_err <= 1e-5 and max(feature_errs) <= 1e-5 and max(logit_errs) <= 5e-4
    errs = [eval_err, *logit_errs]
    print(f"{name}: eval feature {errs[0]:.1e}, logits {max(errs[1:]):.1e}")


def test_the_default_memory_mode_keeps_the_backbone_rules():
    """Loss and gradients of the default memory mode equal those of no rematerialisation (as tests/test_tmspr.py does
    for the default backbone), through b1/b2's cls-only path with no qkv bias and the width scale (vit_small's rules):
    the scale reaches softmax_attention's custom backward pass and the residuals 'dots' keeps."""
    name = "vit_small_patch16_224_TransReID"
    cfg = _config(name, drop_path=0.0)
    v = init_variables(build_model(cfg, TINY_IMG, C, CAMS), jax.random.key(3))
    views = np.random.default_rng(0).standard_normal((3, 4) + TINY_IMG + (3,)).astype(np.float32)
    cams = np.array([0, 1, 2], np.int32)

    def loss(params, remat):
        model = build_model(_config(name, drop_path=0.0, remat=remat), TINY_IMG, C, CAMS)
        out, _ = model.apply(
            {"params": params, "batch_stats": v["batch_stats"]}, views, cams, train=True, mutable=["batch_stats"]
        )
        logits, feats = reference_order(out)
        return sum(jnp.sum(l**2) for l in logits) + jnp.sum(feats[11] ** 2)

    la, ga = jax.jit(jax.value_and_grad(lambda p: loss(p, "none")))(v["params"])
    leaves_a = jax.tree_util.tree_leaves(ga)
    scale = max(float(jnp.max(jnp.abs(x))) for x in leaves_a)
    lb, gb = jax.jit(jax.value_and_grad(lambda p: loss(p, "dots")))(v["params"])
    assert rel_err(lb, la) < 1e-6
    for x, y in zip(leaves_a, jax.tree_util.tree_leaves(gb), strict=True):
        assert float(jnp.max(jnp.abs(y - x))) / max(float(jnp.max(jnp.abs(x))), 1e-3 * scale) < 1e-3


def test_cls_forward_without_qkv_bias_and_with_the_width_scale():
    d, n, b, p = 32, 9, 2, 2
    blk = Block(dim=d, num_heads=4, mlp_ratio=3.0, qkv_bias=False, scale=d**-0.5)
    x = jax.random.normal(jax.random.key(0), (b, n, d))
    v = blk.init(jax.random.key(1), x)
    assert "bias" not in v["params"]["attn"]["qkv"]
    w = jax.random.uniform(jax.random.key(2), (p, b, n), minval=0.2, maxval=2.0)
    got = blk.apply(v, x, True, w, None, method=Block.cls_forward)
    for i in range(p):
        want = blk.apply(v, w[i][..., None] * x, True)[:, 0]
        assert rel_err(got[i], want) < 1e-5


def test_another_backbones_sizes_are_refused_in_one_line():
    from tmspr_jax.config import get_base_config

    m = get_base_config().model
    m.backbone = "vit_small_patch16_224_TransReID"
    with pytest.raises(ValueError, match=r"also set --config.model.depth=8 --config.model.num_heads=8 "):
        build_model(m, (256, 128), C, CAMS)
    m.update(backbone_settings("vit_small_patch16_224_TransReID"))
    assert (m.embed_dim, m.depth, m.num_heads, m.mlp_ratio) == (768, 8, 8, 3.0)
    model = build_model(m, (256, 128), C, CAMS)
    assert (model.qkv_bias, model.attn_scale) == (False, 768**-0.5)
    m.update(backbone_settings("deit_small_patch16_224_TransReID"))
    assert build_model(m, (256, 128), C, CAMS).feature_dim == 10 * 384  # every head sized from the backbone

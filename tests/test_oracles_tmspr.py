"""The PyTorch oracle (tmspr_jax.oracles.tmspr) and the reference <-> Flax mapping (convert_weights.mapping)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from convert_weights.mapping import MappingError, reference_to_variables, variables_to_reference
from convert_weights.tmspr import REFERENCE_UNUSED_KEYS_PATTERNS, strip_unused
from model_utils import TINY_IMG, nchw, parity_errors, randomize_reference_state, rel_err, tiny_config
from tmspr_jax.models import build_model
from tmspr_jax.oracles.tmspr import build_torch_model, load_numpy_state, state_dict_numpy

C, CAMS = 7, 3


def _oracle(seed=0, **overrides):
    cfg = tiny_config(**overrides)
    torch.manual_seed(seed)
    oracle = build_torch_model(cfg, TINY_IMG, C, CAMS)
    state = randomize_reference_state(state_dict_numpy(oracle), seed)
    load_numpy_state(oracle, state)
    return cfg, oracle, state


def test_oracle_has_reference_key_names():
    _, oracle, state = _oracle()
    for key in (
        "base.cls_token",
        "base.pos_embed",
        "base.sie_embed",
        "base.patch_embed.proj.weight",
        "base.patch_embed.proj.bias",
        "base.blocks.0.norm1.weight",
        "base.blocks.0.attn.qkv.weight",
        "base.blocks.0.attn.qkv.bias",
        "base.blocks.0.attn.proj.weight",
        "base.blocks.0.mlp.fc1.weight",
        "base.blocks.0.mlp.fc2.bias",
        "base.blocks.0.norm2.bias",
        "b1.0.attn.qkv.weight",
        "b1.1.weight",
        "b2.0.mlp.fc1.bias",
        "b2.1.bias",
        "linear_layer.weight",
        "classifier.weight",
        "classifier_occ3.weight",
        "classifier_5.weight",
        "classifier_0.weight",
        "classifier_cp.weight",
        "bottleneck.weight",
        "bottleneck.bias",
        "bottleneck.running_mean",
        "bottleneck.running_var",
        "bottleneck.num_batches_tracked",
        "bottleneck_bp0.weight",
        "bottleneck_bp5.running_var",
        "bottleneck_occ1.weight",
        "bottleneck_4.weight",
        "bottleneck_cp.weight",
    ):
        assert key in state, key
    assert not any(k.startswith("base.blocks.1.") for k in state)  # depth 2: only block 0 in the base
    assert not any(k.startswith(("base.norm", "base.fc", "classifier2", "NL")) for k in state)
    assert state["base.pos_embed"].shape == (1, 1 + 7 * 3, 64)  # grid from the config, not 22x11
    assert not oracle.bottleneck.bias.requires_grad


def test_strip_unused_makes_a_reference_checkpoint_load_strictly():
    _, oracle, state = _oracle()
    d = 64
    unused = {
        "base.blocks.1.attn.qkv.weight": np.zeros((3 * d, d)),
        "base.norm.weight": np.ones(d),
        "base.fc.weight": np.zeros((1000, d)),
        "base.fc.bias": np.zeros(1000),
        "classifier2.weight": np.zeros((C, d)),
        "classifier_c.weight": np.zeros((C, d)),
        "classifier3_2.weight": np.zeros((C, d)),
        "classifier_bp.weight": np.zeros((C, d)),
        "classifier_bp4.weight": np.zeros((C, d)),
        "bottleneck2.running_mean": np.zeros(d),
        "bottleneck3_1.weight": np.ones(d),
        "bottleneck_bp.bias": np.zeros(d),
        "bottleneck_0.num_batches_tracked": np.zeros((), np.int64),
        "NL.0.g.weight": np.zeros((d, d)),
        "NL_1.theta.weight": np.zeros((d, d)),
    }
    full = {**state, **unused}
    kept, dropped = strip_unused(full, depth=2)
    assert sorted(dropped) == sorted(unused)
    assert set(kept) == set(state)  # used modules with similar names (bottleneck_bp0, classifier_1) are kept
    load_numpy_state(oracle, kept)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_numpy_state(oracle, full)
    # the ViT-B constant targets block 11
    assert any("blocks\\.11" in p for p in REFERENCE_UNUSED_KEYS_PATTERNS)
    assert strip_unused({"base.blocks.11.norm1.weight": 0, "base.blocks.1.norm1.weight": 0})[1] == [
        "base.blocks.11.norm1.weight"
    ]


def test_oracle_eval_feature_is_the_train_slice():
    _, oracle, _ = _oracle()
    x = np.random.default_rng(0).standard_normal((3,) + TINY_IMG + (3,)).astype(np.float32)
    cams = torch.tensor([0, 2, 1])
    with torch.no_grad():
        oracle.train()
        _, feats = oracle(nchw(x), nchw(x), nchw(x), nchw(x), cams)
        oracle.eval()
        ev = oracle.extract(nchw(x), cams)
    want = torch.cat([feats[0], *feats[7:11], *feats[13:18]], dim=1)
    assert ev.shape == (3, 640)
    torch.testing.assert_close(ev, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # 7x3 grid: 21 patches, odd -> the shuffle's one-token padding
        dict(stride=(12, 8), re_arrange=False, divide_length=4, sie_view=True, neck_feat="after"),
        dict(shift_num=3, shuffle_groups=3, divide_length=5, sie_camera=False),
    ],
)
def test_tiny_oracle_parity_variants(overrides):
    cfg, oracle, state = _oracle(seed=1, **overrides)
    model = build_model(cfg, TINY_IMG, C, CAMS)
    variables, _ = reference_to_variables(state, model)
    eval_err, feature_errs, logit_errs, _ = parity_errors(model, variables, oracle)
    assert eval_err <= 1e-5
    assert max(feature_errs) <= 1e-5  # measured <= 6e-7
    # The logits come after a BNNeck normalising over these 4 samples: in the third variant some channels of part
    # feature 4 barely vary across them, and dividing by that small spread turns the features' 5e-7 into 1.5e-4.
    assert max(logit_errs) <= 5e-4


# ---------------------------------------------------------------------------------------------------- mapping
@pytest.fixture(scope="module")
def mapped():
    cfg, _, state = _oracle(seed=2)
    model = build_model(cfg, TINY_IMG, C, CAMS)
    variables, report = reference_to_variables(state, model)
    return model, state, variables, report


def test_mapping_layouts(mapped):
    _, state, v, report = mapped
    p = v["params"]
    w = state["base.patch_embed.proj.weight"]  # OIHW
    assert p["backbone"]["patch_embed"]["kernel"][3, 5, 1, 7] == w[7, 1, 3, 5]  # -> HWIO
    assert np.array_equal(p["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"], state["base.blocks.0.attn.qkv.weight"].T)
    assert np.array_equal(p["b1"]["norm"]["scale"], state["b1.1.weight"])
    assert np.array_equal(p["b2"]["block"]["mlp"]["fc2"]["bias"], state["b2.0.mlp.fc2.bias"])
    assert np.array_equal(p["part_head"]["kernel"], state["linear_layer.weight"].T)
    assert np.array_equal(p["classifier_occ2"]["kernel"], state["classifier_occ2.weight"].T)
    assert np.array_equal(p["bottleneck_bp3"]["scale"], state["bottleneck_bp3.weight"])
    assert np.array_equal(v["batch_stats"]["bottleneck_cp"]["var"], state["bottleneck_cp.running_var"])
    assert np.array_equal(p["backbone"]["sie_embed"], state["base.sie_embed"])
    converted = {k for k, _ in report.converted}
    ignored = {k for k, _ in report.ignored}
    assert converted | ignored == set(state) and not converted & ignored
    assert "bottleneck.num_batches_tracked" in ignored and "bottleneck_1.bias" in ignored
    n_leaves = len(jax.tree_util.tree_leaves(v))
    assert len(converted) == n_leaves


def test_variables_to_reference_round_trip(mapped):
    _, state, v, _ = mapped
    back = variables_to_reference(v)
    assert set(back) == set(state)
    for k in state:
        assert back[k].shape == state[k].shape and np.array_equal(back[k], state[k]), k


def test_mapping_missing_key(mapped):
    model, state, _, _ = mapped
    bad = dict(state)
    del bad["b2.0.attn.proj.weight"]
    with pytest.raises(MappingError, match=r"missing keys \(1\): b2\.0\.attn\.proj\.weight \(for params/b2/block/attn"):
        reference_to_variables(bad, model)


def test_mapping_unexpected_key(mapped):
    model, state, _, _ = mapped
    with pytest.raises(MappingError, match=r"unexpected keys \(1\): classifier2\.weight.*strip_unused"):
        reference_to_variables({**state, "classifier2.weight": np.zeros((C, 64))}, model)


def test_mapping_wrong_shape(mapped):
    model, state, _, _ = mapped
    bad = {**state, "base.pos_embed": np.zeros((1, 243, 64), np.float32)}
    with pytest.raises(MappingError, match=r"base\.pos_embed: got \(1, 243, 64\), expected \(1, 22, 64\)"):
        reference_to_variables(bad, model)


def test_mapping_rejects_nonzero_bn_bias(mapped):
    model, state, _, _ = mapped
    bias = np.zeros(64, np.float32)
    bias[3] = 0.5
    with pytest.raises(MappingError, match=r"bottleneck_occ2\.bias is not all zeros"):
        reference_to_variables({**state, "bottleneck_occ2.bias": bias}, model)


def test_oracle_part_features_are_one_vector():
    """The reference's HSPM scales the patch tokens by each part's attention before b2, whose first LayerNorm undoes
    the scaling: its five test part features coincide (up to LayerNorm's epsilon) although the attention varies."""
    cfg, oracle, _ = _oracle()
    oracle.eval()
    images = nchw(np.random.default_rng(0).standard_normal((4,) + TINY_IMG + (3,)).astype(np.float32))
    cams = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        feats = oracle.extract(images, cams).numpy()
        logits = oracle.linear_layer(oracle.base(images, cams)[:, 1:])  # the part logits, as HSPM computes them
    lo, hi = logits.amin(dim=(0, 1), keepdim=True), logits.amax(dim=(0, 1), keepdim=True)
    attn = torch.softmax((logits - lo) / (hi - lo + 1e-8), dim=-1)
    assert (attn.max() / attn.min()).item() > 1.5  # the part attention is not flat
    d = cfg.embed_dim
    parts = [feats[:, (5 + k) * d : (6 + k) * d] for k in range(5)]
    for p in parts[1:]:
        assert rel_err(p, parts[0]) < 1e-4
    assert rel_err(feats[:, :d], parts[0]) > 0.1  # b1's global feature is another vector

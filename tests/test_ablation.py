"""The paper's additions as switches (model.multi_view, perception, recovery): each removes exactly its parameters
and loss terms, and with all three off the model is TransReID, feature for feature against its PyTorch forward."""

from __future__ import annotations

import functools
import importlib

import jax
import numpy as np
import pytest
import torch

from convert_weights.mapping import reference_to_variables
from model_utils import TINY_IMG, randomize_reference_state, rel_err, tiny_config
from tmspr_jax import losses
from tmspr_jax.config import get_base_config
from tmspr_jax.models import TMSPR, build_model, init_variables
from tmspr_jax.oracles.tmspr import TorchTransReID, build_torch_model, load_numpy_state, state_dict_numpy

C, CAMS, D = 7, 3, 64
BASELINE = dict(multi_view=False, perception=False, recovery=False, divide_length=4)
VIEW_HEADS = {
    "bottleneck_occ1",
    "bottleneck_occ2",
    "bottleneck_occ3",
    "classifier_occ1",
    "classifier_occ2",
    "classifier_occ3",
}
HSPM_HEADS = {"part_head", "classifier_0", "classifier_5"} | {f"bottleneck_bp{i}" for i in range(6)}
HSRM_HEADS = {"bottleneck_cp", "classifier_cp"}


@functools.cache
def _variables(**switches):
    model = build_model(tiny_config(**switches), TINY_IMG, C, CAMS)
    return model, init_variables(model, jax.random.key(0))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _batch(b=8, seed=0):
    rng = np.random.default_rng(seed)
    views = rng.standard_normal((b, 4) + TINY_IMG + (3,)).astype(np.float32)
    pids = np.repeat(np.arange(b // 4), 4).astype(np.int32)
    camids = rng.integers(0, CAMS, b).astype(np.int32)
    parsing = rng.random((b, 7, 3, 6)).astype(np.float32)
    return views, pids, camids, parsing


def _loss_terms(switches: dict):
    model, v = _variables(**switches)
    views, pids, camids, parsing = _batch()
    cfg = get_base_config().loss

    @jax.jit
    def run(v, views, camids, pids, parsing):
        out, _ = model.apply(v, views, camids, train=True, mutable=["batch_stats"])
        return out, losses.total_loss(out, pids, parsing, None, cfg)

    return run(v, views, camids, pids, parsing)


@pytest.mark.parametrize(
    "switches, removed",
    [
        (dict(multi_view=False), VIEW_HEADS),
        (dict(recovery=False), HSRM_HEADS),
        (dict(perception=False, recovery=False), HSPM_HEADS | HSRM_HEADS),
        (BASELINE, VIEW_HEADS | HSPM_HEADS | HSRM_HEADS),
    ],
)
def test_each_switch_removes_exactly_its_parameters(switches, removed):
    _, full = _variables()
    _, part = _variables(**switches)
    assert set(full["params"]) - set(part["params"]) == removed
    assert set(part["params"]) <= set(full["params"])
    kept = {k: full["params"][k] for k in part["params"]}
    assert _count(part["params"]) == _count(kept)  # the rest keeps its shapes
    assert _count(full["params"]) - _count(part["params"]) == _count({k: full["params"][k] for k in removed})


@pytest.mark.parametrize(
    "switches, keys, n_logits, n_feats",
    [
        ({}, {"seg", "rec"}, 15, 15),
        (dict(multi_view=False), {"seg", "rec"}, 12, 12),
        (dict(recovery=False), {"seg"}, 14, 14),
        (dict(perception=False, recovery=False), set(), 8, 8),
        (BASELINE, set(), 5, 5),
    ],
)
def test_each_switch_removes_exactly_its_loss_terms(switches, keys, n_logits, n_feats):
    out, (loss, terms) = _loss_terms(switches)
    assert {"seg", "rec"} & set(terms) == keys
    assert terms["ce_per_logit"].shape == (n_logits,) and terms["triplet_per_feat"].shape == (n_feats,)
    assert np.isfinite(float(loss))
    assert (out.parsing_logits is None) == ("seg" not in keys)
    assert (out.recovered_parts is None) == ("rec" not in keys)


def test_baseline_loss_is_transreids():
    out, (loss, terms) = _loss_terms(BASELINE)
    _, pids, _, _ = _batch()
    ce = lambda s: float(losses.cross_entropy(s, pids))
    tri = lambda f: float(losses.triplet_loss(f, pids))
    (g,), (lg,) = out.global_feats, out.global_logits
    want_id = 0.5 * ce(lg) + 0.5 * np.mean([ce(s) for s in out.jpm_logits])
    want_tri = 0.5 * tri(g) + 0.5 * np.mean([tri(f) for f in out.jpm_feats])
    np.testing.assert_allclose(float(terms["id"]), want_id, rtol=1e-5)
    np.testing.assert_allclose(float(terms["triplet"]), want_tri, rtol=1e-5)
    np.testing.assert_allclose(float(loss), want_id + want_tri, rtol=1e-5)


def test_multi_view_off_uses_the_based_view_only():
    model, v = _variables(multi_view=False)
    views, _, camids, _ = _batch()
    apply = jax.jit(lambda v, x, c: model.apply(v, x, c, train=False))
    a = apply(v, views, camids)
    b = apply(v, views[:, :1], camids)  # one view suffices
    noisy = views.copy()
    noisy[:, 1:] = 0.0
    c = apply(v, noisy, camids)
    assert len(a.global_feats) == 1
    for x, y, z in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), jax.tree_util.tree_leaves(c)):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_recovery_without_perception_is_refused():
    with pytest.raises(ValueError, match="recovery=True needs .*perception=True"):
        build_model(tiny_config(perception=False, recovery=True), TINY_IMG, C, CAMS)


def _transreid_pair(neck_feat: str):
    cfg = tiny_config(neck_feat=neck_feat, **BASELINE)
    torch.manual_seed(0)
    oracle = build_torch_model(cfg, TINY_IMG, C, CAMS)
    assert isinstance(oracle, TorchTransReID)
    state = randomize_reference_state(state_dict_numpy(oracle), seed=1)
    load_numpy_state(oracle, state)
    model = build_model(cfg, TINY_IMG, C, CAMS)
    variables, _ = reference_to_variables(state, model)  # strict: TransReID's keys are exactly the baseline's
    return model, variables, oracle


@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_baseline_eval_feature_is_transreids(neck_feat):
    model, variables, oracle = _transreid_pair(neck_feat)
    views, _, camids, _ = _batch(6, seed=2)
    images = views[:, 0]
    oracle.eval()
    with torch.no_grad():
        want = oracle.extract(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(camids).long()).numpy()
    got = np.asarray(jax.jit(lambda v, x, c: model.apply(v, x, c, method=TMSPR.extract))(variables, images, camids))
    assert got.shape == want.shape == (6, 5 * D) and model.feature_dim == 5 * D
    assert rel_err(got, want) <= 1e-5


def test_baseline_training_outputs_are_transreids():
    model, variables, oracle = _transreid_pair("before")
    views, _, camids, _ = _batch(8, seed=3)
    oracle.train()
    with torch.no_grad():
        scores, feats = oracle(torch.from_numpy(views[:, 0]).permute(0, 3, 1, 2), torch.from_numpy(camids).long())
    apply = jax.jit(lambda v, x, c: model.apply(v, x, c, train=True, mutable=["batch_stats"]))
    out, _ = apply(variables, views, camids)
    for a, r in zip(out.global_logits + out.jpm_logits, scores):
        assert rel_err(a, r.numpy()) <= 1e-4
    for a, r in zip(out.global_feats + out.jpm_feats, feats):
        assert rel_err(a, r.numpy()) <= 1e-4


@pytest.mark.parametrize(
    "name, switches",
    [
        ("occ_duke_transreid", BASELINE),
        ("occ_duke_ablation_views", dict(multi_view=True, perception=False, recovery=False)),
        ("occ_duke_ablation_hspm", dict(multi_view=True, perception=True, recovery=False)),
        ("occ_duke", dict(multi_view=True, perception=True, recovery=True)),
    ],
)
def test_ablation_configs_set_their_switches(name, switches):
    cfg = importlib.import_module(f"configs.{name}").get_config()
    for key, value in switches.items():
        assert cfg.model[key] == value, (name, key)
    full = importlib.import_module("configs.occ_duke").get_config()
    # everything else is T-MSPR's setting
    diff = {k for k in cfg.model if cfg.model[k] != full.model[k]}
    assert diff <= set(BASELINE), diff
    assert cfg.loss == full.loss and cfg.optim == full.optim and cfg.data == full.data


def test_a_transreid_checkpoint_converts_into_the_baseline(tmp_path):
    from convert_weights.convert import convert_file

    cfg = tiny_config(**BASELINE)
    _, _, oracle = _transreid_pair("before")
    path = tmp_path / "transformer_120.pth"
    torch.save({f"module.{k}": v for k, v in oracle.state_dict().items()}, path)  # as DataParallel saves it
    variables, meta, _ = convert_file(str(path), cfg, TINY_IMG, jax.random.key(0), mode="tmspr")
    assert meta["kind"] == "transreid" and meta["num_classes"] == C
    model = build_model(cfg, TINY_IMG, C, CAMS)
    views, _, camids, _ = _batch(4, seed=5)
    oracle.eval()
    with torch.no_grad():
        want = oracle.extract(torch.from_numpy(views[:, 0]).permute(0, 3, 1, 2), torch.from_numpy(camids).long())
    got = jax.jit(lambda v, x, c: model.apply(v, x, c, method=TMSPR.extract))(variables, views[:, 0], camids)
    assert rel_err(got, want.numpy()) <= 1e-5

"""tmspr_jax.optim: the reference's schedule values (docs/reference.md §10.2), one-to-one steps against torch.optim."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from tmspr_jax import optim
from tmspr_jax.config import get_base_config

EPOCHS = 170


def _cfg(**over):
    c = ml_collections.ConfigDict(get_base_config().optim.to_dict())
    for k, v in over.items():
        c[k] = v
    return c


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "backbone": {
            "cls_token": rng.normal(size=(1, 1, 4)).astype(np.float32),
            "blocks_0": {
                "attn": {
                    "qkv": {
                        "kernel": rng.normal(size=(4, 12)).astype(np.float32),
                        "bias": rng.normal(size=(12,)).astype(np.float32),
                    }
                },
                "norm1": {
                    "scale": rng.normal(size=(4,)).astype(np.float32),
                    "bias": rng.normal(size=(4,)).astype(np.float32),
                },
            },
        },
        "bottleneck": {"scale": rng.normal(size=(4,)).astype(np.float32)},
    }


def test_learning_rates_match_reference_values():
    cfg = _cfg()
    expected_w = {1: 1.664e-3, 2: 3.248e-3, 3: 4.832e-3, 4: 6.416e-3, 170: 1.6e-5}
    for e, v in expected_w.items():
        assert optim.learning_rates(e, cfg, EPOCHS)["weight"] == pytest.approx(v, rel=1e-9)
    # e = 5: first cosine epoch; the printed value 7.983e-3 (docs/reference.md §10.2), t not offset by the warmup.
    lr5 = optim.learning_rates(5, cfg, EPOCHS)["weight"]
    assert lr5 == pytest.approx(1.6e-5 + 0.5 * (0.008 - 1.6e-5) * (1 + math.cos(math.pi * 5 / 170)), rel=1e-12)
    assert round(lr5, 6) == 0.007983
    # Biases: warmup from the same absolute start, twice the peak, same absolute floor.
    for e in range(1, 5):
        assert optim.learning_rates(e, cfg, EPOCHS)["bias"] == pytest.approx(8e-5 + e * (0.016 - 8e-5) / 5, rel=1e-12)
    for e in (5, 50, 169):
        cos = 1 + math.cos(math.pi * e / 170)
        lrs = optim.learning_rates(e, cfg, EPOCHS)
        assert lrs["bias"] == pytest.approx(1.6e-5 + 0.5 * (0.016 - 1.6e-5) * cos, rel=1e-12)
        # About 2x in the cosine part away from its floor (the floor is absolute, not scaled).
        if e < 100:
            assert lrs["bias"] / lrs["weight"] == pytest.approx(2.0, rel=5e-3)
    assert optim.learning_rates(170, cfg, EPOCHS)["bias"] == pytest.approx(1.6e-5)
    assert optim.learning_rates(300, cfg, EPOCHS)["bias"] == pytest.approx(1.6e-5)
    with pytest.raises(ValueError, match="epoch"):
        optim.learning_rates(-1, cfg, EPOCHS)
    with pytest.raises(ValueError, match="total_epochs"):
        optim.learning_rates(3, cfg, 0)


def test_param_labels_by_path():
    labels = optim.param_labels(_params())
    assert labels["backbone"]["cls_token"] == "weight"
    assert labels["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"] == "weight"
    assert labels["backbone"]["blocks_0"]["attn"]["qkv"]["bias"] == "bias"
    assert labels["backbone"]["blocks_0"]["norm1"]["bias"] == "bias"
    assert labels["backbone"]["blocks_0"]["norm1"]["scale"] == "weight"
    assert labels["bottleneck"]["scale"] == "weight"


def _torch_groups(params, lrs, cfg):
    """One torch param group per leaf (like the reference), lr/wd by name."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    tensors, groups = {}, []
    for path, leaf in flat:
        name = optim._path_str(path)
        t = torch.nn.Parameter(torch.from_numpy(np.array(leaf, np.float32)))
        tensors[name] = t
        is_bias = "bias" in name
        groups.append(
            {
                "params": [t],
                "lr": lrs["bias" if is_bias else "weight"],
                "weight_decay": cfg.weight_decay_bias if is_bias else cfg.weight_decay,
                "is_bias": is_bias,
            }
        )
    return tensors, groups


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_two_steps_match_torch(name):
    cfg = _cfg(name=name, weight_decay=1e-4, weight_decay_bias=3e-4)
    params = jax.tree_util.tree_map(jnp.asarray, _params(1))
    rng = np.random.default_rng(2)
    grads = [
        jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(2)
    ]

    tx = optim.make_optimizer(cfg, params, EPOCHS)
    state = tx.init(params)
    state = optim.set_epoch(state, 4, cfg, EPOCHS)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    p = params
    for i, g in enumerate(grads):
        if i == 1:
            state = optim.set_epoch(state, 5, cfg, EPOCHS)  # lr changes between the steps; momentum buffer kept
        upd, state = step(g, state, p)
        p = optax.apply_updates(p, upd)

    tensors, groups = _torch_groups(params, optim.learning_rates(4, cfg, EPOCHS), cfg)
    if name == "sgd":
        topt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, dampening=0, nesterov=False)
    else:
        topt = torch.optim.AdamW(groups, lr=0.1)
    lrs5 = optim.learning_rates(5, cfg, EPOCHS)
    for i, g in enumerate(grads):
        if i == 1:
            for grp in topt.param_groups:
                grp["lr"] = lrs5["bias" if grp["is_bias"] else "weight"]
        for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
            tensors[optim._path_str(path)].grad = torch.from_numpy(np.asarray(leaf).copy())
        topt.step()
    for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]:
        ref = tensors[optim._path_str(path)].detach().numpy()
        np.testing.assert_allclose(np.asarray(leaf), ref, rtol=1e-6, atol=1e-6, err_msg=optim._path_str(path))
    # The update is not trivially zero.
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), p, params)
    assert min(jax.tree_util.tree_leaves(moved)) > 1e-5


def test_set_epoch_and_current_lrs_through_jit():
    cfg = _cfg()
    params = jax.tree_util.tree_map(jnp.asarray, _params())
    tx = optim.make_optimizer(cfg, params, EPOCHS)
    state = tx.init(params)
    assert optim.current_lrs(state) == pytest.approx(optim.learning_rates(1, cfg, EPOCHS), rel=1e-6)
    # The state comes back from a jitted step (device arrays); set_epoch must return a new state, float32 scalars.
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    _, state = jax.jit(tx.update)(zeros, state, params)
    new = optim.set_epoch(state, 60, cfg, EPOCHS)
    assert optim.current_lrs(new) == pytest.approx(optim.learning_rates(60, cfg, EPOCHS), rel=1e-6)
    assert optim.current_lrs(state) == pytest.approx(optim.learning_rates(1, cfg, EPOCHS), rel=1e-6)
    for g in optim.GROUPS:
        lr = new.inner_states[g].inner_state.hyperparams["learning_rate"]
        assert lr.dtype == jnp.float32 and lr.shape == ()
    # The same jitted step accepts the new state (same structure, no retrace-breaking type change).
    upd, _ = jax.jit(tx.update)(jax.tree_util.tree_map(jnp.ones_like, params), new, params)
    # SGD: buf1 = 0 + wd*p (zero grads), buf2 = 0.9*buf1 + (g + wd*p); the update uses the epoch-60 lr.
    k = params["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"]
    lr_w = optim.learning_rates(60, cfg, EPOCHS)["weight"]
    expected = -lr_w * (0.9 * 1e-4 * k + (1 + 1e-4 * k))
    np.testing.assert_allclose(upd["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"], expected, rtol=1e-6)


def test_frozen_predicate_and_bad_config():
    cfg = _cfg()
    params = jax.tree_util.tree_map(jnp.asarray, _params())
    tx = optim.make_optimizer(cfg, params, EPOCHS, frozen=lambda path: path.startswith("bottleneck"))
    state = tx.init(params)
    g = jax.tree_util.tree_map(jnp.ones_like, params)
    upd, _ = tx.update(g, state, params)
    assert np.all(np.asarray(upd["bottleneck"]["scale"]) == 0)
    assert np.all(np.asarray(upd["backbone"]["cls_token"]) != 0)
    with pytest.raises(ValueError, match="optim.name"):
        optim.make_optimizer(_cfg(name="lamb"), params, EPOCHS)
    # A node not built on tmspr_jax.config: the missing key is named, never given a default here.
    with pytest.raises(AttributeError, match="base_lr"):
        optim.learning_rates(1, ml_collections.ConfigDict({"name": "sgd"}), EPOCHS)

"""The training loss of the JAX model equals the reference's loss formulas applied to the PyTorch oracle's outputs.

Same weights, same batch: the oracle's 15 scores and 18 feats go through the reference formulas written independently
in PyTorch (tmspr_jax.oracles.losses); the JAX model's outputs go through ``tmspr_jax.losses.total_loss``.
"""

from __future__ import annotations

import jax
import numpy as np
import torch

from convert_weights.mapping import reference_to_variables
from model_utils import TINY_IMG, randomize_reference_state, rel_err, tiny_config
from tmspr_jax import losses
from tmspr_jax.config import get_base_config
from tmspr_jax.models import build_model
from tmspr_jax.oracles.losses import reference_total_loss
from tmspr_jax.oracles.tmspr import build_torch_model, load_numpy_state, state_dict_numpy

NUM_CLASSES, NUM_CAMERAS = 5, 3


def test_total_loss_on_model_outputs_matches_reference_formulas_on_oracle_outputs():
    cfg = tiny_config()
    torch.manual_seed(0)
    oracle = build_torch_model(cfg, TINY_IMG, NUM_CLASSES, NUM_CAMERAS)
    state = randomize_reference_state(state_dict_numpy(oracle), seed=1)
    load_numpy_state(oracle, state)
    model = build_model(cfg, TINY_IMG, NUM_CLASSES, NUM_CAMERAS)
    variables, _ = reference_to_variables(state, model)

    rng = np.random.default_rng(2)
    b = 8  # P=2 identities x K=4, as the PK sampler gives
    views = rng.standard_normal((b, 4) + TINY_IMG + (3,)).astype(np.float32)
    pids = np.repeat(np.array([1, 3]), 4).astype(np.int32)
    camids = rng.integers(0, NUM_CAMERAS, b).astype(np.int32)
    gh, gw = 7, 3
    parsing = rng.random((b, gh, gw, 6)).astype(np.float32)

    oracle.train()  # BNNecks on batch statistics, as in training
    scores, feats = oracle(
        *(torch.from_numpy(np.ascontiguousarray(views[:, v])).permute(0, 3, 1, 2) for v in range(4)),
        torch.from_numpy(camids).long(),
    )
    ref_loss, ref_terms = reference_total_loss(scores, feats, pids, parsing)

    out, _ = model.apply(variables, views, camids, train=True, mutable=["batch_stats"])
    loss, terms = losses.total_loss(out, pids, parsing, np.ones((b,), np.float32), get_base_config().loss)

    for name in ("id", "triplet", "seg", "rec"):
        assert rel_err(terms[name], ref_terms[name].detach().numpy()) <= 1e-5, name
    assert rel_err(loss, ref_loss.detach().numpy()) <= 1e-5
    # The loss is not trivially small: every term contributes.
    assert all(float(terms[n]) > 0 for n in ("id", "triplet", "seg", "rec"))


def test_loss_gradients_reach_every_parameter():
    cfg = tiny_config()
    model = build_model(cfg, TINY_IMG, NUM_CLASSES, NUM_CAMERAS)
    from tmspr_jax.models import init_variables

    variables = init_variables(model, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    b = 8
    views = rng.standard_normal((b, 4) + TINY_IMG + (3,)).astype(np.float32)
    pids = np.repeat(np.array([0, 2]), 4).astype(np.int32)
    camids = rng.integers(0, NUM_CAMERAS, b).astype(np.int32)
    parsing = rng.random((b, 7, 3, 6)).astype(np.float32)

    def loss_fn(params):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            views,
            camids,
            train=True,
            mutable=["batch_stats"],
        )
        return losses.total_loss(out, pids, parsing, np.ones((b,), np.float32), get_base_config().loss)[0]

    grads = jax.grad(loss_fn)(variables["params"])
    flat = jax.tree_util.tree_leaves_with_path(grads)
    dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]
    # The model holds only modules the reference trains, so every parameter gets a gradient.
    assert not dead, dead
    assert all(np.isfinite(np.asarray(g)).all() for _, g in flat)

"""Numerical parity of the Flax model with the PyTorch oracle, full ViT-B width.

Random weights in the reference key layout (the oracle's state dict with non-trivial LN/BN/SIE values and random
positive BN running statistics) are mapped with ``convert_weights.mapping`` into the Flax model. Relative error is
``max|jax - torch| / max|torch|`` per output tensor.
"""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
import torch

from convert_weights.mapping import reference_to_variables, variables_to_reference
from model_utils import model_config, randomize_reference_state, rel_err
from tmspr_jax.models import TMSPR, build_model
from tmspr_jax.models.outputs import reference_order
from tmspr_jax.oracles.tmspr import build_torch_model, load_numpy_state, state_dict_numpy

IMG = (256, 128)
NUM_CLASSES = 11
NUM_CAMERAS = 8


def _pair(cfg, seed: int, edit_state=None):
    """(flax model, variables, torch oracle, state) sharing one random reference state (optionally edited)."""
    torch.manual_seed(seed)
    oracle = build_torch_model(cfg, IMG, NUM_CLASSES, NUM_CAMERAS)
    state = randomize_reference_state(state_dict_numpy(oracle), seed=seed)
    load_numpy_state(oracle, state)
    if edit_state is not None:
        state = edit_state(oracle, state)
        load_numpy_state(oracle, state)
    model = build_model(cfg, IMG, NUM_CLASSES, NUM_CAMERAS)
    variables, _ = reference_to_variables(state, model)
    return model, variables, oracle, state


def _to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # NHWC -> NCHW


@pytest.mark.parametrize("stride,grid", [((11, 11), (22, 11)), ((12, 12), (21, 10))])
def test_eval_feature_matches_oracle_full_vit_b(stride, grid):
    cfg = model_config(stride=stride, part_norm="batch", neck_feat="before")
    model, variables, oracle, state = _pair(cfg, seed=1)
    assert model.grid == grid
    # the mapping is lossless in both directions
    back = variables_to_reference(variables)
    assert set(back) == set(state)
    assert all(np.array_equal(back[k], state[k]) for k in state if not k.endswith("num_batches_tracked"))

    rng = np.random.default_rng(2)
    images = rng.standard_normal((3,) + IMG + (3,)).astype(np.float32)
    camids = np.array([0, 5, 7], np.int32)
    oracle.eval()
    with torch.no_grad():
        ref = oracle.extract(_to_torch(images), torch.from_numpy(camids).long()).numpy()
    got = np.asarray(jax.jit(lambda v, x, c: model.apply(v, x, c, method=TMSPR.extract))(variables, images, camids))
    assert ref.shape == got.shape == (3, 7680)
    # every slice (g1, jpm1..4, p1..p5) must match, not only the largest one
    for s in range(10):
        sl = slice(768 * s, 768 * (s + 1))
        assert rel_err(got[:, sl], ref[:, sl]) <= 1e-5, (s, rel_err(got[:, sl], ref[:, sl]))
    print(f"eval parity stride {stride}: relative error {rel_err(got, ref):.2e}")


# Parts visible per image in the designed part logits (1 head .. 5 feet); the rest must be recovered.
VISIBLE_PLAN = [(1, 2, 3, 4, 5), (1, 2), (3, 4, 5), (2, 4)]


def _design_part_head(views, camids):
    """A part head whose raw-logit argmax leaves some parts invisible in some images, so that the recovery
    (nearest-neighbour gather) is really exercised: least-squares fit of ``linear_layer`` to target logits."""

    def edit(oracle, state):
        with torch.no_grad():
            tokens = oracle.base(_to_torch(views[:, 0]), torch.from_numpy(camids).long())[:, 1:].numpy()
        b, n, d = tokens.shape
        target = np.zeros((b, n, 6))
        for i, parts in enumerate(VISIBLE_PLAN):
            target[i, :, 0] = 1.0
            for cell in range(0, n, 2):  # every other cell shows one of the visible parts, round robin
                target[i, cell, parts[(cell // 2) % len(parts)]] = 3.0
        w, *_ = np.linalg.lstsq(tokens.reshape(-1, d).astype(np.float64), target.reshape(-1, 6), rcond=None)
        return {**state, "linear_layer.weight": w.T.astype(np.float32)}

    return edit


def _reference_lists(out) -> types.SimpleNamespace:
    logits, feats = reference_order(out)
    return types.SimpleNamespace(logits=logits, feats=feats)


def test_training_outputs_match_oracle_full_vit_b():
    # drop_path 0 so both sides are deterministic; torch in train mode so the BNNecks use batch statistics.
    cfg = model_config(drop_path=0.0)
    rng = np.random.default_rng(4)
    b = 4  # 2 ids x 2
    views = rng.standard_normal((b, 4) + IMG + (3,)).astype(np.float32)
    camids = np.array([0, 3, 3, 6], np.int32)
    model, variables, oracle, _ = _pair(cfg, seed=3, edit_state=_design_part_head(views, camids))
    oracle.train()  # BNNecks use batch statistics
    with torch.no_grad():
        scores, feats = oracle(*(_to_torch(views[:, v]) for v in range(4)), torch.from_numpy(camids).long())
    apply = jax.jit(lambda v, x, c: model.apply(v, x, c, train=True, mutable=["batch_stats"]))
    out, updates = apply(variables, views, camids)
    out = _reference_lists(out)
    assert len(out.logits) == 15 and len(out.feats) == 18
    recovered = (feats[2] != feats[3]).any(-1).numpy()  # [B, 5]: parts taken from the nearest neighbour
    assert 3 <= recovered.sum() <= 15, recovered  # the recovery path is exercised, not the identity
    errs: list[float] = []
    for i, (a, r) in enumerate(zip(out.logits, scores)):
        assert a.shape == tuple(r.shape) == (b, NUM_CLASSES)
        errs.append(rel_err(a, r.numpy()))
        assert errs[-1] <= 1e-4, ("logit", i, errs[-1])
    for i, (a, r) in enumerate(zip(out.feats, feats)):
        assert a.shape == tuple(r.shape), ("feat", i, a.shape, tuple(r.shape))
        errs.append(rel_err(a, r.numpy()))
        assert errs[-1] <= 1e-4, ("feat", i, errs[-1])
    # running statistics moved towards the batch statistics (PyTorch momentum 0.1 == Flax 0.9)
    new_mean = np.asarray(updates["batch_stats"]["bottleneck"]["mean"])
    torch_mean = oracle.bottleneck.running_mean.numpy()
    assert rel_err(new_mean, torch_mean) <= 1e-4
    print(
        f"training parity: max relative error over 15 logits + 18 feats = {max(errs):.2e}; "
        f"{int(recovered.sum())} of {recovered.size} part features recovered from a neighbour"
    )

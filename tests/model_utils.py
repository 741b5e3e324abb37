"""Helpers shared by the model tests: small configs, randomised reference weights, error measures."""

from __future__ import annotations

import re

import ml_collections
import numpy as np

import tiny
from tmspr_jax.config import get_base_config


def model_config(**overrides) -> ml_collections.ConfigDict:
    """``config.model`` with the reference defaults (ViT-B), overridden by ``overrides``."""
    return tiny.override(get_base_config().model, overrides)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """The tests' tiny model (``tiny.model_config``) at width 64 with 4 heads and stride 8 on 64x32 images (7x3 = 21
    patches, enough for every part to win somewhere), no stochastic depth: the parity tests' model."""
    return tiny.model_config(**{"embed_dim": 64, "num_heads": 4, "stride": (8, 8), "drop_path": 0.0, **overrides})


TINY_IMG = tiny.TINY_IMG


def rel_err(a, b) -> float:
    """max|a - b| / max|b| (the relative-error measure used by all parity checks)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def randomize_reference_state(state: dict, seed: int = 0) -> dict:
    """Non-trivial random values for every tensor of a reference state dict (NumPy arrays).

    Linear/conv weights and embeddings N(0, 0.02²); biases N(0, 0.02²); LayerNorm weights 1 + N(0, 0.1²), biases
    N(0, 0.1²); BN weights 1 + N(0, 0.1²), running means N(0, 0.1²), running vars U(0.5, 1.5); BN biases stay 0
    (frozen in the reference); the part head N(0, 0.05²) so that several parts win the argmax somewhere.
    """
    rng = np.random.default_rng(seed)
    out = {}
    bn_prefixes = {k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")}
    for k, v in state.items():
        v = np.asarray(v)
        prefix = k.rsplit(".", 1)[0]
        leaf = k.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[k] = v.copy()
        elif prefix in bn_prefixes:
            if leaf == "weight":
                out[k] = 1.0 + 0.1 * rng.standard_normal(v.shape)
            elif leaf == "bias":
                out[k] = np.zeros(v.shape)
            elif leaf == "running_mean":
                out[k] = 0.1 * rng.standard_normal(v.shape)
            else:
                out[k] = rng.uniform(0.5, 1.5, v.shape)
        elif ".norm" in k or re.search(r"b[12]\.1\.", k):
            out[k] = (1.0 if leaf == "weight" else 0.0) + 0.1 * rng.standard_normal(v.shape)
        elif k == "linear_layer.weight":
            out[k] = 0.05 * rng.standard_normal(v.shape)
        else:
            out[k] = 0.02 * rng.standard_normal(v.shape)
        out[k] = out[k].astype(v.dtype)
    return out


def nchw(x: np.ndarray):
    """NHWC NumPy images as the oracle's NCHW torch tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def parity_errors(model, variables, oracle) -> tuple[float, list[float], list[float], tuple[int, ...]]:
    """Relative errors of the port against the oracle (same weights) on one random batch of 4 samples x 4 views:
    the eval feature, each training feature and each training logit (the reference's order); and the eval
    feature's shape (the two sides' are checked equal)."""
    import torch

    from tmspr_jax.models import TMSPR
    from tmspr_jax.models.outputs import reference_order

    rng = np.random.default_rng(3)
    views = rng.standard_normal((4, 4) + TINY_IMG + (3,)).astype(np.float32)
    cams = np.array([0, 2, 2, 1], np.int32)
    with torch.no_grad():
        oracle.eval()
        ref_eval = oracle.extract(nchw(views[:, 0]), torch.from_numpy(cams).long()).numpy()
        oracle.train()
        scores, feats = oracle(*(nchw(views[:, v]) for v in range(4)), torch.from_numpy(cams).long())
    got_eval = model.apply(variables, views[:, 0], cams, method=TMSPR.extract)
    assert got_eval.shape == ref_eval.shape
    out, _ = model.apply(variables, views, cams, train=True, mutable=["batch_stats"])
    logits, outs = reference_order(out)
    features = [rel_err(a, r.numpy()) for a, r in zip(outs, feats, strict=True)]
    logit_errs = [rel_err(a, r.numpy()) for a, r in zip(logits, scores, strict=True)]
    return rel_err(got_eval, ref_eval), features, logit_errs, got_eval.shape

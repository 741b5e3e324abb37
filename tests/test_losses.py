"""tmspr_jax.losses against the reference formulas written independently in PyTorch (tmspr_jax/oracles/losses.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tmspr_jax import losses
from tmspr_jax.config import get_base_config
from tmspr_jax.oracles import losses as torch_losses

B, C, D, GH, GW = 8, 10, 16, 4, 3
PIDS = np.repeat(np.arange(4), 2).astype(np.int32)  # PK batch: P=4 identities x K=2


def _close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def _outputs(seed=0):
    rng = np.random.default_rng(seed)
    logits = tuple(rng.normal(size=(B, C)).astype(np.float32) * 2 for _ in range(15))
    feats = [rng.normal(size=(B, D)).astype(np.float32) for _ in range(18)]
    feats[1] = rng.normal(size=(B, GH, GW, 6)).astype(np.float32)
    feats[2] = rng.normal(size=(B, 5, D)).astype(np.float32)
    feats[3] = rng.normal(size=(B, 5, D)).astype(np.float32)
    targets = rng.uniform(size=(B, GH, GW, 6)).astype(np.float32)
    return logits, tuple(feats), targets


def test_cross_entropy_matches_torch():
    logits, _, _ = _outputs()
    _close(
        losses.cross_entropy(logits[0], PIDS),
        F.cross_entropy(torch.from_numpy(logits[0]), torch.from_numpy(PIDS).long()),
    )
    _close(
        losses.cross_entropy(logits[3], PIDS, label_smoothing=0.1),
        F.cross_entropy(torch.from_numpy(logits[3]), torch.from_numpy(PIDS).long(), label_smoothing=0.1),
    )
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.cross_entropy(logits[0], PIDS, label_smoothing=1.5)


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_triplet_matches_reference_boolean_indexing(margin):
    rng = np.random.default_rng(1)
    for _ in range(3):
        f = rng.normal(size=(B, D)).astype(np.float32)
        ref = torch_losses.reference_triplet(
            torch.from_numpy(f), torch.from_numpy(PIDS).long(), None if margin == 0 else margin
        )
        _close(losses.triplet_loss(f, PIDS, margin), ref)


def test_triplet_norm_feat_is_the_reference_loss_on_unit_features():
    rng = np.random.default_rng(5)
    f = rng.normal(size=(B, D)).astype(np.float32) * rng.uniform(0.1, 10, size=(B, 1)).astype(np.float32)
    unit = torch.from_numpy(f) / torch.from_numpy(f).norm(dim=1, keepdim=True)
    ref = torch_losses.reference_triplet(unit, torch.from_numpy(PIDS).long(), None)
    _close(losses.triplet_loss(f, PIDS, 0.0, norm_feat=True), ref)
    # Shrinking every feature towards one point lowers the plain loss to its log(2) floor, not the normalised one.
    small = 1e-4 * f
    assert float(losses.triplet_loss(small, PIDS)) < float(losses.triplet_loss(f, PIDS))
    _close(losses.triplet_loss(small, PIDS, norm_feat=True), losses.triplet_loss(f, PIDS, norm_feat=True))


def test_triplet_self_positive_and_clamps():
    # Integer-valued features keep the distance arithmetic exact (no cancellation noise on the diagonal).
    rng = np.random.default_rng(2)
    # Identical features within each identity: every positive distance is 0 -> clamp 1e-12 -> sqrt = 1e-6.
    f = np.repeat(rng.integers(-3, 4, size=(4, D)).astype(np.float32), 2, axis=0)
    ref = torch_losses.reference_triplet(torch.from_numpy(f), torch.from_numpy(PIDS).long())
    _close(losses.triplet_loss(f, PIDS), ref)
    d_an = np.min(np.linalg.norm(f[:, None] - f[None], axis=-1) + np.where(PIDS[:, None] == PIDS[None], np.inf, 0), 1)
    _close(losses.triplet_loss(f, PIDS), np.mean(np.log1p(np.exp(1e-6 - d_an))))
    # Singletons: the hardest positive is the sample itself (distance sqrt(1e-12) = 1e-6).
    singles = np.arange(B, dtype=np.int32)
    f2 = rng.integers(-3, 4, size=(B, D)).astype(np.float32)
    ref2 = torch_losses.reference_triplet(torch.from_numpy(f2), torch.from_numpy(singles).long())
    _close(losses.triplet_loss(f2, singles), ref2)


def test_triplet_soft_margin_is_stable_for_large_gaps():
    f = np.zeros((4, 2), np.float32)
    f[2:, 0] = 1e4  # d_an = 1e4, softplus(-1e4) must be 0, not NaN; gradients finite
    labels = np.array([0, 0, 1, 1], np.int32)
    val, grad = jax.value_and_grad(losses.triplet_loss)(jnp.asarray(f), labels)
    assert np.isfinite(val) and val >= 0 and val < 1e-30
    assert np.all(np.isfinite(grad))
    # One identity only: no negatives; each sample contributes 0 and gradients stay finite.
    val, grad = jax.value_and_grad(losses.triplet_loss)(jnp.ones((4, 3)), np.zeros(4, np.int32))
    assert float(val) == 0.0 and np.all(np.isfinite(grad))


def test_segmentation_loss_matches_reference_and_weights():
    _, feats, targets = _outputs(4)
    o = feats[1]
    ref = torch_losses.reference_seg(torch.from_numpy(o), torch.from_numpy(targets))
    _close(losses.segmentation_loss(o, targets), ref)
    _close(losses.segmentation_loss(o, targets, np.ones(B, np.float32)), ref)
    # Weight 0 samples are excluded from both the statistics and the mean: equals the reference on the subset.
    w = np.array([1, 0, 1, 1, 0, 1, 1, 1], np.float32)
    keep = w > 0
    ref_sub = torch_losses.reference_seg(torch.from_numpy(o[keep]), torch.from_numpy(targets[keep]))
    _close(losses.segmentation_loss(o, targets, w), ref_sub)
    # Changing an excluded sample changes nothing.
    o2 = o.copy()
    o2[1] *= 100.0
    _close(losses.segmentation_loss(o2, targets, w), ref_sub)


def test_soft_segmentation_loss_is_per_patch_cross_entropy_with_the_part_shares():
    _, feats, targets = _outputs(9)
    o = feats[1]
    targets[0, 0, 0] = 0.0  # a patch without any share: a uniform target

    def oracle(o, t):  # torch's cross-entropy with class-probability targets, per patch, then per sample
        t = t / t.sum(-1, keepdims=True).clip(min=1e-30)
        t[t.sum(-1) == 0] = 1.0 / t.shape[-1]
        ce = F.cross_entropy(torch.from_numpy(o.reshape(-1, 6)), torch.from_numpy(t.reshape(-1, 6)), reduction="none")
        return ce.reshape(o.shape[0], -1).mean(1).numpy()

    per_sample = oracle(o, targets.copy())
    _close(losses.soft_segmentation_loss(o, targets), per_sample.mean())
    w = np.array([1, 0, 2, 1, 0, 1, 1, 0.5], np.float32)
    _close(losses.soft_segmentation_loss(o, targets, w), (w * per_sample).sum() / w.sum())
    # Scale-free in the targets (shares or counts), and its minimum is the targets' own distribution.
    _close(losses.soft_segmentation_loss(o, 7.0 * targets, w), (w * per_sample).sum() / w.sum())
    t = targets / targets.sum(-1, keepdims=True).clip(1e-30)
    t[0, 0, 0] = 1.0 / 6
    assert float(losses.soft_segmentation_loss(np.log(t), targets)) < float(losses.soft_segmentation_loss(o, targets))
    # Unlike the reference's min-max MSE, a constant map is far from the minimum.
    const = np.zeros_like(o)
    assert (
        float(losses.soft_segmentation_loss(const, targets))
        > float(losses.soft_segmentation_loss(np.log(t), targets)) + 0.1
    )


@pytest.mark.parametrize("name", ["minmax_mse", "soft_ce"])
def test_segmentation_losses_with_zero_weights_and_bad_shapes(name):
    loss_fn = losses.SEG_LOSSES[name]
    _, feats, targets = _outputs(14)
    o = feats[1]
    # All weights zero: loss 0, gradient 0 and finite.
    val, grad = jax.value_and_grad(loss_fn)(jnp.asarray(o), targets, jnp.zeros(B))
    assert float(val) == 0.0
    assert np.all(np.asarray(grad) == 0.0)
    with pytest.raises(ValueError, match="equal shapes"):
        loss_fn(o, targets[:, :2])
    with pytest.raises(ValueError, match="weights"):
        loss_fn(o, targets, np.ones(3))


def test_total_loss_selects_the_segmentation_loss():
    logits, feats, targets = _outputs(10)
    cfg = ml_collections.ConfigDict(get_base_config().loss.to_dict())
    assert cfg.seg_loss == "minmax_mse"  # the reference's
    _, t = losses.total_loss((logits, feats), PIDS, targets, None, cfg)
    _close(t["seg"], losses.segmentation_loss(feats[1], targets))
    cfg.seg_loss = "soft_ce"
    _, t = losses.total_loss((logits, feats), PIDS, targets, None, cfg)
    _close(t["seg"], losses.soft_segmentation_loss(feats[1], targets))
    cfg.seg_loss = "dice"
    with pytest.raises(ValueError, match=r"config.loss.seg_loss='dice': expected one of \['minmax_mse', 'soft_ce'\]"):
        losses.total_loss((logits, feats), PIDS, targets, None, cfg)


def _torch_margin_logits(cos: torch.Tensor, labels: torch.Tensor, kind: str, s: float, m: float) -> torch.Tensor:
    """fast-reid's CosSoftmax / ArcSoftmax / CircleSoftmax heads written plainly, with index assignment."""
    rows = torch.arange(cos.shape[0])
    if kind == "cosface":
        out = cos.clone()
        out[rows, labels] = cos[rows, labels] - m
        return s * out
    if kind == "arcface":
        sine = torch.sqrt((1.0 - cos**2).clamp(0, 1))
        phi = cos * np.cos(m) - sine * np.sin(m)
        phi = torch.where(cos > np.cos(np.pi - m), phi, cos - np.sin(np.pi - m) * m)
        out = cos.clone()
        out[rows, labels] = phi[rows, labels]
        return s * out
    alpha_p = torch.clamp_min(-cos.detach() + 1 + m, 0.0)
    alpha_n = torch.clamp_min(cos.detach() + m, 0.0)
    s_p, s_n = s * alpha_p * (cos - (1 - m)), s * alpha_n * (cos - m)
    onehot = F.one_hot(labels, cos.shape[1]).float()
    return onehot * s_p + (1 - onehot) * s_n


@pytest.mark.parametrize("kind", ["cosface", "arcface", "circle"])
def test_margin_logits_match_fast_reid_heads_with_gradients(kind):
    rng = np.random.default_rng(3)
    cos = np.tanh(rng.normal(size=(B, C))).astype(np.float32)
    cos[0, PIDS[0]] = -0.99  # arcface: theta + m beyond pi takes the fallback branch
    cos[1, PIDS[1]] = 0.999
    s, m = 16.0, 0.3
    t_cos = torch.from_numpy(cos).requires_grad_(True)
    t_loss = F.cross_entropy(
        _torch_margin_logits(t_cos, torch.from_numpy(PIDS).long(), kind, s, m), torch.from_numpy(PIDS).long()
    )
    t_loss.backward()
    loss_fn = lambda c: losses.cross_entropy(losses.margin_logits(c, PIDS, kind, s, m), PIDS)
    val, grad = jax.value_and_grad(loss_fn)(jnp.asarray(cos))
    _close(val, t_loss.detach())
    _close(grad, t_cos.grad, rtol=1e-4, atol=1e-6)


def test_margin_logits_definitions():
    rng = np.random.default_rng(4)
    cos = np.tanh(rng.normal(size=(B, C))).astype(np.float32) * 0.9
    y = np.eye(C, dtype=bool)[PIDS]
    # CosFace with m = 0 is NormFace's scaled cosine; its margin lowers only the label's logit.
    _close(losses.margin_logits(cos, PIDS, "cosface", 10.0, 0.0), 10.0 * cos)
    out = np.asarray(losses.margin_logits(cos, PIDS, "cosface", 10.0, 0.2))
    _close(out[~y], 10.0 * cos[~y])
    _close(out[y], 10.0 * (cos[y] - 0.2))
    # ArcFace adds the margin to the angle where theta + m stays below pi.
    out = np.asarray(losses.margin_logits(cos, PIDS, "arcface", 10.0, 0.2))
    _close(out[y], 10.0 * np.cos(np.arccos(cos[y].astype(np.float64)) + 0.2), rtol=1e-5, atol=1e-5)
    _close(out[~y], 10.0 * cos[~y])
    # A margin makes the loss larger for the same scores, and the loss falls as the label's cosine grows.
    for kind in ("cosface", "arcface", "circle"):
        base = float(losses.cross_entropy(10.0 * cos, PIDS))
        assert float(losses.cross_entropy(losses.margin_logits(cos, PIDS, kind, 10.0, 0.3), PIDS)) > base
        closer = cos.copy()
        closer[y] = np.minimum(closer[y] + 0.2, 1.0)
        assert float(losses.cross_entropy(losses.margin_logits(closer, PIDS, kind, 10.0, 0.3), PIDS)) < float(
            losses.cross_entropy(losses.margin_logits(cos, PIDS, kind, 10.0, 0.3), PIDS)
        )
    # Gradients stay finite where a cosine is exactly +-1 (sqrt's slope is infinite there).
    edge = cos.copy()
    edge[0, :2], edge[1, PIDS[1]] = (1.0, -1.0), 1.0
    for kind in ("cosface", "arcface", "circle"):
        g = jax.grad(lambda c: losses.cross_entropy(losses.margin_logits(c, PIDS, kind, 10.0, 0.3), PIDS))(edge)  # noqa: B023  (called at once)
        assert np.all(np.isfinite(np.asarray(g))), kind
    with pytest.raises(ValueError, match="kind='softmax'"):
        losses.margin_logits(cos, PIDS, "softmax", 10.0, 0.3)
    with pytest.raises(ValueError, match=r"cosine must be \[B, C\]"):
        losses.margin_logits(cos[0], PIDS, "cosface", 10.0, 0.3)


def test_total_loss_applies_the_margin_id_loss():
    logits, feats, targets = _outputs(11)
    cos = tuple(np.tanh(x) for x in logits)
    cfg = ml_collections.ConfigDict(get_base_config().loss.to_dict())
    assert cfg.id_loss == "softmax"  # the reference's
    _, plain = losses.total_loss((cos, feats), PIDS, targets, None, cfg)
    cfg.id_loss, cfg.id_scale, cfg.id_margin = "arcface", 12.0, 0.25
    _, arc = losses.total_loss((cos, feats), PIDS, targets, None, cfg)
    expected = [losses.cross_entropy(losses.margin_logits(c, PIDS, "arcface", 12.0, 0.25), PIDS) for c in cos]
    _close(arc["ce_per_logit"], np.stack(expected))
    _close(arc["triplet"], plain["triplet"])
    _close(arc["acc"], plain["acc"])  # accuracy from the plain cosines, not the margin logits
    _close(arc["kl"], losses.kl_term(12.0 * cos[0], 12.0 * cos[4]))
    cfg.id_loss = "sphereface"
    with pytest.raises(ValueError, match=r"config.loss.id_loss='sphereface': expected one of"):
        losses.total_loss((cos, feats), PIDS, targets, None, cfg)


def test_reconstruction_and_kl_match_torch():
    logits, feats, _ = _outputs(5)
    _close(
        losses.reconstruction_loss(feats[2], feats[3]),
        F.l1_loss(torch.from_numpy(feats[2]), torch.from_numpy(feats[3])),
    )
    ref_kl = F.kl_div(
        F.log_softmax(torch.from_numpy(logits[4]), dim=1),
        F.softmax(torch.from_numpy(logits[0]), dim=1),
        reduction="batchmean",
    )
    _close(losses.kl_term(logits[0], logits[4]), ref_kl)


def test_total_loss_matches_reference_total():
    logits, feats, targets = _outputs(6)
    cfg = get_base_config().loss
    loss, terms = jax.jit(lambda l, f, p, t: losses.total_loss((l, f), p, t, None, cfg))(logits, feats, PIDS, targets)
    ref, ref_terms = torch_losses.reference_total_loss(logits, feats, PIDS, targets)
    _close(loss, ref)
    _close(terms["total"], ref)
    for k in ("id", "triplet", "seg", "rec"):
        _close(terms[k], ref_terms[k])
    assert terms["ce_per_logit"].shape == (15,)
    assert terms["triplet_per_feat"].shape == (len(losses.TRIPLET_FEATURE_INDICES),)
    _close(terms["ce_per_logit"][8], F.cross_entropy(torch.from_numpy(logits[8]), torch.from_numpy(PIDS).long()))
    _close(
        terms["triplet_per_feat"][losses.TRIPLET_FEATURE_INDICES.index(11)],
        torch_losses.reference_triplet(torch.from_numpy(feats[11]), torch.from_numpy(PIDS).long()),
    )
    acc = np.mean(np.argmax(logits[0], axis=1) == PIDS)
    _close(terms["acc"], acc)
    # The KL term is only logged by default; with kl_weight it is added.
    cfg2 = ml_collections.ConfigDict(cfg.to_dict())
    cfg2.kl_weight = 0.5
    loss2, _ = losses.total_loss((logits, feats), PIDS, targets, None, cfg2)
    _close(loss2, float(ref) + 0.5 * float(terms["kl"]))


def test_total_loss_weights_are_applied():
    logits, feats, targets = _outputs(7)
    cfg = ml_collections.ConfigDict(get_base_config().loss.to_dict())
    _, t = losses.total_loss((logits, feats), PIDS, targets, None, cfg)
    cfg.id_weight, cfg.triplet_weight, cfg.seg_weight, cfg.rec_weight = 2.0, 0.5, 1.0, 3.0
    loss, _ = losses.total_loss((logits, feats), PIDS, targets, None, cfg)
    _close(loss, 2 * t["id"] + 0.5 * t["triplet"] + 1.0 * t["seg"] + 3.0 * t["rec"])


def test_total_loss_gradients_finite_and_bf16_in_f32():
    logits, feats, targets = _outputs(8)
    cfg = get_base_config().loss

    def f(lg, ft):
        return losses.total_loss((lg, ft), PIDS, targets, jnp.ones(B), cfg)[0]

    val, (g_logits, g_feats) = jax.value_and_grad(f, argnums=(0, 1))(logits, feats)
    assert np.isfinite(val)
    for g in jax.tree_util.tree_leaves((g_logits, g_feats)):
        assert np.all(np.isfinite(np.asarray(g)))
    # Every input receives gradient from the loss (no term silently dropped).
    for k, g in enumerate(g_feats):
        assert np.any(np.asarray(g) != 0), f"feats[{k}] gets no gradient"
    for k, g in enumerate(g_logits):
        assert np.any(np.asarray(g) != 0), f"logits[{k}] gets no gradient"

    bf_logits = tuple(jnp.asarray(x, jnp.bfloat16) for x in logits)
    bf_feats = tuple(jnp.asarray(x, jnp.bfloat16) for x in feats)
    loss_bf, terms_bf = losses.total_loss((bf_logits, bf_feats), PIDS, jnp.asarray(targets, jnp.bfloat16), None, cfg)
    assert loss_bf.dtype == jnp.float32 and terms_bf["triplet"].dtype == jnp.float32
    # Same as the f32 computation on the bf16-rounded values: the arithmetic itself ran in f32.
    up = lambda t: tuple(np.asarray(jnp.asarray(x, jnp.float32)) for x in t)
    loss_up, _ = losses.total_loss(
        (up(bf_logits), up(bf_feats)),
        PIDS,
        np.asarray(jnp.asarray(targets, jnp.bfloat16).astype(jnp.float32)),
        None,
        cfg,
    )
    _close(loss_bf, loss_up)


def test_total_loss_bad_input_errors():
    logits, feats, targets = _outputs(9)
    cfg = get_base_config().loss
    with pytest.raises(ValueError, match="15 logits"):
        losses.total_loss((logits[:14], feats), PIDS, targets, None, cfg)
    with pytest.raises(ValueError, match="18 feats"):
        losses.total_loss((logits, feats[:17]), PIDS, targets, None, cfg)
    bad = ml_collections.ConfigDict({"id_weight": 1.0})  # not built on tmspr_jax.config: the missing key is named
    with pytest.raises(AttributeError, match="label_smoothing"):
        losses.total_loss((logits, feats), PIDS, targets, None, bad)

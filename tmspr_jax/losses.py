"""T-MSPR training losses (docs/reference.md §9).

Every function computes in float32 whatever the input dtype (the reference runs its losses in fp32 under autocast).
:func:`total_loss` reads the model's :class:`~tmspr_jax.models.outputs.TrainOutputs` by name (or the reference's
``(logits, feats)`` lists, named by :func:`~tmspr_jax.models.outputs.from_reference_order`).

Total loss (docs/reference.md §9.6), with the reference's weights, in the reference's indices (§8)::

    L = id_w * L_ID + tri_w * L_TRI + seg_w * L_seg + rec_w * L_rec (+ kl_w * KL; kl_w = 0 in the reference)
    L_ID  = 0.5 * mean(CE_4..7) + 0.5 * 0.6 * sum(CE_8..14) + 0.5 * mean(CE_0..3)
    L_TRI = 0.5 * mean(T_7..10) + 0.5 * 0.6 * sum(T_11..17) + 0.5 * T_0 + T_4 + T_5 + T_6
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tmspr_jax.models.outputs import NUM_REFERENCE_FEATS, TrainOutputs, from_reference_order
from tmspr_jax.utils import l2_normalise

# The reference's feature indices that get a triplet term (docs/reference.md §8): all but the part logits O (1),
# Q (2) and Qc (3), which are not [B, D] matrices.
TRIPLET_FEATURE_INDICES = (0,) + tuple(range(4, NUM_REFERENCE_FEATS))
_SEG_EPS = 1e-8
_DIST_CLAMP = 1e-12
_HARD_CLAMP = 1e-8
_ARC_SIN2_FLOOR = 1e-12


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of ``logits [B, C]`` against integer ``labels [B]``.

    With ``label_smoothing = e > 0`` the target is ``(1 - e) * onehot + e / C`` (the reference's
    CrossEntropyLabelSmooth).
    """
    logits = _f32(logits)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be [B, C], got shape {logits.shape}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing > 0.0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


ID_LOSSES = ("softmax", "cosface", "arcface", "circle")


def margin_logits(cosine: jax.Array, labels: jax.Array, kind: str, scale: float, margin: float) -> jax.Array:
    """Logits of a margin softmax from cosine similarities ``[B, C]`` (fast-reid's CosSoftmax, ArcSoftmax and
    CircleSoftmax; not in the reference). ``s`` = ``scale``, ``m`` = ``margin``, ``y`` = one-hot labels:

    * ``cosface`` (CosFace / AM-softmax): ``s * (cos - m y)``; with ``m = 0`` this is NormFace's scaled cosine.
    * ``arcface``: ``s * cos(theta + m)`` for the label, ``s * cos`` elsewhere; where ``theta + m`` would pass pi the
      label's logit is ``cos - m sin(m)`` instead, which stays monotone in theta (InsightFace's rule).
    * ``circle`` (circle loss in softmax form): ``s * a_p (cos - (1 - m))`` for the label and ``s * a_n (cos - m)``
      elsewhere, with the constant weights ``a_p = relu(1 + m - cos)`` and ``a_n = relu(cos + m)``.
    """
    if kind not in ID_LOSSES or kind == "softmax":
        raise ValueError(f"margin_logits: kind={kind!r}, expected one of {ID_LOSSES[1:]}")
    cos = _f32(cosine)
    if cos.ndim != 2:
        raise ValueError(f"margin_logits: cosine must be [B, C], got shape {cos.shape}")
    y = jax.nn.one_hot(labels, cos.shape[-1], dtype=jnp.float32)
    if kind == "cosface":
        return scale * (cos - margin * y)
    if kind == "arcface":
        # The floor keeps sqrt's gradient finite at |cos| = 1 (jnp.where would turn its inf into NaN).
        sin = jnp.sqrt(jnp.clip(1.0 - cos * cos, _ARC_SIN2_FLOOR, 1.0))
        shifted = cos * math.cos(margin) - sin * math.sin(margin)
        shifted = jnp.where(cos > math.cos(math.pi - margin), shifted, cos - margin * math.sin(margin))
        return scale * jnp.where(y > 0, shifted, cos)
    alpha_p = jax.lax.stop_gradient(jax.nn.relu(1.0 + margin - cos))
    alpha_n = jax.lax.stop_gradient(jax.nn.relu(cos + margin))
    return scale * jnp.where(y > 0, alpha_p * (cos - (1.0 - margin)), alpha_n * (cos - margin))


def triplet_loss(feats: jax.Array, labels: jax.Array, margin: float = 0.0, norm_feat: bool = False) -> jax.Array:
    """Batch-hard triplet loss on ``feats [B, D]`` (reference TripletLoss + T-MSPR's clamp, docs/reference.md §9.3).

    Distances are ``sqrt(clamp(|fi|^2 + |fj|^2 - 2 fi.fj, 1e-12))``; the hardest positive includes the sample
    itself; both hard distances are clamped to at least 1e-8. ``margin == 0`` gives the soft margin
    ``mean(softplus(d_ap - d_an))``, otherwise ``mean(relu(d_ap - d_an + margin))``. Mining uses masked max/min, so
    identities need not have equal counts; a sample with no negative in the batch (the reference would crash) gets
    ``d_an = +inf`` and contributes 0 while still counting in the batch mean.

    ``norm_feat=True`` L2-normalises the features first (fast-reid's ``NORM_FEAT``; not in the reference): distances
    then lie in [0, 2] and the loss cannot be lowered by shrinking every feature towards one point, which is what the
    unnormalised soft margin does when training from scratch.
    """
    f = _f32(feats)
    if f.ndim != 2:
        raise ValueError(f"triplet_loss: feats must be [B, D], got shape {f.shape}")
    if margin < 0:
        raise ValueError(f"triplet_loss: margin must be >= 0 (0 = soft margin), got {margin}")
    if norm_feat:
        f = l2_normalise(f, axis=1)
    sq = jnp.sum(f * f, axis=1)
    # HIGHEST: no TF32 on GPU for this tiny [B, B] product; batch-hard mining is sensitive to distance rounding.
    gram = jnp.matmul(f, f.T, precision=jax.lax.Precision.HIGHEST)
    dist2 = sq[:, None] + sq[None, :] - 2.0 * gram
    dist = jnp.sqrt(jnp.maximum(dist2, _DIST_CLAMP))
    same = labels[:, None] == labels[None, :]
    d_ap = jnp.max(jnp.where(same, dist, -jnp.inf), axis=1)
    d_an = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
    d_ap = jnp.maximum(d_ap, _HARD_CLAMP)
    d_an = jnp.maximum(d_an, _HARD_CLAMP)
    if margin == 0.0:
        return jnp.mean(jax.nn.softplus(d_ap - d_an))
    return jnp.mean(jax.nn.relu(d_ap - d_an + margin))


def _seg_inputs(
    name: str, part_logits: jax.Array, targets: jax.Array, weights: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """float32 ``(logits, targets, weights)`` of a segmentation loss, shapes checked; weights default to 1."""
    o, y = _f32(part_logits), _f32(targets)
    if o.ndim != 4 or o.shape != y.shape:
        raise ValueError(
            f"{name}: part_logits and targets must both be [B, gh, gw, K] with equal shapes, got {o.shape} and "
            f"{y.shape}"
        )
    w = jnp.ones((o.shape[0],), jnp.float32) if weights is None else _f32(weights)
    if w.shape != (o.shape[0],):
        raise ValueError(f"{name}: weights must be [B] = ({o.shape[0]},), got shape {w.shape}")
    return o, y, w


def segmentation_loss(part_logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """MSE between per-channel min-max normalised part logits and parsing targets (docs/reference.md §9.4).

    Both ``part_logits`` and ``targets`` (``[B, gh, gw, K]``) are normalised per channel over (batch, y, x) as
    ``(v - min) / (max - min + 1e-8)``; the loss is the mean squared difference over all elements.
    ``weights [B]`` (optional; 0 for samples without a parsing map): the min/max statistics are taken over samples
    with weight > 0 only and the mean is the weight-weighted mean over samples. With all weights 1 this is exactly
    the reference; with all weights 0 the loss is 0 (with zero gradient).
    """
    o, y, w = _seg_inputs("segmentation_loss", part_logits, targets, weights)
    valid = w > 0
    any_valid = jnp.any(valid)
    w = jnp.where(valid, w, 0.0)
    vmask = valid[:, None, None, None]

    def normalise(v: jax.Array) -> jax.Array:
        lo = jnp.min(jnp.where(vmask, v, jnp.inf), axis=(0, 1, 2))
        hi = jnp.max(jnp.where(vmask, v, -jnp.inf), axis=(0, 1, 2))
        # No valid sample: finite placeholders keep the (fully masked) arithmetic free of inf/NaN.
        lo = jnp.where(any_valid, lo, 0.0)
        hi = jnp.where(any_valid, hi, 1.0)
        return (v - lo) / (hi - lo + _SEG_EPS)

    per_sample = jnp.sum(jnp.square(normalise(o) - normalise(y)), axis=(1, 2, 3))
    per_sample = jnp.where(valid, per_sample, 0.0)
    elems = o.shape[1] * o.shape[2] * o.shape[3]
    denom = jnp.sum(w) * elems
    return jnp.where(any_valid, jnp.sum(w * per_sample) / jnp.where(any_valid, denom, 1.0), 0.0)


def soft_segmentation_loss(part_logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Cross-entropy between each patch's softmax over the part logits and its parsing target (not the reference).

    Each patch's target ``[K]`` (the parts' shares of the patch) is normalised to sum to 1; the loss is the mean over
    patches, the weight-weighted mean over samples (``weights [B]``, 0 = no parsing map). Unlike the reference's
    min-max-normalised MSE, a constant map does not come close to its minimum, so the head learns where the parts are
    (docs/experiments.md §4).
    """
    o, y, w = _seg_inputs("soft_segmentation_loss", part_logits, targets, weights)
    total = jnp.sum(y, axis=-1, keepdims=True)
    y = jnp.where(total > 0, y / jnp.where(total > 0, total, 1.0), 1.0 / y.shape[-1])
    per_sample = -jnp.mean(jnp.sum(y * jax.nn.log_softmax(o, axis=-1), axis=-1), axis=(1, 2))
    w = jnp.where(w > 0, w, 0.0)
    return jnp.sum(w * per_sample) / jnp.maximum(jnp.sum(w), 1e-12)


SEG_LOSSES = {"minmax_mse": segmentation_loss, "soft_ce": soft_segmentation_loss}


def reconstruction_loss(q: jax.Array, qc: jax.Array) -> jax.Array:
    """``mean |Q - Qc|`` between part features and their recovered version (docs/reference.md §9.5)."""
    q, qc = _f32(q), _f32(qc)
    if q.shape != qc.shape:
        raise ValueError(f"reconstruction_loss: Q and Qc shapes differ: {q.shape} vs {qc.shape}")
    return jnp.mean(jnp.abs(q - qc))


def kl_term(logits_global: jax.Array, logits_jpm1: jax.Array) -> jax.Array:
    """``KL(softmax(global) || softmax(jpm1))`` summed over classes, averaged over the batch (docs/reference.md §9.2).

    Equals ``F.kl_div(log_softmax(score[4]), softmax(score[0]), reduction='batchmean')``.
    """
    lq = jax.nn.log_softmax(_f32(logits_global), axis=-1)
    lp = jax.nn.log_softmax(_f32(logits_jpm1), axis=-1)
    return jnp.sum(jnp.exp(lq) * (lq - lp)) / lq.shape[0]


def _as_outputs(outputs: Any) -> TrainOutputs:
    if isinstance(outputs, TrainOutputs):
        return outputs
    try:
        logits, feats = outputs
    except (TypeError, ValueError):
        raise TypeError(
            f"total_loss: outputs must be TrainOutputs or the reference's (logits, feats) lists, got {type(outputs)}"
        ) from None
    return from_reference_order(logits, feats)


def total_loss(
    outputs: TrainOutputs | tuple[Sequence[jax.Array], Sequence[jax.Array]],
    pids: jax.Array,
    parsing: jax.Array | None,
    parsing_weight: jax.Array | None,
    loss_cfg: ml_collections.ConfigDict,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The reference's total training loss and every term for logging (docs/reference.md §9.6).

    Args:
      outputs: the model's :class:`TrainOutputs`, or the reference's ``(logits, feats)`` lists (15 and 18 entries).
      pids: int ``[B]`` train labels.
      parsing: ``[B, gh, gw, 6]`` parsing targets (unused without HSPM); parsing_weight: ``[B]`` (0 = no map) or None
        (all 1).
      loss_cfg: the ``loss`` config (``id_weight``, ``triplet_weight``, ``seg_weight``, ``seg_loss``, ``rec_weight``,
        ``kl_weight``, ``label_smoothing``, ``id_loss``, ``id_scale``, ``id_margin``, ``triplet_margin``,
        ``triplet_norm_feat``). With ``id_loss`` other than ``'softmax'`` the logits must be cosine similarities
        (``model.classifier='cosine'``); they go through :func:`margin_logits` before the cross-entropy.

    The structure, by branch: the ID and triplet terms of the JPM features averaged with weight 0.5, those of the
    recovered and part features summed with weight 0.5 * 0.6, the global ID terms averaged with weight 0.5, and the
    global triplet terms 0.5 for the based view and 1 for each other view (a quirk, docs/reference.md §14). A module
    switched off (``model.multi_view``, ``perception``, ``recovery``) drops its terms; with all three off this is
    TransReID's JPM loss.

    Returns:
      ``(loss, terms)``; ``terms`` holds ``id``, ``triplet``, ``seg`` (with HSPM), ``rec`` (with HSRM), ``kl``,
      ``total``, ``acc`` (top-1 of the based view's global logits), ``ce_per_logit`` (every classifier, in the
      reference's order) and ``triplet_per_feat`` (every ``[B, D]`` feature, in the reference's order).
    """
    out = _as_outputs(outputs)
    smoothing = float(loss_cfg.label_smoothing)
    margin = float(loss_cfg.triplet_margin)
    norm_feat = bool(loss_cfg.triplet_norm_feat)

    id_loss = str(loss_cfg.id_loss)
    if id_loss not in ID_LOSSES:
        raise ValueError(f"config.loss.id_loss={id_loss!r}: expected one of {list(ID_LOSSES)}")
    if id_loss != "softmax":
        scale, id_margin = float(loss_cfg.id_scale), float(loss_cfg.id_margin)
        to_logits = lambda s: margin_logits(s, pids, id_loss, scale, id_margin)
        kl_logits = (scale * _f32(out.global_logits[0]), scale * _f32(out.jpm_logits[0]))
    else:
        to_logits = lambda s: s
        kl_logits = (out.global_logits[0], out.jpm_logits[0])

    def ce(group: Sequence[jax.Array]) -> jax.Array:
        return jnp.stack([cross_entropy(to_logits(s), pids, smoothing) for s in group])

    def tri(group: Sequence[jax.Array]) -> jax.Array:
        return jnp.stack([triplet_loss(f, pids, margin, norm_feat) for f in group])

    # The recovered feature and the six part features share one weight (the reference's "extra" terms).
    extra_logits = ([] if out.recovered_logits is None else [out.recovered_logits]) + list(out.part_logits or ())
    extra_feats = ([] if out.recovered_feat is None else [out.recovered_feat]) + list(out.part_feats or ())
    ce_global, ce_jpm = ce(out.global_logits), ce(out.jpm_logits)
    tri_global, tri_jpm = tri(out.global_feats), tri(out.jpm_feats)
    l_id = 0.5 * jnp.mean(ce_jpm) + 0.5 * jnp.mean(ce_global)
    l_tri = 0.5 * jnp.mean(tri_jpm) + 0.5 * tri_global[0]
    if extra_logits:
        ce_extra, tri_extra = ce(extra_logits), tri(extra_feats)
        l_id = 0.5 * jnp.mean(ce_jpm) + 0.5 * 0.6 * jnp.sum(ce_extra) + 0.5 * jnp.mean(ce_global)
        l_tri = 0.5 * jnp.mean(tri_jpm) + 0.5 * 0.6 * jnp.sum(tri_extra) + 0.5 * tri_global[0]
    else:
        ce_extra = tri_extra = jnp.zeros((0,), jnp.float32)
    for t in tri_global[1:]:  # the other views' global triplet terms at full weight
        l_tri = l_tri + t
    l_kl = kl_term(*kl_logits)

    loss = float(loss_cfg.id_weight) * l_id + float(loss_cfg.triplet_weight) * l_tri
    terms = {"id": l_id, "triplet": l_tri}
    if out.parsing_logits is not None:
        seg_name = str(loss_cfg.seg_loss)
        if seg_name not in SEG_LOSSES:
            raise ValueError(f"config.loss.seg_loss={seg_name!r}: expected one of {sorted(SEG_LOSSES)}")
        if parsing is None:
            raise ValueError("total_loss: the part head's segmentation loss needs parsing targets")
        terms["seg"] = SEG_LOSSES[seg_name](out.parsing_logits, parsing, parsing_weight)
        loss = loss + float(loss_cfg.seg_weight) * terms["seg"]
    if out.recovered_parts is not None:
        terms["rec"] = reconstruction_loss(out.visible_parts, out.recovered_parts)
        loss = loss + float(loss_cfg.rec_weight) * terms["rec"]
    kl_weight = float(loss_cfg.kl_weight)
    if kl_weight != 0.0:
        loss = loss + kl_weight * l_kl
    acc = jnp.mean((jnp.argmax(out.global_logits[0], axis=-1) == pids).astype(jnp.float32))
    # Logged in the reference's order: globals, JPM, extras; the based view's global feature first among features.
    ce_all = jnp.concatenate([ce_global, ce_jpm, ce_extra])
    tri_all = jnp.concatenate([tri_global[:1], tri_global[1:], tri_jpm, tri_extra])
    terms.update(kl=l_kl, total=loss, acc=acc, ce_per_logit=ce_all, triplet_per_feat=tri_all)
    return loss, terms

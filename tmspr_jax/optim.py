"""Optimiser and learning-rate schedule (docs/reference.md §10).

* SGD, momentum 0.9, dampening 0, no Nesterov, with COUPLED L2 (PyTorch ``weight_decay``):
  ``d = g + wd * p; buf = m * buf + d; p -= lr * buf``. In optax: ``add_decayed_weights -> trace -> scale(-lr)``;
  ``optax.trace`` starts from a zero buffer, so the first step gives ``buf = d`` like PyTorch.
* Two parameter groups, as the reference's per-parameter groups reduce to: a leaf whose path contains ``"bias"``
  gets ``base_lr * bias_lr_factor`` and ``weight_decay_bias``; every other leaf (kernels, LN/BN scales, cls, pos,
  sie) gets ``base_lr`` and ``weight_decay``.
* The learning rate is an injected hyperparameter of each group's state (``optax.inject_hyperparams``), set once
  per epoch with :func:`set_epoch` from :func:`learning_rates` (timm CosineLRScheduler stepped at the start of
  epoch ``e``, 1-based; warmup start and floor absolute for both groups).

Difference from the reference: PyTorch SGD skips parameters whose grad is None (unused modules), while optax decays
every leaf it is given; our model has no unused modules, so this changes nothing in practice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

GROUPS = ("weight", "bias")
FROZEN = "frozen"
_OPTIMIZERS = ("sgd", "adamw")


def _path_str(path: tuple) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def param_labels(params: Any, frozen: Callable[[str], bool] | None = None) -> Any:
    """A tree like ``params`` labelling each leaf ``'bias'`` (path contains "bias"), ``'weight'`` or ``'frozen'``.

    ``frozen(path_str) -> bool`` (optional) marks leaves that must not change (no update, no decay).
    """

    def label(path: tuple, _leaf: Any) -> str:
        name = _path_str(path)
        if frozen is not None and frozen(name):
            return FROZEN
        return "bias" if "bias" in name else "weight"

    return jax.tree_util.tree_map_with_path(label, params)


def learning_rates(epoch: int, optim_cfg: ml_collections.ConfigDict, total_epochs: int) -> dict[str, float]:
    """Per-group learning rates for 1-based ``epoch`` (the reference's CosineLRScheduler.step(epoch)).

    For a group with base value ``v`` (``base_lr``, or ``base_lr * bias_lr_factor`` for biases), with
    ``w0 = warmup_lr_init_factor * base_lr`` and ``lmin = min_lr_factor * base_lr`` (absolute, both groups)::

        e < warmup:        w0 + e * (v - w0) / warmup
        warmup <= e < T:   lmin + 0.5 * (v - lmin) * (1 + cos(pi * e / T))      (e is not offset by the warmup)
        e >= T:            lmin
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"learning_rates: epoch must be an int >= 0 (1-based training epochs), got {epoch!r}")
    if not isinstance(total_epochs, int) or total_epochs <= 0:
        raise ValueError(f"learning_rates: total_epochs must be a positive int, got {total_epochs!r}")
    base_lr = float(optim_cfg.base_lr)
    warmup = int(optim_cfg.warmup_epochs)
    if warmup < 0:
        raise ValueError(f"optim.warmup_epochs must be >= 0, got {warmup}")
    w0 = float(optim_cfg.warmup_lr_init_factor) * base_lr
    lmin = float(optim_cfg.min_lr_factor) * base_lr
    values = {"weight": base_lr, "bias": base_lr * float(optim_cfg.bias_lr_factor)}

    def one(v: float) -> float:
        if epoch < warmup:
            return w0 + epoch * (v - w0) / warmup
        if epoch < total_epochs:  # first (and only) cosine cycle
            return lmin + 0.5 * (v - lmin) * (1.0 + math.cos(math.pi * epoch / total_epochs))
        return lmin

    return {g: one(v) for g, v in values.items()}


def _sgd_coupled(learning_rate: float, weight_decay: float, momentum: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )


def _adamw(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    # PyTorch AdamW defaults (betas 0.9/0.999, eps 1e-8); decay decoupled and scaled by the lr like torch.
    return optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)


def make_optimizer(
    optim_cfg: ml_collections.ConfigDict,
    params: Any,
    total_epochs: int,
    frozen: Callable[[str], bool] | None = None,
) -> optax.GradientTransformation:
    """The reference's optimiser over ``params`` with per-group learning rates set for epoch 1.

    ``optim.name``: ``'sgd'`` (reference: momentum, coupled L2) or ``'adamw'`` (decoupled decay). Leaves whose
    path string matches ``frozen`` (optional predicate) get zero updates. Call :func:`set_epoch` on the state at
    the start of each epoch.
    """
    name = str(optim_cfg.name).lower()
    if name not in _OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {_OPTIMIZERS}, got {name!r}")
    lrs = learning_rates(1, optim_cfg, total_epochs)
    decay = {"weight": float(optim_cfg.weight_decay), "bias": float(optim_cfg.weight_decay_bias)}
    transforms: dict[str, optax.GradientTransformation] = {}
    for group in GROUPS:
        if name == "sgd":
            tx = optax.inject_hyperparams(_sgd_coupled, static_args=("weight_decay", "momentum"))(
                learning_rate=lrs[group], weight_decay=decay[group], momentum=float(optim_cfg.momentum)
            )
        else:
            tx = optax.inject_hyperparams(_adamw, static_args=("weight_decay",))(
                learning_rate=lrs[group], weight_decay=decay[group]
            )
        transforms[group] = tx
    transforms[FROZEN] = optax.set_to_zero()
    return optax.multi_transform(transforms, param_labels(params, frozen))


def _group_states(opt_state: Any) -> dict[str, Any]:
    inner = getattr(opt_state, "inner_states", None)
    if inner is None:
        raise TypeError(f"expected the state of make_optimizer (optax multi_transform), got {type(opt_state)}")
    out = {}
    for group in GROUPS:
        if group in inner:
            st = inner[group]
            st = getattr(st, "inner_state", st)  # MaskedState wrapper
            if not hasattr(st, "hyperparams") or "learning_rate" not in st.hyperparams:
                raise TypeError(
                    f"optimiser group {group!r} has no injected learning_rate; build it with make_optimizer"
                )
            out[group] = st
    return out


def set_epoch(opt_state: Any, epoch: int, optim_cfg: ml_collections.ConfigDict, total_epochs: int) -> Any:
    """Return ``opt_state`` with both groups' learning rates set for 1-based ``epoch`` (float32 scalars).

    The new values keep the sharding of the old ones, so the state can go straight back into a jitted step.
    """
    lrs = learning_rates(epoch, optim_cfg, total_epochs)
    groups = _group_states(opt_state)
    new_inner = dict(opt_state.inner_states)
    for group, st in groups.items():
        old = st.hyperparams["learning_rate"]
        new = jnp.asarray(lrs[group], dtype=jnp.float32)
        if isinstance(old, jax.Array):
            new = jax.device_put(new, old.sharding)
        st = st._replace(hyperparams={**st.hyperparams, "learning_rate": new})
        wrapper = opt_state.inner_states[group]
        new_inner[group] = wrapper._replace(inner_state=st) if hasattr(wrapper, "inner_state") else st
    return opt_state._replace(inner_states=new_inner)


def current_lrs(opt_state: Any) -> dict[str, float]:
    """The learning rates held in ``opt_state``, per group, as Python floats (for logging)."""
    return {g: float(jax.device_get(st.hyperparams["learning_rate"])) for g, st in _group_states(opt_state).items()}

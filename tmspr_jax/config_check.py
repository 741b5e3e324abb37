"""The allowed range of every numeric config key, checked when a run or tool starts, before any data or compilation.

:data:`RANGES` is the one table: a key of :func:`tmspr_jax.config.get_base_config` holding a number (or a tuple of
numbers) has a row here, and a test fails for a numeric key without one. :func:`check_config` refuses a value outside
its row, or a NaN / infinite one, with one line naming ``config.<path>``, the value and what is allowed, e.g.
``config.train.eval_period=0: expected a whole number >= 1 (epochs between evaluations)``.

Keys a config does not have are skipped (a tool's config may carry only what it reads); the generator's own options
(``data.synthetic_options``) are checked by :class:`tmspr_jax.datagen.synthetic.SyntheticOptions`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Range:
    """``low <= v <= high`` (``<`` where ``*_open``), a whole number when ``integer``; ``None`` = unbounded (but
    finite). ``also``: values allowed outside the range (e.g. ``-1`` = automatic). A tuple value is checked element by
    element."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    also: tuple[float, ...] = ()
    meaning: str = ""

    def allows(self, v: float) -> bool:
        if v in self.also:
            return True
        if not math.isfinite(v) or (self.integer and v != int(v)):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return not (self.high is not None and (v >= self.high if self.high_open else v > self.high))

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a finite number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = f"{kind} {' and '.join(bounds)}".rstrip()
        if self.also:
            text += " or " + " or ".join(f"{a:g}" for a in self.also)
        return f"{text} ({self.meaning})" if self.meaning else text


def _count(meaning: str, low: int = 1) -> Range:
    return Range(low=low, integer=True, meaning=meaning)


def _weight(meaning: str) -> Range:
    return Range(low=0.0, meaning=meaning)


def _fraction(meaning: str, high_open: bool = False) -> Range:
    return Range(low=0.0, high=1.0, high_open=high_open, meaning=meaning)


RANGES: dict[str, Range] = {
    "seed": _count("random seed", low=0),
    "img_size": _count("image height and width in pixels"),
    "init_step": Range(low=0, integer=True, also=(-1,), meaning="checkpoint step; -1 = best by mAP, else latest"),
    # model
    "model.patch_size": _count("patch size in pixels"),
    "model.stride": _count("patch stride in pixels"),
    "model.embed_dim": _count("token width"),
    "model.depth": _count("transformer blocks"),
    "model.num_heads": _count("attention heads"),
    "model.mlp_ratio": Range(low=0.0, low_open=True, meaning="MLP width / token width"),
    "model.drop_path": _fraction("stochastic depth rate", high_open=True),
    "model.sie_coe": _weight("weight of the camera embedding"),
    "model.shift_num": _count("JPM shift; effective shift is shift_num - 1"),
    "model.shuffle_groups": _count("JPM shuffle groups"),
    "model.divide_length": _count("JPM tokens per group divisor"),
    # data
    "data.mean": Range(meaning="per-channel normalisation mean"),
    "data.std": Range(low=0.0, low_open=True, meaning="per-channel normalisation std"),
    "data.batch_size": _count("training images per step, all devices"),
    "data.num_instances": _count("images per identity in a batch"),
    "data.test_batch_size": _count("images per evaluation batch"),
    "data.num_workers": _count("data worker processes; 0 = in-process", low=0),
    "data.prefetch_buffer": _count("batches read ahead"),
    "data.flip_prob": _fraction("probability of a horizontal flip"),
    # parsing targets
    "parsing.parser_batch_size": _count("images per device per parser batch"),
    # losses
    "loss.id_weight": _weight("loss weight"),
    "loss.triplet_weight": _weight("loss weight"),
    "loss.seg_weight": _weight("loss weight"),
    "loss.rec_weight": _weight("loss weight"),
    "loss.kl_weight": _weight("loss weight"),
    "loss.label_smoothing": _fraction("label smoothing", high_open=True),
    "loss.id_scale": Range(low=0.0, low_open=True, meaning="scale of the margin ID losses"),
    "loss.id_margin": _weight("margin of the margin ID losses"),
    "loss.triplet_margin": _weight("triplet margin; 0 = soft margin"),
    # optimiser
    "optim.base_lr": Range(low=0.0, low_open=True, meaning="learning rate; <= 0 would not descend"),
    "optim.momentum": _fraction("SGD momentum", high_open=True),
    "optim.weight_decay": _weight("weight decay"),
    "optim.weight_decay_bias": _weight("weight decay of biases"),
    "optim.bias_lr_factor": Range(low=0.0, low_open=True, meaning="bias learning rate / base_lr"),
    "optim.warmup_epochs": _count("warm-up epochs", low=0),
    "optim.warmup_lr_init_factor": Range(low=0.0, low_open=True, meaning="first warm-up learning rate / base_lr"),
    "optim.min_lr_factor": _weight("final learning rate / base_lr"),
    # training loop
    "train.epochs": _count("training epochs"),
    "train.eval_period": _count("epochs between evaluations"),
    "train.log_every": _count("steps between log rows"),
    "train.checkpoint_every": _count("epochs between checkpoints"),
    "train.checkpoint_every_steps": _count("steps between mid-epoch checkpoints; 0 = none", low=0),
    "train.keep_checkpoints": _count("checkpoints kept"),
    "train.max_steps_per_epoch": _count("steps per epoch cap; 0 = the full epoch", low=0),
    # evaluation
    "eval.max_rank": _count("highest rank of the CMC curve"),
    "eval.bootstrap_samples": _count("bootstrap draws; 0 = no intervals", low=0),
    "eval.k1": _count("re-ranking k1"),
    "eval.k2": _count("re-ranking k2"),
    "eval.lambda_value": _fraction("re-ranking weight of the original distance"),
}


def is_number(value: Any) -> bool:
    """A number that is not a bool (``True`` is an int in Python, but a switch here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_keys(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted path: value}`` of every key holding a number or a non-empty tuple / list of numbers."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "items"):
            out.update(numeric_keys(value, path + "."))
        elif is_number(value) or (isinstance(value, (tuple, list)) and value and all(is_number(v) for v in value)):
            out[path] = value
    return out


def _lookup(config: Any, path: str) -> tuple[bool, Any]:
    node = config
    for part in path.split("."):
        try:
            if part not in node:
                return False, None
            node = node[part]
        except TypeError:
            return False, None
    return True, node


def check_config(config: Any) -> None:
    """Raises :class:`ValueError` naming ``config.<path>``, its value and the allowed range for the first numeric key
    outside its row of :data:`RANGES` (NaN and infinity are never allowed)."""
    for path, rule in RANGES.items():
        present, value = _lookup(config, path)
        if not present or value is None:
            continue
        values = list(value) if isinstance(value, (tuple, list)) else [value]
        if not values or not all(is_number(v) and rule.allows(float(v)) for v in values):
            shown = tuple(value) if isinstance(value, (tuple, list)) else value
            each = ", each value" if isinstance(value, (tuple, list)) else ""
            raise ValueError(f"config.{path}={shown!r}: expected {rule.describe()}{each}")

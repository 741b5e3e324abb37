"""Trained PyTorch T-MSPR / TransReID (JPM) checkpoints -> the reference's state dict, plus the T-MSPR head init.

A T-MSPR checkpoint as the reference saves it holds every module, used or not; the unused ones (docs/reference.md §7.3)
are dropped with :func:`strip_unused` (regular expressions on the key names: a ``.safetensors`` checkpoint converts
without torch) and reported. A TransReID JPM checkpoint has the backbone, b1, b2, ``classifier``/``classifier_1..4``
and ``bottleneck``/``bottleneck_1..4`` but none of T-MSPR's extra heads; those are initialised as the reference
initialises them and reported.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from convert_weights.readers import CheckpointError

NUM_PARTS = 6

# Heads in the order the reference creates them; the first five BNNeck/classifier names are TransReID's too.
CLASSIFIERS = (
    "classifier",
    "classifier_occ1",
    "classifier_occ2",
    "classifier_occ3",
    "classifier_1",
    "classifier_2",
    "classifier_3",
    "classifier_4",
    "classifier_5",
    "classifier_0",
    "classifier_cp",
)
BOTTLENECKS = (
    "bottleneck",
    "bottleneck_occ1",
    "bottleneck_occ2",
    "bottleneck_occ3",
    "bottleneck_1",
    "bottleneck_2",
    "bottleneck_3",
    "bottleneck_4",
    "bottleneck_cp",
    "bottleneck_bp0",
    "bottleneck_bp1",
    "bottleneck_bp2",
    "bottleneck_bp3",
    "bottleneck_bp4",
    "bottleneck_bp5",
)
TRANSREID_HEADS = (
    "classifier",
    "classifier_1",
    "classifier_2",
    "classifier_3",
    "classifier_4",
    "bottleneck",
    "bottleneck_1",
    "bottleneck_2",
    "bottleneck_3",
    "bottleneck_4",
)
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# Reference init std of each randomly initialised tensor (docs/reference.md §2.4, §5, §7).
SIE_STD = 0.02
PART_HEAD_STD = 1e-4
CLASSIFIER_STD = 1e-3


def unused_key_patterns(depth: int = 12) -> tuple[str, ...]:
    """Regexes of reference state-dict keys whose modules the reference never runs (docs/reference.md §7.3)."""
    return (
        rf"^base\.blocks\.{depth - 1}\.",  # the last backbone block: b1/b2 are copies of it
        r"^base\.norm\.",
        r"^base\.fc\.",
        r"^classifier2\.",
        r"^classifier_c\.",
        r"^classifier3_[1-4]\.",
        r"^classifier_bp\.",
        r"^classifier_bp[1-5]\.",
        r"^bottleneck2\.",
        r"^bottleneck3_[1-4]\.",
        r"^bottleneck_bp\.",
        r"^bottleneck_0\.",
        r"^NL[._0-9]",  # the four unused nonLocal modules
    )


#: Unused-module key patterns of the shipped ViT-B (depth 12) reference model.
REFERENCE_UNUSED_KEYS_PATTERNS: tuple[str, ...] = unused_key_patterns(12)


def strip_unused(state_dict: Mapping[str, Any], depth: int = 12) -> tuple[dict[str, Any], list[str]]:
    """Drop the reference's unused modules from ``state_dict``; returns ``(kept, dropped_keys)``."""
    patterns = [re.compile(p) for p in unused_key_patterns(depth)]
    kept, dropped = {}, []
    for k, v in state_dict.items():
        if any(p.search(k) for p in patterns):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did, for the printed summary and ``meta.json``."""

    source: str
    converted: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    resized: dict[str, str] = dataclasses.field(default_factory=dict)
    initialised: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def skip(self, key: str, why: str) -> None:
        self.skipped[key] = why

    def resize(self, key: str, how: str) -> None:
        self.resized[key] = how

    def initialise(self, key: str, how: str) -> None:
        self.initialised[key] = how

    def note(self, text: str) -> None:
        self.notes.append(text)

    def summary(self) -> str:
        """Human-readable summary: counts, then every skipped/resized key with its reason."""
        lines = [
            f"source: {self.source}",
            f"tensors converted from the checkpoint: {len(self.converted)}",
            f"tensors initialised (no counterpart in the checkpoint): {len(self.initialised)}",
            f"keys skipped: {len(self.skipped)}",
            f"tensors resized: {len(self.resized)}",
        ]
        for k, why in self.skipped.items():
            lines.append(f"  skipped {k}: {why}")
        for k, how in self.resized.items():
            lines.append(f"  resized {k}: {how}")
        by_reason: dict[str, list[str]] = {}
        for k, how in self.initialised.items():
            by_reason.setdefault(how, []).append(k)
        for how, keys in by_reason.items():
            modules = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))  # BN's 5 tensors -> one module name
            lines.append(f"  initialised {len(keys)} tensors ({how}): {', '.join(modules)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_meta(self) -> dict[str, Any]:
        return {
            "converted": len(self.converted),
            "skipped": dict(self.skipped),
            "resized": dict(self.resized),
            "initialised": sorted(self.initialised),
            "notes": list(self.notes),
        }


def sie_rows(model: Any) -> int:
    """Rows of the model's SIE table (0 = none), by the backbone's own rule."""
    from tmspr_jax.models.vit import sie_table_rows

    return sie_table_rows(model.num_cameras, model.num_views)


def _normal(rng: jax.Array, name: str, shape: tuple[int, ...], std: float) -> np.ndarray:
    # One key per tensor name, so a tensor's init does not depend on which other tensors are initialised.
    key = jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)
    return np.asarray(jax.random.normal(key, shape, np.float32)) * np.float32(std)


def init_heads(model: Any, rng: jax.Array, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Reference-named tensors of everything an ImageNet ViT does not provide, initialised as the reference does.

    ``base.sie_embed`` N(0, 0.02^2) (trunc_normal with absolute cut-offs, docs/reference.md §2.4);
    ``linear_layer.weight`` N(0, 1e-4^2); classifiers N(0, 0.001^2); BNNecks weight 1, bias 0, running mean 0, running
    var 1. Modules the model lacks are left out; ``names`` restricts the result further to those modules (e.g. only
    T-MSPR's extra heads for a TransReID checkpoint).
    """
    from tmspr_jax.models import init_variables

    d, c = int(model.embed_dim), int(model.num_classes)
    out: dict[str, np.ndarray] = {}
    # Only modules the configured model has (the TransReID baseline has no T-MSPR heads: model.perception etc.).
    params = jax.eval_shape(lambda r: init_variables(model, r), jax.random.key(0))["params"]
    has = {"linear_layer" if k == "part_head" else k for k in params} | {"base.sie_embed"}
    want = lambda n: n in has and (names is None or n in names)
    rows = sie_rows(model)
    if rows and want("base.sie_embed"):
        out["base.sie_embed"] = _normal(rng, "base.sie_embed", (rows, 1, d), SIE_STD)
    if want("linear_layer"):
        out["linear_layer.weight"] = _normal(rng, "linear_layer.weight", (NUM_PARTS, d), PART_HEAD_STD)
    for name in CLASSIFIERS:
        if want(name):
            out[f"{name}.weight"] = _normal(rng, f"{name}.weight", (c, d), CLASSIFIER_STD)
    for name in BOTTLENECKS:
        if want(name):
            out[f"{name}.weight"] = np.ones((d,), np.float32)
            out[f"{name}.bias"] = np.zeros((d,), np.float32)
            out[f"{name}.running_mean"] = np.zeros((d,), np.float32)
            out[f"{name}.running_var"] = np.ones((d,), np.float32)
            out[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def tmspr_only_heads() -> tuple[str, ...]:
    """Module names a T-MSPR checkpoint has and a TransReID JPM checkpoint lacks."""
    return ("linear_layer",) + tuple(n for n in CLASSIFIERS + BOTTLENECKS if n not in TRANSREID_HEADS)


def _module_of(key: str) -> str:
    return key.split(".", 1)[0]


def checkpoint_counts(state: dict[str, np.ndarray], source: str) -> tuple[int, int]:
    """``(num_classes, sie_rows)`` read from a reference checkpoint (classifier rows, ``base.sie_embed`` rows)."""
    if "classifier.weight" not in state:
        raise CheckpointError(
            f"{source!r}: missing key 'classifier.weight' (needed to read the number of classes); "
            "expected a T-MSPR or TransReID JPM checkpoint"
        )
    num_classes = int(state["classifier.weight"].shape[0])
    sie = state.get("base.sie_embed")
    return num_classes, (int(sie.shape[0]) if sie is not None else 0)


def infer_grid(num_patches: int, img_size: tuple[int, int], patch: int) -> tuple[int, int] | None:
    """The grid of ``num_patches`` positions for ``img_size`` with some square stride 1..patch, if unique."""
    from tmspr_jax.models.vit import patch_grid

    grids = {patch_grid(img_size, patch, (s, s)) for s in range(1, patch + 1)}
    grids = {g for g in grids if g[0] * g[1] == num_patches}
    return grids.pop() if len(grids) == 1 else None


def check_grid(
    state: dict[str, np.ndarray],
    model: Any,
    source: str,
    *,
    resize_pos: bool,
    src_grid: tuple[int, int] | None,
    report: ConversionReport,
) -> dict[str, np.ndarray]:
    """Check ``base.pos_embed`` against the model grid; resize it only when ``resize_pos`` is asked for."""
    from convert_weights.resize import resize_pos_embed

    if "base.pos_embed" not in state:
        raise CheckpointError(f"{source!r}: missing key 'base.pos_embed'")
    pos = state["base.pos_embed"]
    gh, gw = model.grid
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise CheckpointError(f"{source!r}: key 'base.pos_embed' has shape {pos.shape}, expected [1, N, D]")
    n = pos.shape[1] - 1
    if n == gh * gw:
        if src_grid is not None and tuple(src_grid) != (gh, gw):
            raise CheckpointError(
                f"{source!r}: --src_grid {src_grid[0]}x{src_grid[1]} was given but the checkpoint "
                f"already has the config's {gh}x{gw} = {n} positions"
            )
        return state
    if src_grid is None:
        src_grid = infer_grid(n, tuple(model.img_size), int(model.patch_size))
    described = f"{src_grid[0]}x{src_grid[1]} = {n}" if src_grid else f"{n} (grid unknown)"
    if not resize_pos:
        raise CheckpointError(
            f"{source!r}: base.pos_embed has {described} patch positions, but the config's grid is {gh}x{gw} = "
            f"{gh * gw} (img_size={tuple(model.img_size)}, stride={tuple(model.stride)}, patch={model.patch_size}); "
            "use the config the checkpoint was trained with, or pass --resize_pos to resize the position embedding"
        )
    if src_grid is None or src_grid[0] * src_grid[1] != n:
        raise CheckpointError(
            f"{source!r}: base.pos_embed has {n} patch positions and its grid cannot be inferred; "
            "pass --src_grid=HxW with --resize_pos"
        )
    out = dict(state)
    out["base.pos_embed"] = resize_pos_embed(np.asarray(pos, np.float32), tuple(src_grid), (gh, gw))
    report.resize(
        "base.pos_embed",
        f"{src_grid[0]}x{src_grid[1]} -> {gh}x{gw} (asked for with --resize_pos; "
        "PyTorch bilinear, align_corners=False)",
    )
    return out


def tmspr_to_reference(
    state: dict[str, np.ndarray],
    model_cfg: Any,
    img_size: tuple[int, int],
    rng: jax.Array,
    source: str = "<checkpoint>",
    *,
    num_classes: int | None = None,
    num_cameras: int | None = None,
    resize_pos: bool = False,
    src_grid: tuple[int, int] | None = None,
) -> tuple[dict[str, np.ndarray], ConversionReport, str, Any]:
    """Normalise a trained T-MSPR or TransReID JPM state dict; returns ``(state, report, kind, model)``.

    The number of classes and cameras are read from the checkpoint (``classifier.weight`` rows, ``base.sie_embed``
    rows) and must equal ``num_classes`` / ``num_cameras`` when those are given; ``model`` is the
    :class:`tmspr_jax.models.TMSPR` built for them. ``kind`` is ``'tmspr'`` or ``'transreid'``. Unused reference
    modules are dropped and reported; T-MSPR heads missing from a TransReID checkpoint are initialised and reported; a
    checkpoint with only some of them is an error naming the missing modules. The grid is checked against the config.
    """
    from tmspr_jax.models import build_model

    report = ConversionReport(source=source)
    depth = int(model_cfg.depth)
    kept, dropped = strip_unused(state, depth=depth)
    for k in dropped:
        report.skip(k, "module the reference never runs (docs/reference.md §7.3)")

    ckpt_classes, ckpt_cams = checkpoint_counts(kept, source)
    if num_classes is not None and int(num_classes) != ckpt_classes:
        raise CheckpointError(
            f"{source!r}: classifier.weight has {ckpt_classes} rows (classes) but --num_classes={num_classes} was given"
        )
    if ckpt_cams and not model_cfg.sie_camera:
        raise CheckpointError(
            f"{source!r}: the checkpoint has a camera embedding base.sie_embed with {ckpt_cams} rows "
            "but config.model.sie_camera is False"
        )
    if num_cameras is not None:
        expect = int(num_cameras) if (model_cfg.sie_camera and int(num_cameras) > 1) else 0
        if expect != ckpt_cams:
            raise CheckpointError(
                f"{source!r}: base.sie_embed has {ckpt_cams} rows (cameras; 0 = no camera embedding) but "
                f"--num_cameras={num_cameras} with config.model.sie_camera={model_cfg.sie_camera} needs {expect}"
            )
    model = build_model(model_cfg, img_size, ckpt_classes, ckpt_cams)

    present = {_module_of(k) for k in kept}
    extra = tmspr_only_heads()
    have = [m for m in extra if m in present]
    if have and len(have) < len(extra):
        missing = [m for m in extra if m not in present]
        raise CheckpointError(
            f"{source!r}: a T-MSPR checkpoint must have all T-MSPR heads; missing modules {missing} (present: {have})"
        )
    kind = "tmspr" if have else "transreid"
    if kind == "transreid":
        heads = init_heads(model, rng, names=extra)
        for k in heads:
            report.initialise(k, "T-MSPR head absent from a TransReID checkpoint, initialised as the reference")
        kept = {**kept, **heads}
    kept = check_grid(kept, model, source, resize_pos=resize_pos, src_grid=src_grid, report=report)
    report.converted.extend(k for k in kept if k not in report.initialised)
    return kept, report, kind, model


def default_counts(num_classes: int | None, num_cameras: int | None) -> tuple[int, int]:
    """Placeholder head sizes for an ImageNet-only conversion (heads are re-initialised when loaded for training)."""
    return (1 if num_classes is None else int(num_classes)), (0 if num_cameras is None else int(num_cameras))

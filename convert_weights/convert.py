"""Checkpoint files and converted folders -> full model variables for a config.

:func:`convert_file` turns an ImageNet ViT ``.pth``/``.npz``/``.safetensors`` or a trained T-MSPR / TransReID ``.pth``
into ``(variables, meta, report)``; :func:`load_pretrained` gives the variables of a config's model from such a file or
from a converted folder (:mod:`tmspr_jax.weights`), re-initialising the heads of an ImageNet-only folder. The
training entry point (``python -m tmspr_jax.main``) hands :func:`load_pretrained` to :mod:`tmspr_jax.train` for
``config.model.pretrained``; the library itself never imports this package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from convert_weights.mapping import reference_to_variables, variables_to_reference
from convert_weights.readers import CheckpointError, is_weight_file, read_checkpoint
from convert_weights.timm import is_timm_vit, is_vit_jax, timm_to_reference, vit_jax_to_timm
from convert_weights.tmspr import BOTTLENECKS, CLASSIFIERS, default_counts, init_heads, sie_rows, tmspr_to_reference
from tmspr_jax.models import build_model, init_variables
from tmspr_jax.models.tmspr import PRETRAINED_HEADS
from tmspr_jax.weights import (
    KINDS,
    META_FILE,
    WeightsError,
    fine_tune_start,
    is_weights_folder,
    load_variables,
    model_meta,
)

MODES = ("timm", "tmspr", "auto")


def convert_file(
    path: str,
    model_cfg: Any,
    img_size: Sequence[int],
    rng: jax.Array,
    *,
    num_classes: int | None = None,
    num_cameras: int | None = None,
    resize_pos: bool = False,
    src_grid: tuple[int, int] | None = None,
    mode: str = "auto",
) -> tuple[dict, dict, Any]:
    """Convert a checkpoint file into ``(variables, meta, report)`` for the config.

    ``mode``: ``'timm'`` (ImageNet ViT, timm naming or vit_jax ``.npz``), ``'tmspr'`` (trained T-MSPR / TransReID
    JPM state dict), or ``'auto'`` (decided from the keys). For ``'timm'`` the heads are initialised from ``rng`` with
    ``num_classes`` / ``num_cameras`` (placeholders 1 / 0 when not given); for ``'tmspr'`` they are read from the
    checkpoint and checked against the given values.
    """
    if mode not in MODES:
        raise ValueError(f"convert_file: mode={mode!r}, expected one of {MODES}")
    img_size = tuple(int(s) for s in img_size)
    # Refused before the file is read and converted (a ViT-B checkpoint is 350 MB); building the module is cheap.
    state = read_checkpoint(path)
    if mode == "auto":
        mode = "tmspr" if "base.cls_token" in state or "classifier.weight" in state else "timm"
    if mode == "timm":
        if is_vit_jax(state):
            state = vit_jax_to_timm(state, source=path)
        elif not is_timm_vit(state):
            raise CheckpointError(
                f"{path!r}: not an ImageNet ViT checkpoint: expected timm keys (patch_embed.proj.weight, cls_token, "
                f"blocks.N.*) or the vit_jax .npz layout (embedding/kernel, Transformer/...); found keys "
                f"{sorted(state)[:8]}..."
            )
        n_cls, n_cam = default_counts(num_classes, num_cameras)
        model = build_model(model_cfg, img_size, n_cls, n_cam)
        ref, report = timm_to_reference(state, model, rng, source=path)
        kind = "imagenet"
    else:
        ref, report, kind, model = tmspr_to_reference(
            state,
            model_cfg,
            img_size,
            rng,
            source=path,
            num_classes=num_classes,
            num_cameras=num_cameras,
            resize_pos=resize_pos,
            src_grid=src_grid,
        )
    variables, _ = reference_to_variables(ref, model, source=path)
    meta = {**model_meta(model), "kind": kind, "source": os.path.abspath(path), "conversion": report.to_meta()}
    if kind == "imagenet":
        meta["heads"] = (
            "placeholder: classes/cameras not given, heads re-initialised when loaded"
            if num_classes is None or num_cameras is None
            else "initialised"
        )
    return variables, meta, report


def load_pretrained(
    path: str, model_cfg: Any, img_size: Sequence[int], num_classes: int, num_cameras: int, rng: jax.Array
) -> dict:
    """Full ``{'params', 'batch_stats'}`` for ``build_model(model_cfg, img_size, num_classes, num_cameras)``.

    ``path``: an ImageNet ViT ``.pth``/``.npz``/``.safetensors`` (converted on the fly, heads initialised from
    ``rng`` as the reference does), a trained T-MSPR/TransReID ``.pth`` (counts checked), or a converted folder. A
    folder of kind ``'imagenet'`` keeps its backbone, b1 and b2 and gets fresh heads for these counts; other kinds
    must match ``num_classes``, ``num_cameras`` and the grid, else :class:`WeightsError` names both values, unless
    ``model_cfg.pretrained_heads='reinit'``: then a trained model of other identities or cameras starts a fine-tuning
    run (:func:`fine_tune`).
    """
    img_size = tuple(int(s) for s in img_size)
    heads = str(model_cfg.pretrained_heads)
    if heads not in PRETRAINED_HEADS:
        raise ValueError(f"config.model.pretrained_heads={heads!r}: expected one of {PRETRAINED_HEADS}")
    if heads == "reinit" and (os.path.isdir(path) or is_weight_file(path)):
        trained = fine_tune(path, model_cfg, img_size, int(num_classes), int(num_cameras), rng)
        if trained is not None:
            return trained
    if os.path.isdir(path):
        return _from_folder(path, model_cfg, img_size, int(num_classes), int(num_cameras), rng)
    if is_weight_file(path):
        variables, _, _ = convert_file(path, model_cfg, img_size, rng, num_classes=num_classes, num_cameras=num_cameras)
        return variables
    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained weights not found: {path!r}")
    raise WeightsError(f"{path!r}: expected a .pth/.npz/.safetensors file or a converted-weights folder")


def fine_tune(
    path: str, model_cfg: Any, img_size: tuple[int, int], num_classes: int, num_cameras: int, rng: jax.Array
) -> dict | None:
    """A trained T-MSPR / TransReID model (``.pth``, converted folder or training workdir, any identities and cameras)
    as the start of a run on ``num_classes`` identities and ``num_cameras`` cameras: backbone, b1, b2, part head and
    BNNecks kept, classifiers (and the SIE table when the cameras differ) re-initialised as the reference initialises
    them; one line printed saying which. None for ImageNet weights (nothing trained to keep: the ordinary path
    applies)."""
    if os.path.isdir(path):
        variables, meta = load_variables(path) if is_weights_folder(path) else _trained_workdir(path)
        if meta.get("kind") == "imagenet":
            return None
        source = build_model(model_cfg, img_size, int(meta["num_classes"]), int(meta["num_cameras"] or 0))
        _check_geometry(path, meta, model_meta(source))
    else:
        variables, meta, _ = convert_file(path, model_cfg, img_size, rng)  # the checkpoint's own counts
        if meta["kind"] == "imagenet":
            return None
    model = build_model(model_cfg, img_size, num_classes, num_cameras)
    fresh_rng, _ = jax.random.split(rng)
    fresh = jax.tree_util.tree_map(np.asarray, init_variables(model, fresh_rng))
    out, kept, reinit = fine_tune_start(variables, fresh, path)
    necks = sum(k.startswith("bottleneck") for k in kept)
    sie = ""
    if "backbone/sie_embed" in reinit:
        sie = f", SIE camera table ({meta['num_cameras'] or 0} -> {model.num_cameras} cameras)"
    print(
        f"Fine-tuning from {path} ({meta['kind']}): kept backbone, b1, b2, "
        f"{'part head, ' if 'part_head' in kept else ''}{necks} BNNecks; re-initialised "
        f"{sum(k.startswith('classifier') for k in reinit)} classifiers ({meta['num_classes']} -> {num_classes} "
        f"identities){sie}",
        flush=True,
    )
    return out


def _trained_workdir(path: str) -> tuple[dict, dict]:
    """The variables of a training workdir's best checkpoint (else its latest intact one) and the model size saved
    with it (counts read from the arrays for checkpoints saved without it)."""
    from tmspr_jax import checkpoints

    try:
        step, state, data = checkpoints.read_workdir(path, what="model.pretrained")
    except FileNotFoundError as e:
        raise WeightsError(str(e)) from None
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    meta = dict(data.get(checkpoints.MODEL_KEY) or {})
    params = variables["params"]
    meta.setdefault("num_classes", int(np.shape(params["classifier"]["kernel"])[-1]))
    meta.setdefault("num_cameras", int(np.shape(params["backbone"].get("sie_embed", np.zeros((0,))))[0]))
    meta["kind"] = f"training workdir, step {step}"
    return variables, meta


def _check_geometry(path: str, meta: dict, want: dict) -> None:
    """Geometry and the backbone's rules of a converted folder against the config's model: never re-initialised."""
    for key in ("embed_dim", "depth", "patch_size", "grid", "qkv_bias", "attn_scale"):
        if key in ("qkv_bias", "attn_scale") and key not in meta:
            continue  # folders written before the rules were recorded: ViT-B's, checked by the arrays' shapes
        if meta.get(key) != want[key] and not (key == "attn_scale" and abs(meta[key] - want[key]) <= 1e-6 * want[key]):
            hint = (
                " (re-convert the original checkpoint with this config, or use --resize_pos when converting)"
                if key == "grid"
                else ""
            )
            raise WeightsError(
                f"{path}/{META_FILE}: {key}={meta.get(key)} but the config needs {key}={want[key]}{hint}"
            )


def _from_folder(
    path: str, model_cfg: Any, img_size: tuple[int, int], num_classes: int, num_cameras: int, rng: jax.Array
) -> dict:
    variables, meta = load_variables(path)
    model = build_model(model_cfg, img_size, num_classes, num_cameras)
    want = model_meta(model)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise WeightsError(f"{path}/{META_FILE}: kind={kind!r}, expected one of {KINDS}")
    _check_geometry(path, meta, want)  # whatever the kind
    if kind != "imagenet":
        for key, asked in (("num_classes", num_classes), ("num_cameras", num_cameras)):
            have = meta.get(key)
            if key == "num_cameras":  # compare what shapes the model: the SIE table rows
                have_rows = sie_rows(_Counts(int(have or 0), int(model.num_views)))
                if have_rows != sie_rows(model):
                    raise WeightsError(
                        f"{path}/{META_FILE}: trained with num_cameras={have} but {asked} were asked "
                        "for (the camera embedding cannot be reused; --config.model.pretrained_heads=reinit "
                        "re-initialises it)"
                    )
            elif have != asked:
                raise WeightsError(
                    f"{path}/{META_FILE}: trained with {key}={have} but {key}={asked} was asked for (to fine-tune "
                    "it on these identities: --config.model.pretrained_heads=reinit)"
                )
        return variables
    # ImageNet-only folder: keep backbone/b1/b2, re-initialise everything the counts shape.
    ref = variables_to_reference(variables)
    heads = init_heads(model, rng)
    ref = {k: v for k, v in ref.items() if k not in _head_keys(ref)}
    ref.update(heads)
    out, _ = reference_to_variables(ref, model, source=path)
    return out


class _Counts:
    """Just the two fields :func:`convert_weights.tmspr.sie_rows` reads."""

    def __init__(self, num_cameras: int, num_views: int):
        self.num_cameras, self.num_views = num_cameras, num_views


def _head_keys(ref: dict) -> set[str]:
    mods = set(CLASSIFIERS) | set(BOTTLENECKS) | {"linear_layer"}
    return {k for k in ref if k.split(".", 1)[0] in mods or k == "base.sie_embed"}

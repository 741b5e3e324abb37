"""Converted weights on disk: an orbax checkpoint of ``{'params', 'batch_stats'}`` plus ``meta.json``.

Layout of a weights folder ``DIR``::

    DIR/meta.json      num_classes, num_cameras, img_size, stride, patch_size, embed_dim, depth, num_heads, grid,
                       kind ('imagenet' | 'tmspr' | 'transreid'), source, conversion summary
    DIR/variables/     orbax StandardCheckpointer checkpoint of {'params', 'batch_stats'}

:func:`load_pretrained` turns any supported source (an ImageNet ViT ``.pth``/``.npz``/``.safetensors``, a trained
T-MSPR/TransReID ``.pth``, or such a folder) into full model variables for a given config.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import numpy as np

META_FILE = "meta.json"
VARIABLES_DIR = "variables"
KINDS = ("imagenet", "tmspr", "transreid")


class WeightsError(ValueError):
    """Weights cannot be used for the requested model; the message names the path, key and what was expected."""


def is_weights_folder(path: str) -> bool:
    """Whether ``path`` is a converted-weights folder (it has ``meta.json``), not a training workdir."""
    return os.path.isfile(os.path.join(os.path.expanduser(path), META_FILE))


def save_variables(path: str, variables: dict, meta: dict, *, overwrite: bool = False) -> None:
    """Write ``variables`` (``{'params', 'batch_stats'}``) as an orbax checkpoint and ``meta`` as ``meta.json``.

    ``path`` is a folder; an existing non-empty folder is an error unless ``overwrite``.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    missing = [c for c in ("params", "batch_stats") if c not in variables]
    if missing:
        raise WeightsError(f"save_variables({path!r}): variables lack collections {missing}")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise WeightsError(f"save_variables: {path!r} exists and is not empty; choose a new folder or overwrite")
    os.makedirs(path, exist_ok=True)
    tree = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    tree = jax.tree_util.tree_map(np.asarray, tree)  # host arrays: the file never depends on where they lived
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, VARIABLES_DIR), tree, force=overwrite)
    with open(os.path.join(path, META_FILE), "w") as f:
        json.dump(_jsonable(meta), f, indent=2, sort_keys=True)


def load_variables(path: str) -> tuple[dict, dict]:
    """Restore ``(variables, meta)`` from a folder written by :func:`save_variables`.

    Arrays are placed on the default device whatever sharding they were saved with, so a checkpoint written on GPU
    or TPU restores on a CPU-only machine.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    meta_file = os.path.join(path, META_FILE)
    ckpt_dir = os.path.join(path, VARIABLES_DIR)
    if not os.path.isfile(meta_file) or not os.path.isdir(ckpt_dir):
        raise WeightsError(f"{path!r} is not a converted-weights folder: expected {META_FILE} and {VARIABLES_DIR}/ "
                           "(written by python -m convert_weights or tmspr_jax.weights.save_variables)")
    with open(meta_file) as f:
        meta = json.load(f)
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    with ocp.StandardCheckpointer() as ckptr:
        tree_md = ckptr.metadata(ckpt_dir).item_metadata.tree
        abstract = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), tree_md)
        restored = ckptr.restore(ckpt_dir, abstract)
    variables = {"params": restored.get("params", {}), "batch_stats": restored.get("batch_stats", {})}
    return variables, meta


def model_meta(model: Any) -> dict[str, Any]:
    """The geometry/size fields of ``meta.json`` for a :class:`tmspr_jax.models.TMSPR`."""
    return {"num_classes": int(model.num_classes), "num_cameras": int(model.num_cameras),
            "img_size": [int(s) for s in model.img_size], "stride": [int(s) for s in model.stride],
            "patch_size": int(model.patch_size), "embed_dim": int(model.embed_dim), "depth": int(model.depth),
            "num_heads": int(model.num_heads), "mlp_ratio": float(model.mlp_ratio),
            "grid": [int(g) for g in model.grid]}


def refuse_local_mlp(model: Any, path: str) -> None:
    """The PyTorch ViTs have no depthwise convolution in their MLPs: a ``model.local_mlp`` model cannot take them."""
    if model.local_mlp:
        raise WeightsError(
            f"{path!r}: config.model.local_mlp=True adds depthwise convolutions that the ImageNet ViT and the "
            "reference's checkpoints do not have; it is for training from scratch (set it to False to load weights)")


def convert_file(path: str, model_cfg: Any, img_size: Sequence[int], rng: jax.Array, *,
                 num_classes: int | None = None, num_cameras: int | None = None, resize_pos: bool = False,
                 src_grid: tuple[int, int] | None = None, mode: str = "auto") -> tuple[dict, dict, Any]:
    """Convert a checkpoint file into ``(variables, meta, report)`` for the config.

    ``mode``: ``'timm'`` (ImageNet ViT, timm naming or vit_jax ``.npz``), ``'tmspr'`` (trained T-MSPR / TransReID
    JPM state dict), or ``'auto'`` (decided from the keys). For ``'timm'`` the heads are initialised from ``rng`` with
    ``num_classes`` / ``num_cameras`` (placeholders 1 / 0 when not given); for ``'tmspr'`` they are read from the
    checkpoint and checked against the given values.
    """
    from convert_weights.mapping import reference_to_variables
    from convert_weights.readers import CheckpointError, read_checkpoint
    from convert_weights.timm import is_timm_vit, is_vit_jax, timm_to_reference, vit_jax_to_timm
    from convert_weights.tmspr import default_counts, tmspr_to_reference
    from tmspr_jax.models import build_model

    img_size = tuple(int(s) for s in img_size)
    # Refused before the file is read and converted (a ViT-B checkpoint is 350 MB); building the module is cheap.
    refuse_local_mlp(build_model(model_cfg, img_size, 1, 0), path)
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
                f"{sorted(state)[:8]}...")
        n_cls, n_cam = default_counts(num_classes, num_cameras)
        model = build_model(model_cfg, img_size, n_cls, n_cam)
        ref, report = timm_to_reference(state, model, rng, source=path)
        kind = "imagenet"
    elif mode == "tmspr":
        ref, report, kind, model = tmspr_to_reference(
            state, model_cfg, img_size, rng, source=path, num_classes=num_classes, num_cameras=num_cameras,
            resize_pos=resize_pos, src_grid=src_grid)
    else:
        raise ValueError(f"convert_file: mode={mode!r}, expected 'timm', 'tmspr' or 'auto'")
    variables, _ = reference_to_variables(ref, model, source=path)
    meta = {**model_meta(model), "kind": kind, "source": os.path.abspath(path), "conversion": report.to_meta()}
    if kind == "imagenet":
        meta["heads"] = ("placeholder: classes/cameras not given, heads re-initialised when loaded"
                         if num_classes is None or num_cameras is None else "initialised")
    return variables, meta, report


def load_pretrained(path: str, model_cfg: Any, img_size: Sequence[int], num_classes: int, num_cameras: int,
                    rng: jax.Array) -> dict:
    """Full ``{'params', 'batch_stats'}`` for ``build_model(model_cfg, img_size, num_classes, num_cameras)``.

    ``path``: an ImageNet ViT ``.pth``/``.npz``/``.safetensors`` (converted on the fly, heads initialised from
    ``rng`` as the reference does), a trained T-MSPR/TransReID ``.pth`` (counts checked), or a converted folder. A
    folder of kind ``'imagenet'`` keeps its backbone, b1 and b2 and gets fresh heads for these counts; other kinds
    must match ``num_classes``, ``num_cameras`` and the grid, else :class:`WeightsError` names both values.
    """
    from convert_weights.readers import is_weight_file

    img_size = tuple(int(s) for s in img_size)
    if os.path.isdir(path):
        return _from_folder(path, model_cfg, img_size, int(num_classes), int(num_cameras), rng)
    if is_weight_file(path):
        variables, _, _ = convert_file(path, model_cfg, img_size, rng, num_classes=num_classes,
                                       num_cameras=num_cameras)
        return variables
    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained weights not found: {path!r}")
    raise WeightsError(f"{path!r}: expected a .pth/.npz/.safetensors file or a converted-weights folder")


def _from_folder(path: str, model_cfg: Any, img_size: tuple[int, int], num_classes: int, num_cameras: int,
                 rng: jax.Array) -> dict:
    from convert_weights.mapping import reference_to_variables, variables_to_reference
    from convert_weights.tmspr import init_heads, sie_rows
    from tmspr_jax.models import build_model

    variables, meta = load_variables(path)
    model = build_model(model_cfg, img_size, num_classes, num_cameras)
    refuse_local_mlp(model, path)
    want = model_meta(model)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise WeightsError(f"{path}/{META_FILE}: kind={kind!r}, expected one of {KINDS}")
    # Geometry must match whatever the kind: these shapes are never re-initialised.
    for key in ("embed_dim", "depth", "patch_size", "grid"):
        if meta.get(key) != want[key]:
            hint = (" (re-convert the original checkpoint with this config, or use --resize_pos when converting)"
                    if key == "grid" else "")
            raise WeightsError(f"{path}/{META_FILE}: {key}={meta.get(key)} but the config needs {key}={want[key]}"
                               f"{hint}")
    if kind != "imagenet":
        for key, asked in (("num_classes", num_classes), ("num_cameras", num_cameras)):
            have = meta.get(key)
            if key == "num_cameras":  # compare what shapes the model: the SIE table rows
                have_rows = sie_rows(_Counts(int(have or 0), int(model.num_views)))
                if have_rows != sie_rows(model):
                    raise WeightsError(f"{path}/{META_FILE}: trained with num_cameras={have} but {asked} were asked "
                                       "for (the camera embedding cannot be reused)")
            elif have != asked:
                raise WeightsError(f"{path}/{META_FILE}: trained with {key}={have} but {key}={asked} was asked for")
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
    from convert_weights.tmspr import BOTTLENECKS, CLASSIFIERS

    mods = set(CLASSIFIERS) | set(BOTTLENECKS) | {"linear_layer"}
    return {k for k in ref if k.split(".", 1)[0] in mods or k == "base.sie_embed"}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj

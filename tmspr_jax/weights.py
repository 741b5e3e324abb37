"""Converted weights on disk: an orbax checkpoint of ``{'params', 'batch_stats'}`` plus ``meta.json``.

Layout of a weights folder ``DIR``::

    DIR/meta.json      num_classes, num_cameras, img_size, stride, patch_size, embed_dim, depth, num_heads, grid,
                       backbone, qkv_bias, attn_scale,
                       kind ('imagenet' | 'tmspr' | 'transreid'), source, conversion summary
    DIR/variables/     orbax StandardCheckpointer checkpoint of {'params', 'batch_stats'}

This module only writes and reads such folders; turning PyTorch / JAX checkpoints into them (and loading a folder into
a model of other class counts) is the job of the ``convert_weights`` package, which imports this one, never the
other way round.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from tmspr_jax.utils import jsonable

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
        json.dump(jsonable(meta), f, indent=2, sort_keys=True)


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
        raise WeightsError(
            f"{path!r} is not a converted-weights folder: expected {META_FILE} and {VARIABLES_DIR}/ "
            "(written by python -m convert_weights or tmspr_jax.weights.save_variables)"
        )
    with open(meta_file) as f:
        meta = json.load(f)
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    with ocp.StandardCheckpointer() as ckptr:
        tree_md = ckptr.metadata(ckpt_dir).item_metadata.tree
        abstract = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), tree_md
        )
        restored = ckptr.restore(ckpt_dir, abstract)
    variables = {"params": restored.get("params", {}), "batch_stats": restored.get("batch_stats", {})}
    return variables, meta


def model_meta(model: Any) -> dict[str, Any]:
    """The geometry/size fields of ``meta.json`` for a :class:`tmspr_jax.models.TMSPR`."""
    return {
        "num_classes": int(model.num_classes),
        "num_cameras": int(model.num_cameras),
        "img_size": [int(s) for s in model.img_size],
        "stride": [int(s) for s in model.stride],
        "patch_size": int(model.patch_size),
        "embed_dim": int(model.embed_dim),
        "depth": int(model.depth),
        "num_heads": int(model.num_heads),
        "mlp_ratio": float(model.mlp_ratio),
        "grid": [int(g) for g in model.grid],
        # the backbone's shape rules (models.vit.BACKBONES): a qkv bias or not, the attention scale
        "backbone": str(model.backbone_type),
        "qkv_bias": bool(model.qkv_bias),
        "attn_scale": float(model.attn_scale),
    }


# The fields of meta.json that shape the model's arrays, and where the config sets each.
SIZE_KEYS = {
    "depth": "model.depth",
    "embed_dim": "model.embed_dim",
    "num_heads": "model.num_heads",
    "mlp_ratio": "model.mlp_ratio",
    "patch_size": "model.patch_size",
    "qkv_bias": "model.backbone",
    "attn_scale": "model.backbone",
    "grid": "img_size and model.stride",
    "num_classes": "the identities of data.train",
    "num_cameras": "the cameras of data.train with model.sie_camera",
}


def check_model_size(meta: Mapping[str, Any], model: Any, where: str) -> None:
    """Refuses weights of another model size before any array is read: one line naming the key and both values.

    ``meta`` is a ``meta.json`` (or the size saved beside a training checkpoint); keys it lacks are not compared.
    Cameras are compared by the rows of the camera table they make (0 or 1 camera: no table).
    """
    from tmspr_jax.models.vit import sie_table_rows

    want = model_meta(model)
    for key, source in SIZE_KEYS.items():
        if key not in meta:
            continue
        have = meta[key]
        if key == "num_cameras":
            views = int(getattr(model, "num_views", 0))
            same = sie_table_rows(int(have or 0), views) == sie_table_rows(want[key], views)
        elif isinstance(want[key], list):
            same = [int(v) for v in have] == want[key]
        elif key == "attn_scale":  # written through JSON: equal to float rounding
            same = abs(float(have) - want[key]) <= 1e-6 * want[key]
        else:
            same = float(have) == float(want[key])
        if not same:
            raise WeightsError(
                f"{where}: {key}={have} in the checkpoint but {key}={want[key]} for the config "
                f"(from {source}): a checkpoint of another model size"
            )


def fine_tune_start(source: Mapping[str, Any], fresh: Mapping[str, Any], where: str) -> tuple[dict, list, list]:
    """The variables a fine-tuning run starts from, and what was kept and re-initialised (module names).

    ``source``: a trained model's ``{'params', 'batch_stats'}`` (other identities or cameras); ``fresh``: the new
    model's initialisation. Kept from ``source``: the backbone, b1, b2, the part head and every BNNeck (parameters
    and running statistics); from ``fresh``: every classifier (new identities), and the SIE camera table when its
    rows differ (other cameras). Any other difference is one :class:`WeightsError` naming the parameter.
    """
    src, new = source["params"], fresh["params"]
    extra = sorted(set(src) - set(new))
    missing = sorted(k for k in set(new) - set(src) if not k.startswith("classifier"))
    if extra or missing:
        raise WeightsError(
            f"{where}: not the same model apart from its classifiers: modules only in the checkpoint {extra}, only in "
            f"the config's model {missing} (model.multi_view / perception / recovery must match the checkpoint's)"
        )
    params: dict[str, Any] = {}
    kept: list[str] = []
    reinit: list[str] = []
    for name, sub in new.items():
        if name.startswith("classifier"):
            params[name] = sub
            reinit.append(name)
            continue
        params[name] = dict(src[name])
        kept.append(name)
    backbone = params["backbone"]
    have, want = src["backbone"].get("sie_embed"), new["backbone"].get("sie_embed")
    if (have is None) != (want is None) or (have is not None and np.shape(have) != np.shape(want)):
        backbone.pop("sie_embed", None)
        if want is not None:
            backbone["sie_embed"] = want
        reinit.append("backbone/sie_embed")
    out = {"params": params, "batch_stats": source["batch_stats"]}
    flat_out = dict(jax.tree_util.tree_flatten_with_path(out)[0])
    flat_new = dict(jax.tree_util.tree_flatten_with_path({"params": new, "batch_stats": fresh["batch_stats"]})[0])
    wrong = [
        f"{jax.tree_util.keystr(k)}: {np.shape(flat_out.get(k))} in the checkpoint, {np.shape(v)} in the model"
        for k, v in flat_new.items()
        if k not in flat_out or np.shape(flat_out[k]) != np.shape(v)
    ]
    if wrong or len(flat_out) != len(flat_new):
        raise WeightsError(f"{where}: kept parameters of another shape: {'; '.join(wrong[:3]) or 'other leaves'}")
    return out, kept, reinit

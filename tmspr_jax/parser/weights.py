"""A converted parser folder on disk (written by ``python -m convert_weights schp``)::

    DIR/meta.json       kind 'schp', arch (widths and depths), num_classes, dataset, input_size, labels, source
    DIR/variables.npz   {'params/<path>', 'batch_stats/<path>'} float32 arrays, paths as in tmspr_jax.parser.network

A plain array archive: loading needs no model structure to restore into, and nothing but NumPy.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from tmspr_jax.parser.network import Arch
from tmspr_jax.utils import read_npz

META_FILE = "meta.json"
VARIABLES_FILE = "variables.npz"
KIND = "schp"

# SCHP's simple_extractor.py dataset_settings, keyed by the checkpoint's class count.
DATASETS: dict[int, dict[str, Any]] = {
    20: {
        "dataset": "lip",
        "input_size": (473, 473),
        "labels": (
            "Background",
            "Hat",
            "Hair",
            "Glove",
            "Sunglasses",
            "Upper-clothes",
            "Dress",
            "Coat",
            "Socks",
            "Pants",
            "Jumpsuits",
            "Scarf",
            "Skirt",
            "Face",
            "Left-arm",
            "Right-arm",
            "Left-leg",
            "Right-leg",
            "Left-shoe",
            "Right-shoe",
        ),
    },
    18: {
        "dataset": "atr",
        "input_size": (512, 512),
        "labels": (
            "Background",
            "Hat",
            "Hair",
            "Sunglasses",
            "Upper-clothes",
            "Skirt",
            "Pants",
            "Dress",
            "Belt",
            "Left-shoe",
            "Right-shoe",
            "Face",
            "Left-leg",
            "Right-leg",
            "Left-arm",
            "Right-arm",
            "Bag",
            "Scarf",
        ),
    },
    7: {
        "dataset": "pascal",
        "input_size": (512, 512),
        "labels": ("Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs"),
    },
}


def dataset_settings(num_classes: int) -> dict[str, Any]:
    """SCHP's settings for a class count; an unknown count gets LIP's 473x473 input and numbered labels."""
    if num_classes in DATASETS:
        return dict(DATASETS[num_classes])
    return {"dataset": None, "input_size": (473, 473), "labels": tuple(f"class_{i}" for i in range(num_classes))}


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = np.asarray(v)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def save_parser(path: str, variables: dict, meta: dict, *, overwrite: bool = False) -> None:
    """Writes ``variables`` (``{'params', 'batch_stats'}``) and ``meta`` into the folder ``path``."""
    path = os.path.abspath(path)
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise ValueError(f"{path!r} exists and is not empty; choose a new folder or pass --overwrite")
    os.makedirs(path, exist_ok=True)
    flat = _flatten({c: variables[c] for c in ("params", "batch_stats")})
    tmp = os.path.join(path, VARIABLES_FILE + ".tmp.npz")
    np.savez(tmp, **{k: v.astype(np.float32) for k, v in flat.items()})
    os.replace(tmp, os.path.join(path, VARIABLES_FILE))
    with open(os.path.join(path, META_FILE), "w") as f:
        json.dump({**meta, "kind": KIND}, f, indent=2, sort_keys=True)


def load_parser(path: str) -> tuple[Arch, dict, dict]:
    """``(arch, variables, meta)`` from a folder written by :func:`save_parser`; anything else is a clear error."""
    path = os.path.abspath(os.path.expanduser(path))
    meta_file, var_file = os.path.join(path, META_FILE), os.path.join(path, VARIABLES_FILE)
    if not os.path.isfile(meta_file) or not os.path.isfile(var_file):
        raise FileNotFoundError(
            f"{path!r} is not a converted parser folder: expected {META_FILE} and {VARIABLES_FILE} (write one with "
            "`python -m convert_weights schp exp-schp-201908261155-lip.pth --out DIR`)"
        )
    with open(meta_file) as f:
        meta = json.load(f)
    if meta.get("kind") != KIND:
        raise ValueError(f"{meta_file}: kind is {meta.get('kind')!r}, expected {KIND!r} (a human-parser folder)")
    hint = "convert the parser again (python -m convert_weights schp ...)"
    variables = _unflatten(read_npz(var_file, what="parser weights file", hint=hint))
    return Arch.from_dict(meta["arch"]), variables, meta

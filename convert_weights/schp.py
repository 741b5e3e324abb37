"""SCHP human-parser checkpoints (``exp-schp-201908261155-lip.pth`` and its ATR / Pascal siblings) -> a parser
folder for :mod:`tmspr_jax.parser` (``python -m convert_weights schp SRC.pth --out DIR``).

SCHP saves ``{'state_dict': {'module.<key>': tensor}, ...}``; ``convert_weights.readers.read_checkpoint`` removes the
wrapper and the prefix. The architecture (depths, widths, class count) is read from the shapes; every key must then be
a variable of that Flax network with the matching shape, and every variable must have a key: one missing, unknown or
mis-shaped key is an error naming it. Conv weights ``[out, in, kh, kw]`` become kernels ``[kh, kw, in, out]``;
``InPlaceABNSync`` weight / bias / running_mean / running_var become scale / bias / mean / var (the kernel's
``|weight| + eps`` is applied by the network, so the stored weight keeps its sign).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from convert_weights.readers import CheckpointError, read_checkpoint

# Keys a checkpoint may carry that the inference network has no use for, with the reason.
SKIPPED = ((re.compile(r"(^|\.)num_batches_tracked$"), "batch-norm step counter (training only)"),)

_LEAF = {  # torch leaf name, ndim -> (collection, flax leaf)
    ("weight", 4): ("params", "kernel"),
    ("weight", 1): ("params", "scale"),
    ("bias", 1): ("params", "bias"),
    ("running_mean", 1): ("batch_stats", "mean"),
    ("running_var", 1): ("batch_stats", "var"),
}


def _need(state: dict[str, np.ndarray], key: str, source: str, why: str) -> np.ndarray:
    if key not in state:
        raise CheckpointError(f"{source!r}: missing key {key!r} ({why}); is this an SCHP AugmentCE2P checkpoint?")
    return state[key]


def infer_arch(state: dict[str, np.ndarray], source: str = "<checkpoint>"):
    """The :class:`tmspr_jax.parser.network.Arch` whose variables the checkpoint holds, read from its shapes."""
    from tmspr_jax.parser.network import Arch

    def out_ch(key: str, why: str) -> int:
        return int(_need(state, key, source, why).shape[0])

    layers = []
    for i in range(1, 5):
        n = 0
        while f"layer{i}.{n}.conv1.weight" in state:
            n += 1
        if n == 0:
            _need(state, f"layer{i}.0.conv1.weight", source, f"stage {i} of the ResNet")
        layers.append(n)
    return Arch(
        num_classes=out_ch("fushion.3.weight", "the fusion head's classifier gives the class count"),
        layers=tuple(layers),
        stem=tuple(out_ch(f"conv{k}.weight", "the stem") for k in (1, 2, 3)),
        planes=tuple(out_ch(f"layer{i}.0.conv1.weight", f"stage {i}") for i in range(1, 5)),
        psp=out_ch("context_encoding.bottleneck.0.weight", "the PSP module"),
        decoder=tuple(out_ch(f"decoder.conv{k}.0.weight", "the decoder") for k in (1, 2, 3)),
        edge=out_ch("edge.conv1.0.weight", "the edge branch"),
        edge_classes=out_ch("edge.conv4.weight", "the edge branch"),
        fusion=out_ch("fushion.0.weight", "the fusion head"),
    )


def expected_shapes(arch: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    """``{(collection, *path): shape}`` of every variable of the Flax network for ``arch``."""
    import jax
    import jax.numpy as jnp

    from tmspr_jax.parser.network import AugmentCE2P

    shapes = jax.eval_shape(AugmentCE2P(arch).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
    out: dict[tuple[str, ...], tuple[int, ...]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        out[tuple(p.key for p in path)] = tuple(leaf.shape)
    return out


def convert_state(state: dict[str, np.ndarray], source: str = "<checkpoint>") -> tuple[dict, dict, list[str]]:
    """SCHP state dict (prefix removed) -> ``(variables, meta, report lines)``; strict, errors name the key."""
    from tmspr_jax.parser.network import torch_key_to_path
    from tmspr_jax.parser.weights import dataset_settings

    arch = infer_arch(state, source)
    want = expected_shapes(arch)
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    used: set[tuple[str, ...]] = set()
    skipped: dict[str, list[str]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        reason = next((why for pat, why in SKIPPED if pat.search(key)), None)
        if reason is not None:
            skipped.setdefault(reason, []).append(key)
            continue
        value = np.asarray(value)
        *mods, leaf = torch_key_to_path(key)
        target = _LEAF.get((leaf, value.ndim))
        if target is None or not mods:
            unknown.append(key)
            continue
        coll, name = target
        path = (coll, *mods, name)
        if path not in want:
            unknown.append(key)
            continue
        if name == "kernel":
            value = value.transpose(2, 3, 1, 0)
        if tuple(value.shape) != want[path]:
            shown = tuple(np.asarray(state[key]).shape)
            expect = want[path] if name != "kernel" else tuple(want[path][i] for i in (3, 2, 0, 1))
            raise CheckpointError(f"{source!r}: key {key!r} has shape {shown}, expected {expect} for {arch}")
        node = variables[coll]
        for m in mods:
            node = node.setdefault(m, {})
        node[name] = np.ascontiguousarray(value, np.float32)
        used.add(path)
    if unknown:
        raise CheckpointError(
            f"{source!r}: unknown key(s) for SCHP's AugmentCE2P: {sorted(unknown)[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}"
        )
    missing = sorted(set(want) - used)
    if missing:
        names = [_torch_name(p) for p in missing]
        raise CheckpointError(
            f"{source!r}: missing key(s) for SCHP's AugmentCE2P: {names[:10]}{' ...' if len(names) > 10 else ''}"
        )
    settings = dataset_settings(arch.num_classes)
    meta = {
        "arch": arch.to_dict(),
        "num_classes": arch.num_classes,
        "dataset": settings["dataset"],
        "input_size": list(settings["input_size"]),
        "labels": list(settings["labels"]),
        "source": source,
    }
    n = sum(int(np.prod(s)) for s in want.values())
    report = [
        f"converted {len(used)} tensors ({n:,} values): layers {list(arch.layers)}, "
        f"{arch.num_classes} classes ({settings['dataset'] or 'unknown dataset'}), input "
        f"{settings['input_size'][0]}x{settings['input_size'][1]}"
    ]
    for reason, keys in skipped.items():
        report.append(f"skipped {len(keys)} key(s): {reason} (e.g. {keys[0]})")
    return variables, meta, report


def _torch_name(path: tuple[str, ...]) -> str:
    """``('params', 'layer1_0', 'conv1', 'kernel')`` -> ``layer1.0.conv1.weight`` (for error messages)."""
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    mods = [re.sub(r"_(\d+)", r".\1", m) for m in path[1:-1]]
    return ".".join(mods + [leaf[path[-1]]])


def convert_file(path: str, out: str, *, overwrite: bool = False) -> list[str]:
    """Reads an SCHP ``.pth``, converts it and writes the parser folder ``out``; returns the report lines."""
    import os

    from tmspr_jax.parser.weights import save_parser

    variables, meta, report = convert_state(read_checkpoint(path), source=os.path.abspath(path))
    save_parser(out, variables, meta, overwrite=overwrite)
    return report

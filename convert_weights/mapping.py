"""Reference (PyTorch) state-dict names <-> Flax variables of :class:`tmspr_jax.models.TMSPR` (NumPy only).

The parameter tree is the contract in docs/interfaces.md. Layout conversions: Linear ``[out,in]`` -> kernel
``[in,out]``; Conv ``OIHW`` -> ``HWIO``; LayerNorm/BatchNorm ``weight`` -> ``scale``; BatchNorm ``running_mean/var`` ->
``batch_stats`` ``mean/var``. The BNNeck bias is frozen at 0 in the reference and absent in the port, so a non-zero
bias is an error; ``num_batches_tracked`` is ignored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

_BN_IGNORED = ("num_batches_tracked",)


@dataclasses.dataclass
class MappingReport:
    """What :func:`reference_to_variables` did: ``converted`` (reference key, Flax path) and ``ignored`` (key, why)."""

    converted: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)


SHOWN = 5  # keys listed per kind of problem in an error message; the count gives the rest


class MappingError(ValueError):
    """The reference state dict does not match the model (missing / unexpected keys, wrong shapes, bad values)."""


def _module_prefix(path: tuple[str, ...]) -> str:
    """Flax module path -> reference module name."""
    out: list[str] = []
    for i, seg in enumerate(path):
        if seg == "backbone":
            out.append("base")
        elif seg == "patch_embed":
            out.append("patch_embed.proj")
        elif (m := re.fullmatch(r"blocks_(\d+)", seg)) is not None:
            out.append(f"blocks.{m.group(1)}")
        elif seg == "block" and i > 0 and path[i - 1] in ("b1", "b2"):
            out.append("0")
        elif seg == "norm" and i > 0 and path[i - 1] in ("b1", "b2"):
            out.append("1")
        elif seg == "part_head":
            out.append("linear_layer")
        else:
            out.append(seg)
    return ".".join(out)


def _ref_name(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """(reference key, kind) for one Flax leaf; kind selects the layout conversion."""
    *mod, leaf = path
    prefix = _module_prefix(tuple(mod))
    if collection == "batch_stats":
        table = {"mean": "running_mean", "var": "running_var"}
        if leaf not in table:
            raise MappingError(f"unknown batch_stats leaf {'/'.join(path)!r}")
        return f"{prefix}.{table[leaf]}", "copy"
    if not mod:  # top-level arrays (none today) keep their names
        return leaf, "copy"
    if leaf in ("cls_token", "pos_embed", "sie_embed"):
        return f"{prefix}.{leaf}" if prefix else leaf, "copy"
    if leaf == "kernel":
        return f"{prefix}.weight", "kernel"
    if leaf == "scale":
        return f"{prefix}.weight", "copy"
    if leaf == "bias":
        return f"{prefix}.bias", "copy"
    raise MappingError(f"no reference name for Flax leaf {collection}/{'/'.join(path)}")


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for seg in path[:-1]:
            d = d.setdefault(seg, {})
        d[path[-1]] = v
    return out


def _to_flax(kind: str, arr: np.ndarray) -> np.ndarray:
    if kind == "kernel":
        if arr.ndim == 4:  # conv OIHW -> HWIO
            return np.transpose(arr, (2, 3, 1, 0))
        if arr.ndim == 2:  # linear [out, in] -> [in, out]
            return arr.T
        raise MappingError(f"kernel with {arr.ndim} dims, expected 2 (Linear) or 4 (Conv)")
    return arr


def _to_ref(kind: str, arr: np.ndarray) -> np.ndarray:
    if kind == "kernel":
        if arr.ndim == 4:  # HWIO -> OIHW
            return np.transpose(arr, (3, 2, 0, 1))
        return arr.T
    return arr


def _bn_modules(flat_stats: Mapping[tuple[str, ...], Any]) -> list[tuple[str, ...]]:
    return sorted({p[:-1] for p in flat_stats})


def _target_shapes(model: Any, batch_size: int) -> dict:
    import jax

    from tmspr_jax.models.tmspr import init_variables

    shapes = jax.eval_shape(lambda r: init_variables(model, r, batch_size), jax.random.key(0))
    return {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}


def reference_to_variables(
    state: Mapping[str, Any], model: Any, *, batch_size: int = 2, source: str = "state dict"
) -> tuple[dict, MappingReport]:
    """Map a flat reference-named dict of arrays to ``{'params', 'batch_stats'}`` for ``model`` (strict).

    ``state`` must already be stripped of the reference's unused modules
    (``convert_weights.tmspr.strip_unused``). Every target leaf must be filled, every source key used, and every
    shape match; errors name the keys (and ``source``). ``model`` may also be a ``{'params', 'batch_stats'}`` tree of
    arrays or shape structs giving the target shapes. Returns the variables as float32 NumPy arrays and a report.
    """
    if isinstance(model, Mapping):
        target = {"params": model["params"], "batch_stats": model.get("batch_stats", {})}
    else:
        target = _target_shapes(model, batch_size)
    report = MappingReport()
    used: set[str] = set()
    missing: list[str] = []
    bad_shape: list[str] = []
    out: dict[str, dict] = {}
    for collection in ("params", "batch_stats"):
        flat = _flatten(target[collection])
        conv: dict[tuple[str, ...], np.ndarray] = {}
        for path, leaf in flat.items():
            key, kind = _ref_name(collection, path)
            dst = f"{collection}/{'/'.join(path)}"
            if key not in state:
                missing.append(f"{key} (for {dst})")
                continue
            arr = np.asarray(state[key])
            want = tuple(leaf.shape)
            ref_shape = tuple(_to_ref(kind, np.empty(want, np.float32)).shape)
            if tuple(arr.shape) != ref_shape:
                bad_shape.append(f"{key}: got {tuple(arr.shape)}, expected {ref_shape} (for {dst} {want})")
                continue
            conv[path] = np.ascontiguousarray(_to_flax(kind, arr.astype(np.float32)))
            used.add(key)
            report.converted.append((key, dst))
        out[collection] = _unflatten(conv)
        if collection == "batch_stats":
            for mod in _bn_modules(flat):
                prefix = _module_prefix(mod)
                bias_key = f"{prefix}.bias"
                if bias_key not in state:
                    missing.append(f"{bias_key} (BNNeck bias, must be present and all zeros)")
                else:
                    bias = np.asarray(state[bias_key])
                    if bias.shape != (flat[mod + ("mean",)].shape[0],):
                        bad_shape.append(f"{bias_key}: got {bias.shape}, expected {(flat[mod + ('mean',)].shape[0],)}")
                    elif np.any(bias != 0):
                        raise MappingError(
                            f"{source}: {bias_key} is not all zeros (max |bias| = {np.abs(bias).max():.3g}); the port "
                            "freezes the BNNeck bias at 0 as the reference does, so this checkpoint cannot be mapped"
                        )
                    used.add(bias_key)
                    report.ignored.append((bias_key, "BNNeck bias, frozen at 0 (checked all zeros)"))
                for name in _BN_IGNORED:
                    key = f"{prefix}.{name}"
                    if key in state:
                        used.add(key)
                        report.ignored.append((key, "BatchNorm counter, not used by the port"))
    unexpected = sorted(set(state) - used)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + first_few(missing, ", "))
    if unexpected:
        problems.append(
            f"unexpected keys ({len(unexpected)}): "
            + first_few(unexpected, ", ")
            + " (strip the reference's unused modules with convert_weights.tmspr.strip_unused first)"
        )
    if bad_shape:
        problems.append(f"wrong shapes ({len(bad_shape)}): " + first_few(bad_shape, "; "))
    if problems:
        raise MappingError(f"{source} does not match the model:\n  " + "\n  ".join(problems))
    return out, report


def first_few(items: list[str], sep: str, n: int = SHOWN) -> str:
    """The first ``n`` items joined by ``sep``, then how many more (a model of another size mismatches every key)."""
    more = f"{sep}... and {len(items) - n} more" if len(items) > n else ""
    return sep.join(items[:n]) + more


def variables_to_reference(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of :func:`reference_to_variables`: Flax variables -> reference-named NumPy arrays.

    BNNeck biases are written as zeros and ``num_batches_tracked`` as 0, so the result loads strictly into the
    oracle (``tmspr_jax.oracles.tmspr.TorchTMSPR``).
    """
    out: dict[str, np.ndarray] = {}
    for collection in ("params", "batch_stats"):
        flat = _flatten(variables.get(collection, {}))
        for path, leaf in flat.items():
            key, kind = _ref_name(collection, path)
            out[key] = np.ascontiguousarray(_to_ref(kind, np.asarray(leaf, dtype=np.float32)))
        if collection == "batch_stats":
            for mod in _bn_modules(flat):
                prefix = _module_prefix(mod)
                out[f"{prefix}.bias"] = np.zeros_like(out[f"{prefix}.running_mean"])
                out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    return out

"""Read checkpoint files into a flat ``{name: np.ndarray}`` dict.

Supported: PyTorch ``.pth``/``.pt``/``.bin`` (needs torch), ``.safetensors`` and ``.npz`` (no torch needed).
Wrappers (``model`` / ``state_dict``) and a DataParallel ``module.`` prefix are removed by :func:`unwrap`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar")
SAFETENSORS_SUFFIXES = (".safetensors",)
NPZ_SUFFIXES = (".npz",)
SUPPORTED_SUFFIXES = TORCH_SUFFIXES + SAFETENSORS_SUFFIXES + NPZ_SUFFIXES

# Keys that wrap the real state dict in training checkpoints (outermost first).
_WRAPPER_KEYS = ("state_dict", "model", "module")


class CheckpointError(ValueError):
    """A checkpoint file cannot be converted; the message names the file/key and what was expected."""


def is_weight_file(path: str) -> bool:
    """True when ``path`` names a file in one of the supported weight formats (by suffix)."""
    return os.path.isfile(path) and path.lower().endswith(SUPPORTED_SUFFIXES)


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Read ``path`` into a flat dict of NumPy arrays, wrappers and ``module.`` prefixes removed."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    lower = path.lower()
    if lower.endswith(NPZ_SUFFIXES):
        raw = _read_npz(path)
    elif lower.endswith(SAFETENSORS_SUFFIXES):
        raw = _read_safetensors(path)
    elif lower.endswith(TORCH_SUFFIXES):
        raw = _read_torch(path)
    else:
        raise CheckpointError(f"{path!r}: unknown checkpoint format; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    return unwrap(raw, source=path)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    from tmspr_jax.utils import read_npz

    try:
        return read_npz(path, what=".npz checkpoint")
    except ValueError as e:  # truncated or damaged: one line naming the file
        raise CheckpointError(str(e)) from None


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # safetensors raises its own SafetensorError / OSError
        raise CheckpointError(f"{path!r}: cannot read as .safetensors ({e})") from e


def _read_torch(path: str) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path!r}: reading a PyTorch .pth checkpoint needs torch, which is not installed. Install the "
            "[torch] extra (pip install 'tmspr_jax[torch]') or convert the .npz / .safetensors form of the "
            "same weights instead."
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, disallowed globals
        raise CheckpointError(_torch_load_error(path, e)) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path!r}: expected a state dict (a mapping), got {type(obj).__name__}")
    return _tensors_to_numpy(obj, path)


def _tensors_to_numpy(obj: Mapping[str, Any], path: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            # NumPy has no bfloat16: widen (lossless) so the values survive.
            if t.dtype == torch.bfloat16:
                t = t.float()
            out[k] = t.numpy()
        elif isinstance(v, Mapping):
            out[k] = _tensors_to_numpy(v, path)
        else:
            out[k] = v
    return out


def unwrap(obj: Mapping[str, Any], source: str = "<checkpoint>") -> dict[str, np.ndarray]:
    """Unwrap ``{'state_dict': ...}`` / ``{'model': ...}`` and strip a ``module.`` prefix shared by all keys.

    Every remaining value must be an array: a training checkpoint's extra entries (optimizer state, epoch) live
    beside the wrapper key and are dropped with it; anything else non-array is an error naming the key.
    """
    cur: Mapping[str, Any] = obj
    while True:
        wrapper = next((w for w in _WRAPPER_KEYS if isinstance(cur.get(w), Mapping)), None)
        if wrapper is None:
            break
        cur = cur[wrapper]
    bad = [k for k, v in cur.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(
            f"{source!r}: entries {bad[:10]} are not arrays (types "
            f"{sorted({type(cur[k]).__name__ for k in bad})}); expected a flat state dict, optionally wrapped in "
            f"{' / '.join(repr(w) for w in _WRAPPER_KEYS)}"
        )
    state = {str(k): v for k, v in cur.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if not state:
        raise CheckpointError(f"{source!r}: the checkpoint holds no tensors")
    return state


def _torch_load_error(path: str, e: Exception) -> str:
    """One line for a ``.pth`` that ``torch.load(weights_only=True)`` refuses. torch's own message advises
    ``weights_only=False``, which runs code from the file: that advice is not passed on."""
    text = str(e)
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe or "weights_only" in text.lower() or "Weights only load failed" in text:
        what = f"a pickled {unsafe.group(1)} object" if unsafe else "pickled objects"
        return (
            f"{path!r}: holds {what} besides tensors, and loading it would run code from the file. Save only its "
            "state_dict of tensors (from a copy you trust), or convert its .npz / .safetensors form."
        )
    first = " ".join(text.strip().splitlines()[0].split())[:200] if text.strip() else type(e).__name__
    return f"{path!r}: cannot read as a PyTorch checkpoint ({first})"

"""Small helpers shared by every layer: square-or-pair values, the patch grid, L2 normalisation,
JSON conversion, reading ``.npz`` files whole and one-line command-line errors.

This is the lowest layer of the package (see ``[tool.importlinter]`` in pyproject.toml): it imports no other
``tmspr_jax`` module, so data, models, losses, training and the tools can all use it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------------- config values


def pair(value: Any, name: str) -> tuple[int, int]:
    """``(a, b)`` from a pair, or ``(v, v)`` from one number (``12``, ``(12,)`` or ``'12'``).

    ``--config.model.stride=12`` reaches a tuple field as ``(12,)``; a single number means a square stride (or size)
    everywhere. Anything else is a :class:`ValueError` naming ``name``.
    """
    if isinstance(value, str):
        value = [v for v in value.replace("x", ",").split(",") if v.strip()]
    values = list(value) if isinstance(value, Sequence | np.ndarray) else [value]
    try:
        ints = [int(v) for v in values]
        if any(int(v) != float(v) for v in values):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected one whole number or two (y, x)") from None
    if len(ints) == 1:
        return ints[0], ints[0]
    if len(ints) != 2:
        raise ValueError(f"{name}={tuple(values)!r}: expected one number or two (y, x), got {len(ints)}")
    return ints[0], ints[1]


# ---------------------------------------------------------------------------------------------------- geometry


def patch_grid(img_size: Sequence[int], patch: int, stride: Sequence[int] | int) -> tuple[int, int]:
    """Number of patch rows and columns, ``(gh, gw)``, of the overlapping patch embedding.

    ``gh = (H - patch) // stride_y + 1`` and ``gw = (W - patch) // stride_x + 1``; the single source of truth for the
    grid (docs/interfaces.md). ``stride`` may be one number (a square stride).
    """
    if len(img_size) != 2:
        raise ValueError(f"patch_grid: expected img_size=(H, W), got img_size={tuple(img_size)!r}")
    h, w = (int(v) for v in img_size)
    sy, sx = pair(stride, "stride")
    patch = int(patch)
    if patch < 1 or sy < 1 or sx < 1:
        raise ValueError(f"patch_grid: patch ({patch}) and stride ({sy}, {sx}) must be >= 1")
    if h < patch or w < patch:
        raise ValueError(f"patch_grid: image size {(h, w)} is smaller than the patch size {patch}")
    return (h - patch) // sy + 1, (w - patch) // sx + 1


# ---------------------------------------------------------------------------------------------------- arrays


def l2_normalise(x: Any, axis: int = -1, eps: float = 1e-12) -> Any:
    """``x / max(|x|, eps)`` along ``axis`` (torch ``F.normalize``).

    NumPy in, NumPy out (host features); JAX in, JAX out (also inside ``jit``)."""
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.asarray(x)
    return x / xp.maximum(xp.linalg.norm(x, axis=axis, keepdims=True), eps).astype(x.dtype)


def jsonable(obj: Any) -> Any:
    """``obj`` with NumPy / JAX arrays and scalars turned into Python numbers and lists, mappings into dicts with string
    keys, tuples into lists; infinite or NaN floats become strings (JSON has no inf / nan)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------------------- files


class DamagedFileError(ValueError):
    """A file that exists but cannot be read whole (truncated, overwritten, of another format): the message names it."""


def read_npz(path: str, *, what: str = ".npz file", hint: str = "", keys: Sequence[str] | None = None) -> dict:
    """Every array of the ``.npz`` at ``path`` (or only those of ``keys`` it has), read into memory now.

    A truncated or damaged archive (``zipfile`` / ``zlib`` / ``EOFError`` deep inside NumPy, or a CRC mismatch found
    only when an array is read) is one :class:`DamagedFileError` line naming the file, ``what`` it should be and
    ``hint`` (what to do about it); a missing file stays :class:`FileNotFoundError`.
    """
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a plain .npy under an .npz name
            raise ValueError(f"a single array of shape {np.shape(f)}, not an archive of named arrays")
        with f:
            names = f.files if keys is None else [k for k in keys if k in f.files]
            return {k: f[k] for k in names}
    except FileNotFoundError:
        raise
    except (IsADirectoryError, PermissionError) as e:
        raise ValueError(f"{path}: cannot read it as a {what} ({e.strerror})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise DamagedFileError(
            f"{path}: cannot read this {what} ({reason}); it is truncated or damaged"
            + (f". {hint[:1].upper()}{hint[1:]}" if hint else "")
        ) from None


def check_output_path(path: str, kind: str, flag: str = "--out") -> None:
    """Before any work: ``path`` can be written as a ``kind`` (``'file'`` or ``'folder'``): it is not the other kind,
    and its nearest existing parent is a folder. A :class:`ValueError` naming ``flag`` and the path otherwise."""
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = os.path.abspath(os.path.expanduser(path))
    if kind == "file" and os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder; expected the path of the file to write")
    if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a file; expected a folder")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"{flag} {path!r}: {parent!r} is a file, so nothing can be written under it")


# ---------------------------------------------------------------------------------------------------- command line

# User mistakes (a missing file or folder, a checkpoint of another model or dataset, a bad or missing config value).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError)


def error_message(e: BaseException) -> str:
    """The text of ``e`` (a KeyError's own ``str`` adds quotes)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


@contextlib.contextmanager
def one_line_errors(also: tuple[type[BaseException], ...] = (), traceback: bool = False) -> Iterator[None]:
    """Inside a command-line tool: a user mistake (:data:`USER_ERRORS` and ``also``) prints ``error: <message>`` on
    stderr and exits with status 1; ``traceback=True`` lets it raise instead."""
    try:
        yield
    except USER_ERRORS + tuple(also) as e:
        if traceback:
            raise
        print(f"error: {error_message(e)}", file=sys.stderr)
        sys.exit(1)

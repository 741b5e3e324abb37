"""Parsing targets for the semantic perception head (docs/reference.md §12, §5, §9.4): a human parser's LIP maps
turned into HSPM's per-patch part maps, stored beside the dataset and loaded for the training pipeline.

Not to be confused with :mod:`tmspr_jax.parser`, the human parser itself (SCHP's network in Flax, which
:func:`parse_targets` runs on the training images), nor with ``python -m tmspr_jax.tools.parse``, the command that
runs that parser over a folder of images and writes SCHP's map files. ``python -m tmspr_jax.tools.parsing_targets`` is
the command that makes the targets with this module.

A human parser (SCHP trained on LIP, 20 classes) labels every training image offline. This module

1. merges the 20 LIP classes into the six T-MSPR groups (:data:`LIP_TO_GROUP`, :func:`merge_lip`),
2. pools the merged map onto the model's patch grid (:func:`grid_targets`),
3. stores one float32 ``[gh, gw, 6]`` target per training image, keyed by file name, beside the prepared dataset
   (``<data_dir>/parsing/<builder>/<gh>x<gw>.npz``; ``python -m tmspr_jax.tools.parsing_targets``), and
4. loads them aligned to a split's record order for the training pipeline (:func:`load_targets`).

Pooling (``method='patch_mean'``, the default): the merged map is resized to the model input size exactly as view 1
resizes the image (PIL bicubic, whole image, aspect ratio not kept), then averaged over each patch's own receptive
window, rows ``[sy*y, sy*y + patch)`` and columns ``[sx*x, sx*x + patch)``. The target of patch ``(y, x)`` is therefore
the group composition of the very pixels that patch embeds. ``method='reference'`` reproduces the reference instead:
a bilinear (``align_corners=False``) resize of the merged map straight to ``(gh, gw)``, which puts grid row ``r`` at
relative height ``(r + 0.5) / gh`` while the patch is centred at ``(sy*r + patch/2) / H`` (4.5 % of the height apart
at the bottom row for 256x128, stride 11). See ``docs/parsing.md``.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from tmspr_jax.utils import DamagedFileError, pair, patch_grid, read_npz

LIP_CLASSES: tuple[str, ...] = (
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
)
GROUP_NAMES: tuple[str, ...] = ("Background", "Head", "Body", "Accessory", "Legs", "Feet")
NUM_LIP = len(LIP_CLASSES)
NUM_GROUPS = len(GROUP_NAMES)

# docs/reference.md §12.2 ('lip_merged'): note Hat -> Accessory, not Head.
LIP_TO_GROUP: np.ndarray = np.array(
    [
        0,  # Background
        3,  # Hat
        1,  # Hair
        3,  # Glove
        3,  # Sunglasses
        2,  # Upper-clothes
        2,  # Dress
        2,  # Coat
        5,  # Socks
        4,  # Pants
        2,  # Jumpsuits
        3,  # Scarf
        4,  # Skirt
        1,  # Face
        2,  # Left-arm
        2,  # Right-arm
        4,  # Left-leg
        4,  # Right-leg
        5,  # Left-shoe
        5,  # Right-shoe
    ],
    dtype=np.int32,
)
LIP_TO_GROUP.flags.writeable = False
# [20, 6] 0/1 matrix: probabilities @ _MERGE sums each group's classes.
_MERGE = np.eye(NUM_GROUPS, dtype=np.float32)[LIP_TO_GROUP]

METHODS = ("patch_mean", "reference")
MAP_EXTENSIONS = (".npy", ".png")


class ParsingTargets(NamedTuple):
    """Targets aligned to a split's record order."""

    targets: np.ndarray  # float32 [N, gh, gw, 6]
    weights: np.ndarray  # float32 [N]: 1 where a target exists, 0 for missing ones ('zero_weight')
    num_missing: int


# ---------------------------------------------------------------------------------------------- merging


def merge_lip(parsing: np.ndarray, *, scores: str = "logits") -> np.ndarray:
    """Merges a LIP parsing into the six groups, ``[h, w, 6]`` float32.

    Args:
      parsing: either a label map ``[h, w]`` of integer LIP classes 0..19 (SCHP's PNG), which becomes a one-hot per
        group, or per-class scores ``[h, w, 20]`` (SCHP's ``--logits`` ``.npy``), whose softmax probabilities are
        summed per group.
      scores: for ``[h, w, 20]`` input, ``'logits'`` (softmax first) or ``'probs'`` (already probabilities).
    """
    parsing = np.asarray(parsing)
    if parsing.ndim == 2:
        if not np.issubdtype(parsing.dtype, np.integer):
            raise ValueError(f"a [h, w] LIP label map must hold integer class ids, got dtype {parsing.dtype}")
        bad = (parsing < 0) | (parsing >= NUM_LIP)
        if bad.any():
            raise ValueError(
                f"LIP label map holds values outside 0..{NUM_LIP - 1}: {sorted(np.unique(parsing[bad]).tolist())[:10]}"
            )
        return np.eye(NUM_GROUPS, dtype=np.float32)[LIP_TO_GROUP[parsing]]
    if parsing.ndim == 3 and parsing.shape[-1] == NUM_LIP:
        x = parsing.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError("LIP scores contain NaN or infinite values")
        if scores == "logits":
            x = np.exp(x - x.max(axis=-1, keepdims=True))
            x /= x.sum(axis=-1, keepdims=True)
        elif scores == "probs":
            if (x < 0).any() or not np.allclose(x.sum(-1), 1.0, atol=1e-3):
                raise ValueError("scores='probs' expects non-negative per-pixel probabilities summing to 1")
        else:
            raise ValueError(f"scores must be 'logits' or 'probs', got {scores!r}")
        return x @ _MERGE
    raise ValueError(
        f"expected a LIP label map [h, w] or LIP scores [h, w, {NUM_LIP}], got an array of shape {parsing.shape}"
    )


def read_map(path: str) -> np.ndarray:
    """Reads one SCHP output (``.png`` label map or ``.npy`` logits) and merges it: ``[h, w, 6]`` float32."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".png":
        try:
            with Image.open(path) as im:
                # 'P' (SCHP's palette PNG) and 'L' both store the class index per pixel; converting would turn a
                # palette into grey levels, so the raw indices are read instead.
                if im.mode not in ("P", "L", "I", "I;16"):
                    raise ValueError(
                        f"{path}: expected a single-channel label PNG (mode 'P' or 'L') holding LIP class ids, "
                        f"got mode {im.mode!r} (a colour visualisation?)"
                    )
                labels = np.asarray(im).astype(np.int32)
        except (OSError, SyntaxError) as e:  # PIL: truncated or not an image; its message does not name the file
            if isinstance(e, FileNotFoundError):
                raise
            raise DamagedFileError(
                f"{path}: cannot read this label map ({e}); the file is truncated or damaged"
            ) from None
    elif ext == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (EOFError, ValueError) as e:  # truncated: numpy's message does not name the file
            raise DamagedFileError(
                f"{path}: cannot read these logits ({e}); the file is truncated or damaged"
            ) from None
    else:
        raise ValueError(f"{path}: expected a .png label map or a .npy logits file")
    try:
        return merge_lip(labels)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------- pooling


grid_shape = patch_grid  # patch grid ``(gh, gw)``: the model's own formula (docs/interfaces.md)


def _pil_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: PIL's bicubic resize along one axis as a matrix (its response to each unit impulse)."""
    if n_in == n_out:
        return np.eye(n_in)
    impulses = Image.fromarray(np.eye(n_in, dtype=np.float32))  # row i: impulse at column i
    return np.asarray(impulses.resize((n_out, n_in), Image.BICUBIC), np.float64).T


@functools.lru_cache(maxsize=32)
def _pooling_matrices(
    src: tuple[int, int], img_size: tuple[int, int], patch: int, stride: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(Ay [gh, h], Ax [gw, w])``: resize to ``img_size`` (PIL bicubic, separable) then average each patch window.

    Both steps are linear and separable, so ``target[..., c] = Ay @ merged[..., c] @ Ax.T``.
    """
    out = []
    for n_in, n_out, s in zip(src, img_size, stride):
        g = (n_out - patch) // s + 1
        window = np.zeros((g, n_out))
        for k in range(g):
            window[k, s * k : s * k + patch] = 1.0 / patch
        out.append(window @ _pil_resize_matrix(n_in, n_out))
    return out[0], out[1]


def _bilinear_half_pixel(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)`` (no antialias) on ``[h, w, c]``."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # float32 coordinates, as PyTorch computes them for float32 input
        scale = np.float32(n_in) / np.float32(n_out)
        src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
        src = np.maximum(src, np.float32(0.0))  # PyTorch clamps negative source coordinates to 0
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0)

    y0, y1, ly = axis(x.shape[0], size[0])
    x0, x1, lx = axis(x.shape[1], size[1])
    xd = x.astype(np.float64)
    top = xd[y0][:, x0] * (1 - lx)[None, :, None] + xd[y0][:, x1] * lx[None, :, None]
    bot = xd[y1][:, x0] * (1 - lx)[None, :, None] + xd[y1][:, x1] * lx[None, :, None]
    return (top * (1 - ly)[:, None, None] + bot * ly[:, None, None]).astype(np.float32)


def grid_targets(
    merged: np.ndarray,
    img_size: Sequence[int],
    patch: int,
    stride: Sequence[int],
    method: str = "patch_mean",
) -> np.ndarray:
    """Pools a merged parsing ``[h, w, 6]`` (at the original image's size) onto the patch grid: ``[gh, gw, 6]``.

    ``'patch_mean'``: resize to ``img_size`` with PIL bicubic (as view 1 resizes the image), then the mean over each
    patch's window ``[sy*y, sy*y+patch) x [sx*x, sx*x+patch)``; bicubic overshoot is clipped at 0 and each cell
    renormalised to sum 1. ``'reference'``: bilinear ``align_corners=False`` resize straight to ``(gh, gw)``.
    """
    merged = np.asarray(merged)
    if merged.ndim != 3 or merged.shape[-1] != NUM_GROUPS:
        raise ValueError(f"expected a merged parsing [h, w, {NUM_GROUPS}], got shape {merged.shape}")
    gh, gw = grid_shape(img_size, patch, stride)
    if method == "reference":
        return _bilinear_half_pixel(merged, (gh, gw))
    if method != "patch_mean":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    ay, ax = _pooling_matrices(merged.shape[:2], pair(img_size, "img_size"), int(patch), pair(stride, "stride"))
    # einsum's own loops, not BLAS: these products are tiny, and BLAS threads only contend for the cores
    rows = np.einsum("yi,ijc->yjc", ay, merged.astype(np.float64))
    out = np.maximum(np.einsum("xj,yjc->yxc", ax, rows), 0.0)
    total = out.sum(-1, keepdims=True)
    out = np.where(total > 0, out / np.where(total > 0, total, 1.0), out)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------- storage


def default_path(data_dir: str, dataset: str, grid: Sequence[int]) -> str:
    """``<data_dir>/parsing/<dataset>/<gh>x<gw>.npz``."""
    return os.path.join(data_dir, "parsing", dataset, f"{int(grid[0])}x{int(grid[1])}.npz")


def find_map(maps_dir: str, stem: str, prefer: str = ".npy") -> str | None:
    """Path of ``<maps_dir>/<stem>.npy`` or ``.png`` (``prefer`` first), or None."""
    order = (prefer,) + tuple(e for e in MAP_EXTENSIONS if e != prefer)
    for ext in order:
        p = os.path.join(maps_dir, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def _missing_error(what: str, missing: Sequence[str], total: int, hint: str) -> ValueError:
    first = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return ValueError(f"{len(missing)} of {total} {what} missing (first: {first}). {hint}")


def compute_targets(
    file_names: Sequence[str],
    maps_dir: str,
    img_size: Sequence[int],
    patch: int,
    stride: Sequence[int],
    *,
    method: str = "patch_mean",
    image_sizes: Sequence[tuple[int, int]] | None = None,
    allow_missing: bool = False,
    prefer: str = ".npy",
    progress: bool = False,
) -> tuple[list[str], np.ndarray, list[str]]:
    """Targets for every file name whose map is in ``maps_dir``: ``(names, targets [n, gh, gw, 6], missing)``.

    ``image_sizes`` (``(h, w)`` per file name, optional) checks that each map has its image's size. Duplicate file
    names are computed once. Missing maps raise (count and first names) unless ``allow_missing``. ``progress``
    shows a progress bar.
    """
    if not os.path.isdir(maps_dir):
        raise FileNotFoundError(f"maps_dir {maps_dir!r} is not a directory")
    if image_sizes is not None and len(image_sizes) != len(file_names):
        raise ValueError(f"image_sizes has {len(image_sizes)} entries for {len(file_names)} file names")
    gh, gw = grid_shape(img_size, patch, stride)
    seen: set[str] = set()
    jobs: list[tuple[str, str, tuple[int, int] | None]] = []
    missing: list[str] = []
    for i, name in enumerate(file_names):
        if name in seen:
            continue
        seen.add(name)
        path = find_map(maps_dir, os.path.splitext(name)[0], prefer)
        if path is None:
            missing.append(name)
        else:
            jobs.append((name, path, None if image_sizes is None else tuple(image_sizes[i])))
    if missing and not allow_missing:
        raise _missing_error(
            f"parsing maps (<stem>.png / <stem>.npy in {maps_dir})",
            missing,
            len(seen),
            "Run the parser on every training image (docs/parsing.md) or pass --allow_missing.",
        )
    targets = np.zeros((len(jobs), gh, gw, NUM_GROUPS), np.float32)
    if progress:
        from tqdm import tqdm

        jobs_iter = tqdm(jobs, desc="parsing targets", unit="img")
    else:
        jobs_iter = jobs
    for k, (name, path, size) in enumerate(jobs_iter):
        merged = read_map(path)
        if size is not None and merged.shape[:2] != size:
            raise ValueError(
                f"{path}: map is {merged.shape[0]}x{merged.shape[1]} (h x w) but image {name} is {size[0]}x{size[1]}"
            )
        targets[k] = grid_targets(merged, img_size, patch, stride, method)
    return [j[0] for j in jobs], targets, missing


def encoded_image_size(encoded: bytes) -> tuple[int, int]:
    """``(h, w)`` of an encoded image, from its header."""
    with Image.open(io.BytesIO(encoded)) as im:  # reads the header only
        return im.height, im.width


def parse_targets(
    split: Any,
    parser_dir: str,
    img_size: Sequence[int],
    patch: int,
    stride: Sequence[int],
    *,
    out: str,
    method: str = "patch_mean",
    dtype: str = "float32",
    batch_size: int = 8,
    max_images: int | None = None,
    progress: bool = False,
) -> tuple[list[str], np.ndarray] | None:
    """Targets straight from the images of ``split`` with the converted SCHP parser in ``parser_dir``:
    ``(names, targets [n, gh, gw, 6])``, one per distinct file name, in record order.

    Each image gets the LIP logits SCHP's ``simple_extractor.py --logits`` would write for it
    (:mod:`tmspr_jax.parser`), merged and pooled as :func:`compute_targets` does with those files, with nothing written
    but the finished batches in ``<out>.partial/``: a killed run resumes there, and the targets equal an uninterrupted
    run's. ``max_images`` stops after about that many images and returns None (unfinished).
    """
    from tmspr_jax.parser import preprocess
    from tmspr_jax.parser.runner import Item, Parser, run_restartable

    parser = Parser(parser_dir, dtype=dtype, batch_size=batch_size)
    if parser.num_classes != NUM_LIP:
        raise ValueError(
            f"{parser_dir}: the parsing targets need a LIP parser ({NUM_LIP} classes), this one has "
            f"{parser.num_classes} ({parser.meta.get('dataset')})"
        )
    geometry = pooling_geometry(img_size, patch, stride)
    first: dict[str, int] = {}
    for i, name in enumerate(split.file_names):
        first.setdefault(str(name), i)

    def load(i: int, name: str) -> np.ndarray:
        data = split[i]["image"]
        img = preprocess.decode_image(data, name)
        size = encoded_image_size(data)
        if img.shape[:2] != size:  # e.g. an EXIF rotation that OpenCV applies and the training views do not
            raise ValueError(
                f"{name}: decoded as {img.shape[0]}x{img.shape[1]} (h x w) but the image is {size[0]}x{size[1]}"
            )
        return img

    items = [Item(n, functools.partial(load, i, n)) for n, i in first.items()]

    def post(_: Item, logits: np.ndarray) -> np.ndarray:
        return grid_targets(merge_lip(logits), *geometry, method)

    settings = {"img_size": geometry[0], "patch": geometry[1], "stride": geometry[2], "method": method}
    # The images' identity beyond their names: the prepared dataset's files (a dataset prepared again, with other
    # images under the same names, starts the batches over).
    settings["data_files"] = [
        [os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in getattr(split, "files", [])
    ]
    targets = run_restartable(
        parser,
        items,
        post,
        out + ".partial",
        settings,
        max_images=max_images,
        progress=progress,
        desc="parsing targets",
    )
    if targets is None:
        return None
    return [it.name for it in items], targets


_TARGETS_HINT = "make it again with python -m tmspr_jax.tools.parsing_targets (docs/parsing.md)"


SUM_TOLERANCE = 1e-3  # float32 pooling sums a patch's 6 probabilities to 1 within ~1e-7


def check_targets(targets: np.ndarray, names: Sequence[str], path: str) -> None:
    """Every patch of ``targets [N, gh, gw, 6]`` must be a distribution over the 6 groups: finite, non-negative and
    summing to 1 within :data:`SUM_TOLERANCE`; the first patch that is not is a :class:`ValueError` naming ``path``,
    the image and the patch (a NaN would otherwise train as a uniform target)."""
    finite = np.isfinite(targets).all(-1)
    bad = ~finite | (np.where(finite[..., None], targets, 0) < 0).any(-1)
    bad |= finite & (np.abs(np.where(finite[..., None], targets, 0).sum(-1) - 1.0) > SUM_TOLERANCE)
    if not bad.any():
        return
    n, y, x = (int(v) for v in np.argwhere(bad)[0])
    cell = targets[n, y, x]
    problem = (
        "is not finite"
        if not np.isfinite(cell).all()
        else "has negative values"
        if (cell < 0).any()
        else f"sums to {float(cell.sum()):.6g}"
    )
    raise ValueError(
        f"{path}: the parsing target of {names[n]!r} (row {n}) at patch ({y}, {x}) {problem}: {np.round(cell, 4)}; "
        f"each patch must hold {NUM_GROUPS} finite, non-negative group probabilities summing to 1 "
        f"(within {SUM_TOLERANCE:g}), {int(bad.sum())} patch(es) do not. {_TARGETS_HINT[0].upper()}{_TARGETS_HINT[1:]}."
    )


def save_targets(
    path: str,
    names: Sequence[str],
    targets: np.ndarray,
    *,
    img_size: Sequence[int],
    patch: int,
    stride: Sequence[int],
    method: str,
    source: str = "",
) -> None:
    """Writes one ``.npz``: stacked ``targets [N, gh, gw, 6]``, ``names [N]`` and the settings that made them."""
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 4 or targets.shape[0] != len(names) or targets.shape[-1] != NUM_GROUPS:
        raise ValueError(f"targets shape {targets.shape} does not match {len(names)} names x [gh, gw, {NUM_GROUPS}]")
    check_targets(targets, names, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"  # write then rename: a crash never leaves a half-written file under the real name
    np.savez(
        tmp,
        targets=targets,
        names=np.asarray(list(names), dtype=np.str_),
        grid=np.asarray(targets.shape[1:3], np.int64),
        img_size=np.asarray(img_size, np.int64),
        patch=np.asarray(patch, np.int64),
        stride=np.asarray(stride, np.int64),
        method=np.asarray(method),
        source=np.asarray(source),
    )
    os.replace(tmp, path)


Geometry = tuple[tuple[int, int], int, tuple[int, int]]  # (img_size, patch, stride)


def pooling_geometry(img_size: Sequence[int], patch: int, stride: Sequence[int]) -> Geometry:
    return pair(img_size, "img_size"), int(patch), pair(stride, "stride")  # one number: square


def config_geometry(config: ml_collections.ConfigDict) -> Geometry:
    """The ``(img_size, patch, stride)`` a config's model pools its parsing targets with."""
    img_size, stride = pair(config.img_size, "config.img_size"), pair(config.model.stride, "config.model.stride")
    return pooling_geometry(img_size, config.model.patch_size, stride)


def _geometry_in(f: Mapping[str, np.ndarray]) -> Geometry | None:
    """The geometry recorded in a targets ``.npz``'s arrays (None for files written without it)."""
    if not {"img_size", "patch", "stride"} <= set(f):
        return None
    return pooling_geometry(f["img_size"].tolist(), int(f["patch"]), f["stride"].tolist())


def stored_geometry(path: str) -> Geometry | None:
    """``(img_size, patch, stride)`` the targets in ``path`` were pooled for (None for files without them)."""
    keys = ("img_size", "patch", "stride")  # not the targets: a truncated file is still found (no central directory)
    return _geometry_in(read_npz(path, what="parsing-targets file", hint=_TARGETS_HINT, keys=keys))


def load_targets(
    parsing_cfg: ml_collections.ConfigDict,
    split: Any,
    grid: Sequence[int],
    data_dir: str,
    dataset: str,
    geometry: Geometry | None = None,
) -> ParsingTargets:
    """Loads the stored targets aligned to ``split.file_names`` (record order).

    Args:
      parsing_cfg: ``config.parsing``: ``path`` ('' = ``<data_dir>/parsing/<dataset>/<gh>x<gw>.npz``), ``missing``
        ('error' or 'zero_weight') and ``method`` (must be the one the stored targets were made with).
      split: anything with a ``file_names`` sequence (``tmspr_jax.data.sources.ReIDSplit``).
      grid: the model's ``(gh, gw)``; a file made for another grid is an error.
      data_dir: the TFDS data dir the dataset was prepared in.
      dataset: the builder name of the training split (``config.data.train``).
      geometry: the model's ``(img_size, patch, stride)``. The same grid can come from other image sizes, whose
        pooled targets differ (e.g. 128x64 with patch 16 and 96x48 with patch 12): a file made for another geometry
        is an error, never reused.
    """
    grid = (int(grid[0]), int(grid[1]))
    missing_mode = parsing_cfg.missing
    if missing_mode not in ("error", "zero_weight"):
        raise ValueError(f"parsing.missing must be 'error' or 'zero_weight', got {missing_mode!r}")
    path = parsing_cfg.path or default_path(data_dir, dataset, grid)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no parsing targets at {path!r} (parsing.path={parsing_cfg.path!r}). Make them with `python -m "
            f"tmspr_jax.tools.parsing_targets --maps_dir MAPS --data_dir {data_dir} --dataset {dataset} ...` "
            "(docs/parsing.md)."
        )
    f = read_npz(path, what="parsing-targets file", hint=_TARGETS_HINT)
    for key in ("targets", "names"):
        if key not in f:
            raise ValueError(f"{path}: not a parsing-targets file (no {key!r} array; has {sorted(f)})")
    stored = np.asarray(f["targets"], np.float32)
    names = f["names"].tolist()
    stored_method = str(f["method"]) if "method" in f else None
    have_geometry = _geometry_in(f)
    stored_grid = tuple(int(v) for v in stored.shape[1:3])
    if stored.ndim != 4 or stored.shape[-1] != NUM_GROUPS or len(names) != stored.shape[0]:
        raise ValueError(f"{path}: targets of shape {stored.shape} with {len(names)} names is not [N, gh, gw, 6]")
    check_targets(stored, names, path)
    if stored_grid != grid:
        raise ValueError(
            f"{path}: targets were made for a {stored_grid[0]}x{stored_grid[1]} patch grid but the model uses "
            f"{grid[0]}x{grid[1]}; regenerate them for this img_size / patch / stride."
        )
    if geometry is not None:
        want, have = pooling_geometry(*geometry), have_geometry
        if have is not None and have != want:
            raise ValueError(
                f"{path}: targets were pooled for img_size {have[0]}, patch {have[1]}, stride {have[2]} but the model "
                f"uses img_size {want[0]}, patch {want[1]}, stride {want[2]}; regenerate them for this geometry "
                "(remove the file: with parsing.maps_dir set they are recomputed on first use)."
            )
    want_method = parsing_cfg.method
    if stored_method is not None and want_method != stored_method:
        raise ValueError(
            f"{path}: targets were pooled with method {stored_method!r} but parsing.method is {want_method!r}; "
            "regenerate them (python -m tmspr_jax.tools.parsing_targets --method ...) or change parsing.method."
        )
    index: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in index:
            raise ValueError(f"{path}: file name {n!r} is stored twice")
        index[n] = i
    file_names = [str(n) for n in split.file_names]
    rows = np.array([index.get(n, -1) for n in file_names], np.int64)
    missing = [n for n, r in zip(file_names, rows) if r < 0]
    if missing and missing_mode == "error":
        raise _missing_error(
            f"training images have no parsing target in {path}:",
            missing,
            len(file_names),
            "Produce maps for them, or set parsing.missing='zero_weight' to train them without the parsing loss.",
        )
    # Missing rows get zeros and weight 0: never another image's (stale) target.
    targets = np.zeros((len(file_names), *grid, NUM_GROUPS), np.float32)
    ok = rows >= 0
    targets[ok] = stored[rows[ok]]
    weights = ok.astype(np.float32)
    if missing:
        logging.warning(
            "parsing targets: %d of %d training images have no target in %s; they get weight 0 (first: %s)",
            len(missing),
            len(file_names),
            path,
            ", ".join(missing[:5]),
        )
    return ParsingTargets(targets=targets, weights=weights, num_missing=len(missing))


def remove_partial(out: str) -> None:
    """Drops the finished batches of :func:`parse_targets` once the targets file is written."""
    import shutil

    if os.path.isdir(out + ".partial"):
        shutil.rmtree(out + ".partial")

"""Test features of a trained or converted checkpoint, written to one ``.npz`` for analysis outside the framework.

    python -m tmspr_jax.tools.extract --config=configs/occ_duke.py --checkpoint=WORKDIR [--out=FILE.npz]
        [--config.eval.flip=True]

``--checkpoint`` is what ``--mode=eval`` takes as ``--config.init_checkpoint``: a training workdir (its best checkpoint
by mAP) or a converted weights folder. The features are the evaluation's (same batches, same ``eval.flip``), before
any normalisation. The file (default ``<checkpoint>/features.npz``) holds, for ``split`` in ``query`` and ``gallery``,
in the dataset's record order:

* ``<split>_features`` float32 ``[N, D]``;
* ``<split>_pids``, ``<split>_camids`` int64 ``[N]`` (0-based cameras);
* ``<split>_file_names`` str ``[N]``;

and ``dataset`` (the test builder, e.g. ``occluded_duke``), ``checkpoint`` and ``config`` (the config as JSON text).
``python -m tmspr_jax.tools.visualize`` draws ranked lists from it; ``load_features`` reads it back, checked.

Any images, no prepared dataset::

    python -m tmspr_jax.tools.extract --checkpoint=DIR --images=DIR_OR_LIST --out=feats.npz [--config=configs/X.py]
        [--camid=0] [--parse_names=True] [--batch_size=0]

``--images`` is a folder (searched recursively, hidden folders skipped, files in sorted order), one image file, or a
text file listing one image path per line (relative to the list's folder; blank lines and ``#`` comments skipped).
Each image goes through the evaluation's transform (``views.eval_view``) after :func:`read_image` turns it into 8-bit
RGB (grey, palette, RGBA, CMYK, 16-bit PNG, EXIF-rotated photos; unreadable or float images are refused, naming the
file). A Market/Duke release name (``0001_c1s1_000151_00.jpg``, ``0001_c2_f0046182.jpg``) gives the camera (and the
identity) of the image; other names get ``--camid`` (identity -1). Batches of ``--batch_size`` (default the config's
``data.test_batch_size``: with ``model.part_norm='batch'`` a feature depends on the rest of its batch, as in the
evaluation). The file holds ``features`` float32 ``[N, D]``, ``pids``, ``camids`` int64 ``[N]``, ``file_names`` (paths
relative to ``root``), ``root``, ``checkpoint``, ``config`` and ``dataset='images'``; :func:`load_image_features`
reads it back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from tmspr_jax.tools import cli
from tmspr_jax.utils import check_output_path, read_npz

SPLITS = ("query", "gallery")
_PER_SPLIT = ("features", "pids", "camids", "file_names")


def save_features(
    path: str,
    query: tuple[np.ndarray, np.ndarray, np.ndarray],
    gallery: tuple[np.ndarray, np.ndarray, np.ndarray],
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    *,
    dataset: str,
    checkpoint: str = "",
    config_json: str = "",
) -> str:
    """Writes ``(features, pids, camids)`` of query and gallery with their file names; returns the path written."""
    arrays: dict[str, Any] = {
        "dataset": np.str_(dataset),
        "checkpoint": np.str_(checkpoint),
        "config": np.str_(config_json),
    }
    for split, (feats, pids, camids), names in (("query", query, query_names), ("gallery", gallery, gallery_names)):
        arrays[f"{split}_features"] = np.asarray(feats, np.float32)
        arrays[f"{split}_pids"] = np.asarray(pids, np.int64)
        arrays[f"{split}_camids"] = np.asarray(camids, np.int64)
        arrays[f"{split}_file_names"] = np.asarray([str(n) for n in names], dtype=np.str_)
    _check(arrays, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would append '.npz' to a name without it
        np.savez(f, **arrays)
    return path


def load_features(path: str) -> dict[str, Any]:
    """Reads a file written by :func:`save_features`; a missing key or mismatched lengths raise naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no features file at {path!r} (write one with python -m tmspr_jax.tools.extract)")
    out = read_npz(path, what="features file", hint="extract the features again (python -m tmspr_jax.tools.extract)")
    for key in ("dataset",) + tuple(f"{s}_{k}" for s in SPLITS for k in _PER_SPLIT):
        if key not in out:
            raise ValueError(
                f"{path}: not a features file from tmspr_jax.tools.extract (no {key!r}; has {sorted(out)})"
            )
    for key in ("dataset", "checkpoint", "config"):
        if key in out:
            out[key] = str(out[key])
    _check(out, path)
    return out


def _check(arrays: dict[str, Any], path: str) -> None:
    dims = set()
    for split in SPLITS:
        feats = arrays[f"{split}_features"]
        if feats.ndim != 2:
            raise ValueError(f"{path}: {split}_features must be [N, D], got shape {feats.shape}")
        dims.add(feats.shape[1])
        for key in _PER_SPLIT[1:]:
            if arrays[f"{split}_{key}"].shape != (feats.shape[0],):
                raise ValueError(
                    f"{path}: {split}_{key} has shape {arrays[f'{split}_{key}'].shape}, expected ({feats.shape[0]},) "
                    f"like {split}_features"
                )
    if len(dims) != 1:
        raise ValueError(f"{path}: query and gallery features have different widths {sorted(dims)}")


class Extracted(NamedTuple):
    """Where :func:`extract_to_file` wrote, and what."""

    path: str
    num_query: int
    num_gallery: int
    feature_dim: int


def features_path(checkpoint: str, out: str = "") -> str:
    """``out``, else ``<checkpoint>/features.npz``, checked to be writable as a file before any work."""
    out = out or os.path.join(os.path.abspath(os.path.expanduser(checkpoint)), "features.npz")
    check_output_path(out, "file")
    return out


def extract_to_file(
    config: ml_collections.ConfigDict, checkpoint: str, out: str = "", step: int | None = None
) -> Extracted:
    """Extracts the test features of ``checkpoint`` on the config's test split and saves them (see module doc);
    ``step`` picks a training workdir's checkpoint (default: the best by mAP, else the latest)."""
    import jax

    from tmspr_jax import experiment

    out = features_path(checkpoint, out)
    exp = experiment.setup_experiment(config)
    variables = experiment.load_checkpoint_variables(checkpoint, exp, step=step)
    query, gallery = experiment.extract_test_features(exp, variables, desc="extract")
    if jax.process_index() == 0:
        save_features(
            out,
            query,
            gallery,
            exp.query_split.file_names,
            exp.gallery_split.file_names,
            dataset=str(config.data.test),
            checkpoint=os.path.abspath(checkpoint),
            config_json=config.to_json(),
        )
    return Extracted(out, len(query[0]), len(gallery[0]), int(query[0].shape[1]))


# ------------------------------------------------------------------------------------------ any folder of images

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
# Market-1501 (``0001_c1s1_000151_00.jpg``, junk ``-1_c3s2_...``) and DukeMTMC (``0001_c2_f0046182.jpg``) names.
_RELEASE_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def list_images(spec: str) -> tuple[str, list[str]]:
    """``(root, paths)``: the images named by ``spec`` (a folder, an image file or a list file; see the module doc).

    Paths are absolute, in sorted order for a folder and in the list's order for a list file."""
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isdir(path):
        found = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skips the search cache and hidden folders
            found += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise ValueError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder or below it")
        return path, found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--images {spec!r}: no such folder or file (a folder, an image or a list of images)")
    root = os.path.dirname(path)
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return root, [path]
    paths = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            item = os.path.normpath(os.path.join(root, os.path.expanduser(line)))
            if not os.path.isfile(item):
                raise FileNotFoundError(f"{path}, line {n}: no image file at {item!r}")
            paths.append(item)
    if not paths:
        raise ValueError(f"{path}: the list names no image files (one path per line)")
    return root, paths


def parse_release_name(path: str) -> tuple[int, int] | None:
    """``(pid, 0-based camid)`` from a Market/Duke release file name, or ``None`` when the name has no such prefix."""
    m = _RELEASE_NAME.match(os.path.basename(path))
    if m is None or int(m.group(2)) < 1:
        return None
    return int(m.group(1)), int(m.group(2)) - 1


def read_image(path: str) -> np.ndarray:
    """The image at ``path`` as 8-bit RGB ``[H, W, 3]``, as the evaluation decodes dataset images (Pillow's RGB
    conversion: grey replicated, palette expanded, alpha dropped, CMYK converted), after its EXIF rotation.

    16-bit grey (PNG ``I;16``, ``I``) is scaled to 8 bits; float images (mode ``F``) and unreadable files raise
    ``ValueError`` naming the file, a missing file ``FileNotFoundError``."""
    from PIL import Image, ImageOps

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode.startswith("I;16") or mode == "I":
                grey = np.asarray(im, dtype=np.int64)
                if grey.size and (grey.min() < 0 or grey.max() > 65535):
                    raise ValueError(
                        f"{path}: 32-bit integer image with values outside 0..65535; save it as 8 or "
                        "16 bits per channel"
                    )
                scale = 257 if mode.startswith("I;16") or grey.max(initial=0) > 255 else 1
                grey = (grey // scale).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            if mode == "F":
                raise ValueError(f"{path}: floating-point image (mode F) is not supported; save it as 8-bit RGB")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    except (OSError, Image.DecompressionBombError, SyntaxError) as e:  # Pillow's errors for bad or huge files
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def _restore_workdir(path: str, step: int | None = None) -> dict:
    """A training workdir's variables: ``step`` when given, else the best by mAP, else the latest (a damaged
    checkpoint falls back to the newest intact one, as ``--mode=eval`` does)."""
    from tmspr_jax import checkpoints

    state = checkpoints.read_workdir(path, step)[1]
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def load_model(config: ml_collections.ConfigDict, checkpoint: str, step: int | None = None) -> tuple[Any, dict]:
    """``(model, variables)`` of a converted weights folder or a training workdir, without any dataset: the
    identity and camera counts come from ``meta.json`` or from the checkpoint's classifier and SIE table shapes.
    Variables that do not fit the config's model raise ``ValueError`` naming the first differing key. ``step``
    picks a workdir's checkpoint (default: the best by mAP, else the latest)."""
    import jax

    from tmspr_jax import experiment, weights
    from tmspr_jax.models import build_model, init_variables

    path = os.path.abspath(os.path.expanduser(checkpoint))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--checkpoint {path!r} is not a folder (a converted weights folder or a workdir)")
    if weights.is_weights_folder(path):
        if step is not None and step >= 0:
            raise ValueError(f"{path}: a converted weights folder holds one set of weights; --step is for workdirs")
        variables, _ = weights.load_variables(path)
    else:
        variables = _restore_workdir(path, step)
    params = variables["params"]
    try:
        num_classes = int(np.shape(params["classifier"]["kernel"])[-1])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: no params/classifier/kernel; not a T-MSPR checkpoint") from e
    sie = params.get("backbone", {}).get("sie_embed")
    num_cameras = int(np.shape(sie)[0]) if sie is not None and config.model.sie_camera else 0
    # the test features' compute dtype (eval.dtype), as the trainer's evaluation
    model = build_model(experiment.eval_model_config(config), tuple(config.img_size), num_classes, num_cameras)
    want = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
    got = {k: variables[k] for k in ("params", "batch_stats")}
    flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    flat_got = dict(jax.tree_util.tree_flatten_with_path(got)[0])
    for key in sorted(set(flat_want) | set(flat_got), key=jax.tree_util.keystr):
        a, b = flat_got.get(key), flat_want.get(key)
        if a is None or b is None or tuple(np.shape(a)) != tuple(b.shape):
            name = jax.tree_util.keystr(key)
            have = "missing" if a is None else f"shape {tuple(np.shape(a))}"
            need = "no such variable" if b is None else f"shape {tuple(b.shape)}"
            raise ValueError(
                f"{path}: {name} is {have} but the config's model has {need}; pass the --config the "
                "checkpoint was trained or converted with"
            )
    return model, got


class Images(NamedTuple):
    """Features of a list of image files (see :func:`extract_images`)."""

    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]


def image_labels(paths: Sequence[str], *, camid: int = 0, parse_names: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(pids, camids)`` int64 of the files: from release names when ``parse_names`` and they parse, else
    ``(-1, camid)``."""
    pids = np.full(len(paths), -1, np.int64)
    camids = np.full(len(paths), int(camid), np.int64)
    for i, p in enumerate(paths):
        parsed = parse_release_name(p) if parse_names else None
        if parsed is not None:
            pids[i], camids[i] = parsed
    return pids, camids


def extract_images(
    model: Any,
    variables: Any,
    paths: Sequence[str],
    config: ml_collections.ConfigDict,
    *,
    camid: int = 0,
    parse_names: bool = True,
    batch_size: int = 0,
    desc: str = "extract",
) -> Images:
    """Evaluation features of image files, in the given order (``eval.flip`` applies).

    Batches of ``batch_size`` (0: ``data.test_batch_size``), the last padded with masked rows so that every batch has
    one shape (one compilation) and the features equal those of the unpadded batch. Images are decoded by a few
    threads while the model runs. A camera id that the model's SIE table does not have raises ``ValueError``."""
    from concurrent.futures import ThreadPoolExecutor

    import jax
    from tqdm import tqdm

    from tmspr_jax import inference, sharding
    from tmspr_jax.data import views

    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("extract_images: no image files given")
    pids, camids = image_labels(paths, camid=camid, parse_names=parse_names)
    if model.num_cameras > 1 and (camids.min() < 0 or camids.max() >= model.num_cameras):
        bad = int(np.flatnonzero((camids < 0) | (camids >= model.num_cameras))[0])
        raise ValueError(
            f"{paths[bad]}: camera {int(camids[bad])} (0-based) but the model's SIE table has {model.num_cameras} "
            "cameras; pass --parse_names=False and a --camid in range"
        )
    mesh = sharding.make_data_mesh(jax.local_devices())
    size = int(batch_size or config.data.test_batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    size += -size % mesh.devices.size
    size = min(size, len(paths) + (-len(paths) % mesh.devices.size))
    img_size = tuple(int(s) for s in config.img_size)
    mean, std = tuple(config.data.mean), tuple(config.data.std)

    def load(p: str) -> np.ndarray:
        return np.asarray(views.eval_view(read_image(p), img_size, mean, std), np.float32)

    def batches(pool: ThreadPoolExecutor):
        for lo in range(0, len(paths), size):
            rows = list(range(lo, min(len(paths), lo + size)))
            images = np.zeros((size, *img_size, 3), np.float32)
            images[: len(rows)] = np.stack(list(pool.map(load, [paths[i] for i in rows])))
            pad = size - len(rows)
            yield {
                "images": images,
                "pids": np.concatenate([pids[rows], np.full(pad, -1)]).astype(np.int32),
                "camids": np.concatenate([camids[rows], np.zeros(pad, np.int64)]).astype(np.int32),
                "valid": np.arange(size) < len(rows),
            }

    extract_fn = inference.make_extract_fn(model, flip=bool(config.eval.flip))
    with (
        tqdm(total=len(paths), desc=desc, unit="img", mininterval=1.0, leave=False) as bar,
        ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
        jax.set_mesh(mesh),
    ):
        variables = sharding.replicate(variables, mesh)
        feats, _, _ = inference.extract_features(extract_fn, variables, batches(pool), mesh, progress=bar.update)
    return Images(feats, pids, camids, paths)


def save_image_features(path: str, images: Images, root: str, *, checkpoint: str = "", config_json: str = "") -> str:
    """Writes :func:`extract_images`'s result (file names relative to ``root``); returns the path written."""
    names = [os.path.relpath(p, root) for p in images.paths]
    arrays = {
        "dataset": np.str_("images"),
        "root": np.str_(os.path.abspath(root)),
        "checkpoint": np.str_(checkpoint),
        "config": np.str_(config_json),
        "features": np.asarray(images.features, np.float32),
        "pids": np.asarray(images.pids, np.int64),
        "camids": np.asarray(images.camids, np.int64),
        "file_names": np.asarray(names, dtype=np.str_),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_image_features(path: str) -> dict[str, Any]:
    """Reads a file written by :func:`save_image_features`; ``paths`` (absolute) is added."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no features file at {path!r} (write one with python -m tmspr_jax.tools.extract)")
    out = read_npz(path, what="features file", hint="extract the features again (python -m tmspr_jax.tools.extract)")
    missing = [k for k in ("features", "pids", "camids", "file_names", "root") if k not in out]
    if missing or str(out.get("dataset", "")) != "images":
        raise ValueError(
            f"{path}: not an image-features file of tmspr_jax.tools.extract --images (lacks {missing} "
            f"or dataset != 'images'; has {sorted(out)})"
        )
    n = out["features"].shape[0]
    for key in ("pids", "camids", "file_names"):
        if out[key].shape != (n,):
            raise ValueError(f"{path}: {key} has shape {out[key].shape}, expected ({n},) like features")
    for key in ("dataset", "root", "checkpoint", "config"):
        out[key] = str(out[key])
    out["paths"] = [os.path.join(out["root"], str(n)) for n in out["file_names"]]
    return out


def extract_images_to_file(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    images: str,
    out: str,
    *,
    step: int | None = None,
    **kwargs: Any,
) -> tuple[str, Images]:
    """``--images`` mode of the command: lists, extracts and saves; returns the path and the features."""
    check_output_path(out, "file")
    root, paths = list_images(images)
    model, variables = load_model(config, checkpoint, step)
    result = extract_images(model, variables, paths, config, **kwargs)
    save_image_features(out, result, root, checkpoint=os.path.abspath(checkpoint), config_json=config.to_json())
    return out, result


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    config = cli.config_or_demo(f.config)
    if f.images:
        out = f.out or "features.npz"
        path, got = extract_images_to_file(
            config,
            f.checkpoint,
            f.images,
            out,
            camid=f.camid,
            parse_names=f.parse_names,
            batch_size=f.batch_size,
            step=f.step if f.step >= 0 else None,
        )
        parsed = int((got.pids >= 0).sum()) if f.parse_names else 0
        print(
            f"{len(got.paths)} image features ({got.features.shape[1]}-d; cameras from {parsed} release names, "
            f"--camid={f.camid} for the rest) written to {path}"
        )
        return
    from tmspr_jax.datagen import ensure

    features_path(f.checkpoint, f.out)  # before the dataset is prepared
    ensure.prepare_for_config(config)
    done = extract_to_file(config, f.checkpoint, f.out, step=f.step if f.step >= 0 else None)
    print(
        f"{done.num_query} query and {done.num_gallery} gallery features ({done.feature_dim}-d) of {config.data.test} "
        f"written to {done.path}"
    )


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config of the checkpoint (default: the demo).")
    flags.DEFINE_string("checkpoint", None, "Training workdir or converted weights folder.")
    flags.DEFINE_integer("step", -1, "Step of a training workdir to use; -1 = the best by mAP, else the latest.")
    flags.DEFINE_string("out", "", "Output .npz (default: <checkpoint>/features.npz; features.npz with --images).")
    flags.DEFINE_string(
        "images",
        "",
        "A folder, image file or list file of images: extract these instead of the "
        "config's test split (no prepared dataset needed).",
    )
    flags.DEFINE_integer("camid", 0, "With --images: the 0-based camera of images whose names do not parse.")
    flags.DEFINE_bool("parse_names", True, "With --images: cameras from Market/Duke release names (0001_c1s1_...).")
    flags.DEFINE_integer("batch_size", 0, "With --images: images per batch (0 = config.data.test_batch_size).")
    cli.run(_main, required=["checkpoint"])

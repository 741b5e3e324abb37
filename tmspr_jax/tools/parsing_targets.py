"""Makes a prepared dataset's parsing targets (HSPM's per-patch part maps) and stores them beside it.

From a folder of SCHP's outputs (the label maps or logits that ``tmspr_jax.tools.parse`` or SCHP's own
``simple_extractor.py`` writes)::

    python -m tmspr_jax.tools.parsing_targets --maps_dir MAPS --data_dir DATA --dataset NAME \
        [--config=configs/occ_duke.py | --img_size 256,128 --patch 16 --stride 11,11] [--out PATH] [--allow_missing]

or with the converted SCHP parser straight from the training images (no intermediate files; restartable)::

    python -m tmspr_jax.tools.parsing_targets --parser weights/schp_lip --data_dir DATA --dataset NAME [--config=...]
        [--dtype bfloat16] [--batch_size 8]

The merging, pooling and storage are :mod:`tmspr_jax.data.parsing`'s; the geometry and the pooling method come from
the flags, else ``--config``, else the base config. The file goes to ``<data_dir>/parsing/<dataset>/<gh>x<gw>.npz``
(or ``--out``, or the config's ``parsing.path``), where training finds it. See docs/parsing.md.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

from tmspr_jax.data import parsing, sources
from tmspr_jax.tools import cli
from tmspr_jax.utils import one_line_errors, pair


class _Settings(NamedTuple):
    dataset: str
    data_dir: str
    manual_dir: str | None
    img_size: tuple[int, int]
    patch: int
    stride: tuple[int, int]
    method: str
    out: str

    def describe(self) -> str:
        g = parsing.grid_shape(self.img_size, self.patch, self.stride)
        return (
            f"grid={g[0]}x{g[1]} img_size={self.img_size[0]}x{self.img_size[1]} patch={self.patch} "
            f"stride={self.stride[0]},{self.stride[1]} method={self.method}"
        )


def _settings(f: Any) -> _Settings:
    """What to make and where, from the flags, else ``--config``, else the base config (geometry and method)."""
    from tmspr_jax.config import get_base_config

    cfg = f.config or get_base_config()
    dataset = f.dataset or (f.config.data.train if f.config else "")
    data_dir = f.data_dir or (f.config.data.data_dir if f.config else "")
    if not dataset or not data_dir:
        raise _usage_error("--dataset and --data_dir are required (or a --config that sets data.train/data_dir)")
    if bool(f.maps_dir) == bool(f.parser):
        raise _usage_error("give exactly one of --maps_dir (SCHP's output files) and --parser (a converted parser)")
    img_size = _int_pair(f.img_size, "--img_size") if f.img_size else pair(cfg.img_size, "config.img_size")
    patch = f.patch or int(cfg.model.patch_size)
    stride = _int_pair(f.stride, "--stride") if f.stride else pair(cfg.model.stride, "config.model.stride")
    grid = parsing.grid_shape(img_size, patch, stride)
    out = f.out or cfg.parsing.path or parsing.default_path(data_dir, dataset, grid)
    if os.path.isdir(out):  # checked before any work: the file is written only at the end
        raise ValueError(f"--out {out!r} is a folder; expected the path of the targets .npz file")
    manual_dir = (f.config.data.manual_dir or None) if f.config else None
    return _Settings(dataset, data_dir, manual_dir, img_size, patch, stride, f.method or cfg.parsing.method, out)


def _from_parser(s: _Settings, f: Any) -> None:
    """Targets straight from the training images with the converted parser ``--parser``."""
    t0 = time.perf_counter()
    split = sources.open_split(s.dataset, "train", s.data_dir, manual_dir=s.manual_dir)
    got = parsing.parse_targets(
        split,
        f.parser,
        s.img_size,
        s.patch,
        s.stride,
        out=s.out,
        method=s.method,
        dtype=f.dtype,
        batch_size=f.batch_size,
        max_images=f.max_images,
        progress=True,
    )
    if got is None:
        print(
            f"parsing targets: stopped after --max_images={f.max_images}; finished batches are in "
            f"{s.out}.partial; rerun to continue"
        )
        return
    names, targets = got
    geometry = dict(img_size=s.img_size, patch=s.patch, stride=s.stride, method=s.method)
    parsing.save_targets(s.out, names, targets, **geometry, source=os.path.abspath(f.parser))
    parsing.remove_partial(s.out)
    print(
        f"parsing targets: dataset={s.dataset} images={len(names)} {s.describe()} parser={f.parser} -> {s.out} "
        f"({time.perf_counter() - t0:.1f}s)"
    )


def _from_maps(s: _Settings, f: Any) -> None:
    """Targets from SCHP's output files in ``--maps_dir``."""
    t0 = time.perf_counter()
    split = sources.open_split(s.dataset, "train", s.data_dir, manual_dir=s.manual_dir)
    file_names = [str(n) for n in split.file_names]
    sizes = [parsing.encoded_image_size(split[i]["image"]) for i in range(len(split))]
    names, targets, missing = parsing.compute_targets(
        file_names,
        f.maps_dir,
        s.img_size,
        s.patch,
        s.stride,
        method=s.method,
        image_sizes=sizes,
        allow_missing=f.allow_missing,
        prefer="." + f.prefer,
        progress=True,
    )
    geometry = dict(img_size=s.img_size, patch=s.patch, stride=s.stride, method=s.method)
    parsing.save_targets(s.out, names, targets, **geometry, source=os.path.abspath(f.maps_dir))
    print(
        f"parsing targets: dataset={s.dataset} images={len(set(file_names))} stored={len(names)} "
        f"missing={len(missing)} {s.describe()} -> {s.out} ({time.perf_counter() - t0:.1f}s)"
    )
    if missing:
        print(f"  missing maps (written without them): {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    s = _settings(f)
    with one_line_errors(also=(OSError,)):  # an unreadable file too: the message names it
        (_from_parser if f.parser else _from_maps)(s, f)


def _int_pair(text: str, flag: str) -> tuple[int, int]:
    try:
        return pair(text, flag)  # 'A,B', or one number for both
    except ValueError:
        raise _usage_error(f"{flag} expects two integers 'A,B' or one, got {text!r}") from None


def _usage_error(msg: str) -> Exception:
    from absl import app

    return app.UsageError(msg)


def define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "config file giving img_size, model.patch_size/stride, data.*", lock_config=True
    )
    flags.DEFINE_string("maps_dir", None, "folder of SCHP outputs <stem>.png and/or <stem>.npy")
    flags.DEFINE_string(
        "parser",
        None,
        "converted SCHP LIP parser folder (python -m convert_weights schp): parse the "
        "training images directly instead of reading --maps_dir",
    )
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "with --parser: convolution dtype")
    flags.DEFINE_integer("batch_size", 8, "with --parser: images per batch per device")
    flags.DEFINE_integer("max_images", None, "with --parser: stop after about this many images; rerun to continue")
    flags.DEFINE_string("data_dir", None, "TFDS data dir of the prepared dataset (default: the config's)")
    flags.DEFINE_string("dataset", None, "TFDS builder name of the training split (default: config data.train)")
    flags.DEFINE_string("img_size", None, "model input 'H,W' (default: the config's, else the base config's)")
    flags.DEFINE_integer("patch", None, "patch size (default: the config's, else the base config's)")
    flags.DEFINE_string("stride", None, "patch stride 'SY,SX' (default: the config's, else the base config's)")
    flags.DEFINE_enum(
        "method",
        None,
        list(parsing.METHODS),
        "pooling onto the grid (default: the config's parsing.method, else the base config's; docs/parsing.md)",
    )
    flags.DEFINE_enum("prefer", "npy", ["npy", "png"], "which map to use when both <stem>.npy and .png exist")
    flags.DEFINE_string(
        "out", None, "output .npz (default: parsing.path, else <data_dir>/parsing/<dataset>/<gh>x<gw>.npz)"
    )
    flags.DEFINE_bool("allow_missing", False, "write the targets that exist instead of failing on missing maps")


if __name__ == "__main__":
    define_flags()
    cli.run(_main)  # a bad flag, config value or file: one line, no traceback

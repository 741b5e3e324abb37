"""Convert PyTorch / JAX checkpoints into tmspr_jax weights folders (orbax + meta.json).

Usage::

    python -m convert_weights timm SRC.{pth,npz,safetensors} --out DIR --config=configs/X.py \
        [--num_classes N --num_cameras M --seed S]
    python -m convert_weights tmspr SRC.pth --out DIR --config=configs/X.py [--resize_pos [--src_grid HxW]]
    python -m convert_weights schp exp-schp-201908261155-lip.pth --out DIR

``schp``: an SCHP human-parser checkpoint (LIP, ATR or Pascal; no --config) -> a folder for ``tmspr_jax.parser``.

``timm``: an ImageNet ViT (timm naming, e.g. ``jx_vit_base_p16_224-80ecf9dd.pth``, or Google's vit_jax ``.npz``,
which needs no torch). ``tmspr``: a trained T-MSPR checkpoint as the reference saves it, or a TransReID JPM one.
Prints what was converted, skipped (and why), resized and initialised. Any mismatch is an error naming the keys.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/X.py) giving the model and img_size.", lock_config=True
)
_OUT = flags.DEFINE_string("out", None, "Output folder for the converted weights (must not exist or be empty).")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes",
    None,
    "timm: classifier rows to initialise; tmspr: checked against the checkpoint (default: read from it).",
)
_NUM_CAMERAS = flags.DEFINE_integer(
    "num_cameras", None, "timm: camera-embedding rows to initialise; tmspr: checked against the checkpoint."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the reference-style init of the heads that the source lacks.")
_RESIZE_POS = flags.DEFINE_bool(
    "resize_pos",
    False,
    "tmspr: resize the position embedding when the checkpoint's "
    "grid differs from the config's (otherwise that is an error).",
)
_SRC_GRID = flags.DEFINE_string(
    "src_grid", None, "tmspr with --resize_pos: the checkpoint's grid as HxW when it cannot be inferred."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the contents of an existing --out folder.")

MODES = ("timm", "tmspr", "schp")


def _parse_grid(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise app.UsageError(f"--src_grid={text!r}: expected HxW, e.g. 22x11") from None
    return h, w


def _check_out() -> None:
    """``--out`` before anything is read: a folder to make, or an empty one (or any with ``--overwrite``)."""
    from tmspr_jax.utils import check_output_path

    if not _OUT.value:
        raise app.UsageError("--out is required")
    check_output_path(_OUT.value, "folder")
    if os.path.isdir(_OUT.value) and os.listdir(_OUT.value) and not _OVERWRITE.value:
        raise ValueError(f"--out {_OUT.value!r} exists and is not empty; choose a new folder or pass --overwrite")


def main(argv: list[str]) -> None:
    from convert_weights.convert import convert_file
    from tmspr_jax.utils import one_line_errors, pair
    from tmspr_jax.weights import save_variables

    if len(argv) != 3 or argv[1] not in MODES:
        raise app.UsageError(f"usage: python -m convert_weights {{{'|'.join(MODES)}}} SRC --out DIR --config=X.py")
    mode, src = argv[1], argv[2]
    if mode == "schp":
        _convert_schp(src)
        return
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (it gives the model size, stride and img_size)")
    with one_line_errors():
        _check_out()
    if mode == "timm" and (_RESIZE_POS.value or _SRC_GRID.value):
        raise app.UsageError("--resize_pos/--src_grid are for tmspr mode; timm mode always resizes the ImageNet grid")
    cfg = _CONFIG.value
    # Every reader, mapping and weights error is a ValueError: one line naming the file, key and value, no traceback.
    with one_line_errors():
        variables, meta, report = convert_file(
            src,
            cfg.model,
            pair(cfg.img_size, "config.img_size"),
            jax.random.key(_SEED.value),
            num_classes=_NUM_CLASSES.value,
            num_cameras=_NUM_CAMERAS.value,
            resize_pos=_RESIZE_POS.value,
            src_grid=_parse_grid(_SRC_GRID.value),
            mode=mode,
        )
        meta["seed"] = _SEED.value
        save_variables(_OUT.value, variables, meta, overwrite=_OVERWRITE.value)
    print(report.summary())
    n = sum(int(x.size) for x in jax.tree_util.tree_leaves(variables))
    print(
        f"kind: {meta['kind']}; classes: {meta['num_classes']}; cameras: {meta['num_cameras']}; "
        f"grid: {meta['grid'][0]}x{meta['grid'][1]}; {n:,} values"
    )
    print(f"wrote {_OUT.value}")


def _convert_schp(src: str) -> None:
    from convert_weights import schp
    from tmspr_jax.utils import one_line_errors

    with one_line_errors():  # a missing, unknown or mis-shaped key: one line naming it
        _check_out()
        report = schp.convert_file(src, _OUT.value, overwrite=_OVERWRITE.value)
    print("\n".join(report))
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    from tmspr_jax.tools import cli  # one error line for a config mistake, as every command that takes --config

    app.run(main, flags_parser=cli.parse_flags)

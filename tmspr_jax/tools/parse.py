"""Human parsing of a folder of images with the converted SCHP parser: a drop-in for SCHP's ``simple_extractor.py``.

    python -m tmspr_jax.tools.parse --parser=weights/schp_lip --images=DIR --out=DIR [--logits]
        [--dtype=bfloat16] [--batch_size=8]

For every image ``DIR/<stem>.<ext>`` (jpg, jpeg, png, bmp, webp, tif, tiff; sorted; other files ignored) it writes
``<out>/<stem>.png``, a palette PNG of class indices (SCHP's palette), and with ``--logits`` ``<out>/<stem>.npy``,
the float32 ``[h, w, C]`` fusion logits at the image's size. Preprocessing and back-warp are SCHP's (docs/parsing.md).
The PNG/NPY pairs are what ``python -m tmspr_jax.tools.parsing_targets --maps_dir`` reads; to go straight to
training targets, use ``python -m tmspr_jax.tools.parsing_targets --parser`` instead.

Which is which: this command runs the human parser (:mod:`tmspr_jax.parser`, SCHP's network in Flax) and writes its
maps, as SCHP's own script does; :mod:`tmspr_jax.data.parsing` turns such maps into HSPM's training targets.

Restartable: outputs are written whole (temporary name, then renamed) and each label PNG records what it was made from
(a ``tmspr_parse`` text chunk: the source image's path, size and modification time, and the parser's weights file,
dtype and batch size). A rerun skips the batches whose outputs all exist *and* were made from the same image by the same
parser and settings, and redoes the others, so a killed run resumes and ends with the files an uninterrupted run writes
(same ``--batch_size``, same device count), and maps of other images with the same names (or of an edited image) in
``--out`` are never counted as done. ``--out`` must be a folder other than ``--images`` (the maps would overwrite
input PNGs). A corrupt or unreadable image stops the run with an error naming it.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, NamedTuple

import numpy as np

from tmspr_jax.tools import cli

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
RECORD_KEY = "tmspr_parse"  # the PNG text chunk recording what a label map was made from


class ParseSummary(NamedTuple):
    images: int
    parsed: int  # images computed by this call (the rest were already done)
    out_dir: str
    finished: bool
    stale: int = 0  # outputs found in --out that were made from other images or settings (redone or to redo)


def check_out_dir(images_dir: str, out_dir: str) -> None:
    """Before any work: ``out_dir`` is a folder (or is to be made) and not ``images_dir``, whose PNGs it would
    overwrite."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir!r} is a file; expected a folder for the label maps")
    if os.path.isdir(out_dir) and os.path.isdir(images_dir) and os.path.samefile(out_dir, images_dir):
        raise ValueError(
            f"--out {out_dir!r} is the --images folder: the label maps <stem>.png would overwrite its images; "
            "give another folder"
        )


def source_record(image_path: str, fingerprint: dict[str, Any]) -> str:
    """What an output is made from: the image file (absolute path, size, modification time) and the parser's
    fingerprint (weights file, dtype, batch size), as the JSON text stored in the label PNG."""
    st = os.stat(image_path)
    src = {"path": os.path.abspath(image_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return json.dumps({"source": src, "parser": fingerprint}, sort_keys=True)


def made_from(png_path: str) -> str | None:
    """The record stored in a label PNG written by this command (None: missing, unreadable or not recorded)."""
    from PIL import Image

    try:
        with Image.open(png_path) as im:  # the text chunk precedes the pixels: only the header is read
            return im.info.get(RECORD_KEY)
    except (OSError, ValueError):
        return None


def list_images(folder: str) -> list[str]:
    """Image files directly in ``folder``, sorted; two images with the same stem are an error (same outputs)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images {folder!r} is not a directory")
    names = sorted(
        n
        for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
    )
    stems: dict[str, str] = {}
    for n in names:
        stem = os.path.splitext(n)[0]
        if stem in stems:
            raise ValueError(f"{folder}: {stems[stem]} and {n} would both write {stem}.png; rename one")
        stems[stem] = n
    if not names:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return names


def _save_atomic(path: str, write) -> None:
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext}"
    write(tmp)
    os.replace(tmp, path)


def parse_folder(
    parser_dir: str,
    images_dir: str,
    out_dir: str,
    *,
    logits: bool = False,
    dtype: str = "float32",
    batch_size: int = 8,
    max_images: int | None = None,
    progress: bool = True,
    parser: Any = None,
) -> ParseSummary:
    """Parses every image of ``images_dir`` into ``out_dir`` (see the module docstring). ``max_images`` stops after
    about that many images (whole batches): the run is then unfinished and a later call completes it. ``parser``: an
    already built :class:`tmspr_jax.parser.runner.Parser` to use instead of loading ``parser_dir``."""
    from PIL import Image, PngImagePlugin

    from tmspr_jax.parser import preprocess
    from tmspr_jax.parser.runner import Item, Parser

    check_out_dir(images_dir, out_dir)
    names = list_images(images_dir)
    parser = parser or Parser(parser_dir, dtype=dtype, batch_size=batch_size)
    os.makedirs(out_dir, exist_ok=True)
    pal = preprocess.palette(parser.num_classes)
    stems = [os.path.splitext(n)[0] for n in names]
    fingerprint = parser.fingerprint()
    records = [source_record(os.path.join(images_dir, n), fingerprint) for n in names]

    def outputs(i: int) -> list[str]:
        base = os.path.join(out_dir, stems[i])
        return [base + ".png"] + ([base + ".npy"] if logits else [])

    def done(i: int) -> bool:  # the .npy is written just before its PNG, so the PNG's record covers both
        png, *npy = outputs(i)
        return all(os.path.isfile(o) for o in npy) and made_from(png) == records[i]

    items = [Item(n, functools.partial(preprocess.read_image, os.path.join(images_dir, n))) for n in names]
    b = parser.batch_size
    stale = sum(os.path.isfile(outputs(i)[0]) and not done(i) for i in range(len(items)))
    todo = [
        k
        for k in range(parser.num_batches(len(items)))
        if not all(done(i) for i in range(k * b, min((k + 1) * b, len(items))))
    ]
    if max_images is not None:
        todo = todo[: max(1, -(-max_images // b))]
    index = {n: i for i, n in enumerate(names)}

    def post(item: Item, lg: np.ndarray) -> None:
        i = index[item.name]
        png, *npy = outputs(i)
        if npy:
            _save_atomic(npy[0], lambda p: np.save(p, lg))
        im = Image.fromarray(np.asarray(np.argmax(lg, axis=2), dtype=np.uint8))
        im.putpalette(pal)
        info = PngImagePlugin.PngInfo()
        info.add_text(RECORD_KEY, records[i])
        _save_atomic(png, lambda p: im.save(p, format="PNG", pnginfo=info))

    parser.run(items, post, lambda *_: None, todo=todo, progress=progress)
    parsed = sum(len(items[k * b : (k + 1) * b]) for k in todo)
    finished = all(done(i) for i in range(len(items)))
    return ParseSummary(len(items), parsed, os.path.abspath(out_dir), finished, stale)


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    s = parse_folder(
        f.parser, f.images, f.out, logits=f.logits, dtype=f.dtype, batch_size=f.batch_size, max_images=f.max_images
    )
    state = "done" if s.finished else "unfinished (rerun to continue)"
    stale = f"; {s.stale} maps in --out were made from other images or settings and are redone" if s.stale else ""
    print(
        f"{s.parsed} of {s.images} images parsed by this run ({s.images - s.parsed} already done{stale}); "
        f"outputs in {s.out_dir}: {state}"
    )


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("parser", None, "Converted SCHP parser folder (python -m convert_weights schp ...).")
    flags.DEFINE_string("images", None, "Folder of images to parse.")
    flags.DEFINE_string("out", None, "Output folder for <stem>.png (and <stem>.npy with --logits).")
    flags.DEFINE_bool("logits", False, "Also write the [h, w, C] float32 logits as <stem>.npy.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Convolution dtype on the device.")
    flags.DEFINE_integer("batch_size", 8, "Images per batch per device.")
    flags.DEFINE_integer("max_images", None, "Stop after about this many images (whole batches); rerun to continue.")


if __name__ == "__main__":
    define_flags()
    cli.run(_main, required=["parser", "images", "out"])

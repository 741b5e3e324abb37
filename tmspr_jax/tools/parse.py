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

Restartable: outputs are written whole (temporary name, then renamed) and a rerun skips the batches whose outputs all
exist, so a killed run resumes and ends with the files an uninterrupted run writes (same ``--batch_size``, same
device count). A corrupt or unreadable image stops the run with an error naming it.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import numpy as np

from tmspr_jax.tools import cli

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ParseSummary(NamedTuple):
    images: int
    parsed: int  # images computed by this call (the rest were already done)
    out_dir: str
    finished: bool


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
    from PIL import Image

    from tmspr_jax.parser import preprocess
    from tmspr_jax.parser.runner import Item, Parser

    names = list_images(images_dir)
    parser = parser or Parser(parser_dir, dtype=dtype, batch_size=batch_size)
    os.makedirs(out_dir, exist_ok=True)
    pal = preprocess.palette(parser.num_classes)
    stems = [os.path.splitext(n)[0] for n in names]

    def outputs(i: int) -> list[str]:
        base = os.path.join(out_dir, stems[i])
        return [base + ".png"] + ([base + ".npy"] if logits else [])

    items = [Item(n, functools.partial(preprocess.read_image, os.path.join(images_dir, n))) for n in names]
    b = parser.batch_size
    todo = [
        k
        for k in range(parser.num_batches(len(items)))
        if not all(os.path.isfile(o) for i in range(k * b, min((k + 1) * b, len(items))) for o in outputs(i))
    ]
    if max_images is not None:
        todo = todo[: max(1, -(-max_images // b))]
    index = {n: i for i, n in enumerate(names)}

    def post(item: Item, lg: np.ndarray) -> None:
        png, *npy = outputs(index[item.name])
        if npy:
            _save_atomic(npy[0], lambda p: np.save(p, lg))
        im = Image.fromarray(np.asarray(np.argmax(lg, axis=2), dtype=np.uint8))
        im.putpalette(pal)
        _save_atomic(png, lambda p: im.save(p, format="PNG"))

    parser.run(items, post, lambda *_: None, todo=todo, progress=progress)
    parsed = sum(len(items[k * b : (k + 1) * b]) for k in todo)
    finished = all(os.path.isfile(o) for i in range(len(items)) for o in outputs(i))
    return ParseSummary(len(items), parsed, os.path.abspath(out_dir), finished)


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    s = parse_folder(
        f.parser, f.images, f.out, logits=f.logits, dtype=f.dtype, batch_size=f.batch_size, max_images=f.max_images
    )
    state = "done" if s.finished else "unfinished (rerun to continue)"
    print(
        f"{s.parsed} of {s.images} images parsed by this run ({s.images - s.parsed} already done); "
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

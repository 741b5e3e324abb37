"""A dataset split at a glance: one image per identity in a grid, the split's counts in the title.

    python -m tmspr_jax.tools.dataset_sheet --dataset=partial_reid --split=query --out=sheet.jpg
        [--config=configs/X.py] [--data_dir=DIR] [--manual_dir=DIR] [--columns=0] [--tile=128,64] [--max_ids=0]

The split is read from the prepared dataset under ``--data_dir`` (default: the config's ``data.data_dir``); with
``--manual_dir`` (default: the config's, when ``--dataset`` is the config's) a dataset not yet prepared is built from
its release folder first, and the demo's synthetic set is generated when missing. Each identity shows its first image
in record order (the builders store sorted file names), framed dark grey, its identity under it; identities in
increasing order, row by row. The title gives the split's identities, images and cameras as
``python -m tmspr_jax.tools.prepare`` counts them. Put sheets of the training and test splits side by side to see,
e.g., Occluded-Duke's occluded queries against its mostly whole training images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tmspr_jax.tools import cli
from tmspr_jax.utils import check_output_path

FRAME = (60, 60, 60)


def first_per_identity(pids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(identities, record)``: the sorted distinct identities and the index of each one's first record."""
    pids = np.asarray(pids)
    ids, first = np.unique(pids, return_index=True)
    return ids, first


def auto_columns(n: int, tile: tuple[int, int]) -> int:
    """Columns that make a sheet of ``n`` tiles of ``tile = (H, W)`` about 4:3 wide."""
    return max(1, min(n, math.ceil(math.sqrt(n * tile[0] / tile[1] * 4 / 3))))


def render_sheet(
    images: Sequence[np.ndarray],
    title: str,
    *,
    tile: tuple[int, int] = (128, 64),
    columns: int = 0,
    border: int = 2,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """Tiles of ``images`` resized to ``tile = (H, W)`` and framed by ``border`` pixels of :data:`FRAME`, ``columns``
    per row (0: :func:`auto_columns`), under a ``title`` band; ``labels`` under the tiles."""
    if not images:
        raise ValueError("render_sheet: no images")
    h, w = int(tile[0]), int(tile[1])
    cols = int(columns) or auto_columns(len(images), (h, w))
    rows = math.ceil(len(images) / cols)
    cell_w, cell_h = w + 2 * border, h + 2 * border + (12 if labels is not None else 0)
    title_h = 16
    canvas = Image.new("RGB", (max(cols * cell_w, 6 * len(title) + 4), title_h + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), title, fill=(0, 0, 0))
    for i, img in enumerate(images):
        x, y = (i % cols) * cell_w, title_h + (i // cols) * cell_h
        draw.rectangle([x, y, x + w + 2 * border - 1, y + h + 2 * border - 1], fill=FRAME)
        small = Image.fromarray(np.asarray(img, np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
        canvas.paste(small, (x + border, y + border))
        if labels is not None:
            draw.text((x + 1, y + h + 2 * border), str(labels[i])[: max(1, cell_w // 6)], fill=(0, 0, 0))
    return canvas


def sheet(split: Any, *, tile: tuple[int, int] = (128, 64), columns: int = 0, max_ids: int = 0) -> Image.Image:
    """The sheet of a :class:`tmspr_jax.data.sources.ReIDSplit` (see the module doc)."""
    from tmspr_jax.data import sources

    if len(split) == 0:
        raise ValueError(f"{split.name}/{split.split}: the split is empty")
    ids, first = first_per_identity(split.pids)
    stats = split.stats()
    title = (
        f"{split.name} {split.split}: {stats['ids']} identities, {stats['images']} images, {stats['cameras']} cameras"
    )
    if max_ids and len(ids) > max_ids:
        ids, first = ids[:max_ids], first[:max_ids]
        title += f" (first {max_ids} identities shown)"
    images = [sources.decode_image(split[int(i)]) for i in first]
    return render_sheet(images, title, tile=tile, columns=columns, labels=[str(p) for p in ids])


def sheet_to_file(
    dataset: str, split: str, data_dir: str, out: str, *, manual_dir: str = "", **kwargs: Any
) -> tuple[str, dict[str, int]]:
    """Opens (building it from ``manual_dir`` if needed) ``dataset``'s ``split``, writes its sheet to ``out`` (JPEG
    or PNG by extension) and returns the path and the split's counts."""
    from tmspr_jax.data import sources

    check_output_path(out, "file")  # before the split is opened (or built)
    source = sources.open_split(dataset, split, data_dir, manual_dir=manual_dir or None)
    picture = sheet(source, **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if out.lower().endswith((".jpg", ".jpeg")):
        picture.save(out, quality=85, optimize=True)
    else:
        picture.save(out)
    return out, source.stats()


def _tile(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--tile={text!r}: expected HEIGHT,WIDTH in pixels, e.g. 128,64") from None
    if h < 1 or w < 1:
        raise ValueError(f"--tile={text!r}: sizes must be positive")
    return h, w


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    config = cli.config_or_demo(f.config)
    d = config.data
    dataset = f.dataset or str(d.test)
    ours = dataset in (str(d.train), str(d.test))
    manual_dir = f.manual_dir or (str(d.manual_dir) if ours and d.manual_dir else "")
    if ours and d.synthetic and manual_dir:
        from tmspr_jax.datagen import ensure

        ensure.ensure_synthetic_dataset(manual_dir, d.synthetic_options.to_dict())
    path, stats = sheet_to_file(
        dataset,
        f.split,
        f.data_dir or str(d.data_dir),
        f.out,
        manual_dir=manual_dir,
        tile=_tile(f.tile),
        columns=f.columns,
        max_ids=f.max_ids,
    )
    shown = min(stats["ids"], f.max_ids) if f.max_ids else stats["ids"]
    print(
        f"{dataset} {f.split}: {stats['ids']} identities, {stats['images']} images, {stats['cameras']} cameras; "
        f"{shown} tiles written to {path} ({os.path.getsize(path) / 1024:.0f} KiB)"
    )


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config giving data_dir/manual_dir (default: the demo).")
    flags.DEFINE_string("dataset", "", "Builder name, e.g. partial_reid, occluded_duke (default: the config's test).")
    flags.DEFINE_enum("split", "query", ["train", "query", "gallery"], "Which split.")
    flags.DEFINE_string("out", None, "Output picture (.jpg or .png).")
    flags.DEFINE_string("data_dir", "", "Prepared datasets folder (default: the config's data.data_dir).")
    flags.DEFINE_string("manual_dir", "", "Release folder to build the dataset from if it is not prepared.")
    flags.DEFINE_integer("columns", 0, "Tiles per row (0 = about 4:3).")
    flags.DEFINE_string("tile", "128,64", "Tile HEIGHT,WIDTH in pixels.")
    flags.DEFINE_integer("max_ids", 0, "Show at most this many identities (0 = all).")
    cli.run(_main, required=["out"])

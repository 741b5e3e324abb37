"""Renders training samples x the four T-MSPR views as one labelled picture, to see what the model trains on.

    python -m tmspr_jax.tools.views --dataset NAME --data_dir DIR --out views.png [--num 6 --seed 0 --img_size H W]
    python -m tmspr_jax.tools.views --images DIR --out views.png

One row per sample: the image resized as the based view resizes it, then the based, amplifying, covering and
shrinking views (:mod:`tmspr_jax.data.views`), denormalised. With ``--dataset`` the split's own images are the
covering view's occluders; with ``--images`` the folder's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from tmspr_jax.config import get_base_config
from tmspr_jax.data import sources, views
from tmspr_jax.utils import one_line_errors, pair


def denormalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Maps a normalised HWC float image back to uint8 for display (values outside [0, 255] are clipped)."""
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return np.clip(np.round((x * s + m) * 255.0), 0, 255).astype(np.uint8)


def render_grid(
    images: Sequence[np.ndarray],
    rng: np.random.Generator,
    occluders: views.OccluderSource,
    img_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    occluder_normalize: bool = False,
) -> Image.Image:
    """A labelled grid: one row per image, columns original (bicubic-resized) + the four views, denormalised."""
    h, w = pair(img_size, "img_size")
    gap, header = 4, 14
    cols = ("original",) + views.VIEW_NAMES
    canvas = Image.new("RGB", (len(cols) * (w + gap) + gap, header + len(images) * (h + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(cols):
        draw.text((gap + c * (w + gap), 2), name, fill=(0, 0, 0))
    for r, image in enumerate(images):
        four = views.train_views(image, rng, occluders, (h, w), mean, std, occluder_normalize)
        cells = [views.pil_resize(image, (h, w), Image.Resampling.BICUBIC)] + [denormalize(v, mean, std) for v in four]
        for c, cell in enumerate(cells):
            canvas.paste(Image.fromarray(cell), (gap + c * (w + gap), header + gap + r * (h + gap)))
    return canvas


def main(argv: Sequence[str] | None = None) -> None:
    """Render ``--num`` random training samples of a split x the four views to a PNG."""
    base = get_base_config()
    p = argparse.ArgumentParser(prog="python -m tmspr_jax.tools.views", description=main.__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="TFDS builder name (its train split is read, and gives the occluders)")
    src.add_argument("--images", help="a folder of image files (samples and occluders), instead of --dataset")
    p.add_argument("--data_dir", default=base.data.data_dir, help="TFDS data dir (with --dataset)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--num", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img_size", type=int, nargs=2, default=list(base.img_size), metavar=("H", "W"))
    p.add_argument("--mean", type=float, nargs=3, default=list(base.data.mean))
    p.add_argument("--std", type=float, nargs=3, default=list(base.data.std))
    p.add_argument("--occluder_normalize", action="store_true")
    args = p.parse_args(argv)
    if args.num < 1:
        p.error(f"--num: expected >= 1, got {args.num}")

    rng = np.random.default_rng(args.seed)
    if args.images:
        pool = views.read_image_dir(args.images, "--images")
        occluders: views.OccluderSource = views.OccluderBank.from_arrays(pool, name=args.images)
        picks = rng.choice(len(pool), size=min(args.num, len(pool)), replace=False)
        images = [pool[i] for i in picks]
    else:
        split = sources.open_split(args.dataset, args.split, args.data_dir)
        occluders = views.OccluderBank.from_records(split, name=f"{args.dataset}/{args.split}")
        picks = rng.choice(len(split), size=min(args.num, len(split)), replace=False)
        images = [views.decode_rgb(split[int(i)]["image"], f"{args.dataset}/{args.split}[{int(i)}]") for i in picks]
    grid = render_grid(images, rng, occluders, tuple(args.img_size), args.mean, args.std, args.occluder_normalize)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}: {len(images)} samples x (original + {len(views.VIEW_NAMES)} views)")


if __name__ == "__main__":
    with one_line_errors():  # a missing folder or dataset, an unreadable image: one line, no traceback
        main(sys.argv[1:])

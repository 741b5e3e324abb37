"""A learning-free re-ID baseline: colour histograms of horizontal stripes, scored with the reference's protocol.

What a trained model should beat on a test split. Each image is resized to the config's ``img_size``; its central
columns (where the person usually stands) are cut into horizontal stripes; each stripe gives a histogram over
``bins**3`` RGB colours (square-rooted, so large regions do not swamp small ones). Features are centred on the
gallery mean, then L2-normalised and ranked exactly like the model's (``tmspr_jax.evaluate.compute_metrics``).

    python -m tmspr_jax.tools.colour_baseline [--config=configs/demo.py --stripes 8 --bins 4 --centre 0.5]

The dataset must already be prepared (for the demo: run the demo once, or ``--prepare``).
"""

from __future__ import annotations

import json

import ml_collections
import numpy as np
from PIL import Image

from tmspr_jax import evaluate
from tmspr_jax.data import sources
from tmspr_jax.data.views import pil_resize
from tmspr_jax.tools import cli
from tmspr_jax.utils import check_output_path


def stripe_colour_histograms(images: np.ndarray, stripes: int = 8, bins: int = 4, centre: float = 0.5) -> np.ndarray:
    """``[N, stripes * bins**3]`` square-rooted colour histograms of ``stripes`` horizontal bands of the central
    ``centre`` fraction of the columns of ``uint8`` images ``[N, H, W, 3]`` (each band's histogram sums to 1 before
    the square root)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"stripe_colour_histograms: expected uint8 images [N, H, W, 3], got shape {images.shape}")
    n, h, w, _ = images.shape
    if not 1 <= stripes <= h:
        raise ValueError(f"stripes={stripes}: expected 1..{h} (the image height)")
    if not 1 <= bins <= 256:
        raise ValueError(f"bins={bins}: expected 1..256 per channel")
    if not 0 < centre <= 1:
        raise ValueError(f"centre={centre}: expected a fraction of the width in (0, 1]")
    keep = max(1, int(round(centre * w)))
    left = (w - keep) // 2
    q = (images[:, :, left : left + keep].astype(np.int64) * bins) // 256  # per-channel bin 0..bins-1
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]  # [N, H, keep]
    edges = np.linspace(0, h, stripes + 1).round().astype(int)
    row_stripe = np.searchsorted(edges, np.arange(h), side="right") - 1  # stripe of each image row
    # One bincount over (image, stripe, colour) cells instead of a histogram per image and stripe.
    cell = (np.arange(n)[:, None, None] * stripes + row_stripe[None, :, None]) * bins**3 + code
    out = np.bincount(cell.ravel(), minlength=n * stripes * bins**3).reshape(n, stripes, bins**3).astype(np.float32)
    out /= out.sum(axis=2, keepdims=True)
    return np.sqrt(out).reshape(n, -1)


def _split_images(split: sources.ReIDSplit, size: tuple[int, int]) -> np.ndarray:
    """Every image of the split, decoded and resized like the eval transform (bilinear), ``uint8 [N, H, W, 3]``."""
    return np.stack(
        [pil_resize(sources.decode_image(split[i]), size, Image.Resampling.BILINEAR) for i in range(len(split))]
    )


def evaluate_config(config: ml_collections.ConfigDict, stripes: int = 8, bins: int = 4, centre: float = 0.5) -> dict:
    """Metrics of the colour-histogram feature on the config's test split (query against gallery)."""
    d = config.data
    manual = d.manual_dir or None
    query = sources.open_split(d.test, "query", d.data_dir, manual_dir=manual)
    gallery = sources.open_split(d.test, "gallery", d.data_dir, manual_dir=manual)
    size = tuple(int(s) for s in config.img_size)
    qf = stripe_colour_histograms(_split_images(query, size), stripes, bins, centre)
    gf = stripe_colour_histograms(_split_images(gallery, size), stripes, bins, centre)
    mean = gf.mean(axis=0, keepdims=True)  # centring: colours common to every image say nothing about identity
    feats = np.concatenate([qf - mean, gf - mean])
    pids = np.concatenate([query.pids, gallery.pids])
    camids = np.concatenate([query.camids, gallery.camids])
    return evaluate.compute_metrics(feats, pids, camids, len(query), config.eval)


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    config = cli.config_or_demo(f.config)
    if f.out:
        check_output_path(f.out, "file")  # before any data is read
    if f.prepare:
        from tmspr_jax.datagen import ensure

        ensure.prepare_for_config(config)
    results = evaluate_config(config, f.stripes, f.bins, f.centre)
    print(
        f"colour-histogram baseline ({f.stripes} stripes x {f.bins**3} colours, central {f.centre:.0%}) on "
        f"{config.data.test}: {evaluate.summarize(results)}"
    )
    if f.out:
        with open(f.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config whose test split and img_size to use (default: the demo).")
    flags.DEFINE_integer("stripes", 8, "horizontal stripes")
    flags.DEFINE_integer("bins", 4, "bins per colour channel (bins**3 colours)")
    flags.DEFINE_float("centre", 0.5, "fraction of the width (central columns) histogrammed")
    flags.DEFINE_bool("prepare", False, "generate / build the config's dataset first if needed")
    flags.DEFINE_string("out", "", "write the metrics as JSON here")
    cli.run(_main)

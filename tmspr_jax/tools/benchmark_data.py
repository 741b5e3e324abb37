r"""Training-pipeline throughput (samples/s, four views each) against the number of grain worker processes.

    python -m tmspr_jax.tools.benchmark_data [--workers=0,1,2] [--batches=12] [--batch_size=32] [--images=1200]

Generates an in-memory Market-like split (128x64 JPEGs of smooth synthetic "pedestrians", 10 images per identity),
runs :class:`tmspr_jax.data.pipeline.TrainPipeline` at ``--img_size`` (default 256x128) for each worker count, and
prints a table. Then, from the per-worker rate, the number of host cores a GPU run consuming ``--target`` samples/s
would need. The first batches (worker start-up) are excluded from the timing.
"""

from __future__ import annotations

import io
import math
import os
import time

import numpy as np
from absl import flags
from PIL import Image

from tmspr_jax.config import get_base_config
from tmspr_jax.data import pipeline, sources, views
from tmspr_jax.data.parsing import ParsingTargets
from tmspr_jax.tools import cli

_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker-process counts to measure.")
_BATCHES = flags.DEFINE_integer("batches", 12, "Timed batches per setting (after the warm-up batches).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Global batch size (P*K, K=4).")
_IMAGES = flags.DEFINE_integer("images", 1200, "Images in the generated split (10 per identity).")
_IMG_SIZE = flags.DEFINE_list("img_size", ["256", "128"], "Model input H,W.")
_TARGET = flags.DEFINE_float("target", 700.0, "GPU consumption rate (samples/s) to size the host for.")


class InMemorySplit:
    """A Market-like training split held in memory, with the ``ReIDSplit`` interface."""

    def __init__(self, num_images: int, per_id: int = 10, size: tuple[int, int] = (128, 64), seed: int = 0):
        rng = np.random.default_rng(seed)
        h, w = size
        self.pids = np.arange(num_images) // per_id
        self.camids = rng.integers(0, 6, num_images)
        self.file_names = np.array(
            [f"{p:04d}_c{c + 1}s1_{i:06d}_00.jpg" for i, (p, c) in enumerate(zip(self.pids, self.camids))], dtype=object
        )
        yy, xx = np.mgrid[0:h, 0:w]
        self._images = []
        for _ in range(num_images):
            # background gradient + a body of two coloured blocks + a head, lightly noisy: JPEG-like content
            img = (rng.random(3) * 255 * (0.6 + 0.4 * yy[..., None] / h)).astype(np.float32)
            img = np.broadcast_to(img, (h, w, 3)).copy()
            cx = w // 2 + rng.integers(-6, 7)
            img[(abs(xx - cx) < 14) & (yy > 30) & (yy < 80)] = rng.random(3) * 255
            img[(abs(xx - cx) < 10) & (yy >= 80) & (yy < 124)] = rng.random(3) * 255
            img[(xx - cx) ** 2 + (yy - 18) ** 2 < 100] = (200, 160, 130)
            img += rng.normal(0, 6, img.shape)
            buf = io.BytesIO()
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
            self._images.append(buf.getvalue())
        self.num_classes = int(self.pids.max()) + 1
        self.num_cameras = 6

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self._images[i],
            "pid": int(self.pids[i]),
            "camid": int(self.camids[i]),
            "file_name": str(self.file_names[i]),
        }


def per_sample_seconds(split: InMemorySplit, cfg, n: int = 64, repeats: int = 3) -> float:
    """Decode + four views of one sample, in this process, without grain (the work a worker does per sample).

    The minimum over ``repeats`` runs: on a shared host it is the least disturbed estimate.
    """
    bank = views.OccluderBank.from_records(split, name="bench")
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            image = sources.decode_image(split[i])
            views.train_views(image, np.random.default_rng(i), bank, cfg.img_size, cfg.data.mean, cfg.data.std, False)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def measure(split: InMemorySplit, targets: ParsingTargets, cfg, num_workers: int, batches: int) -> float:
    """Samples/s of the training pipeline with ``num_workers`` processes (warm-up batches excluded)."""
    cfg.data.num_workers = num_workers
    warmup = 2 + 2 * num_workers  # worker start-up and the first batches' one-off costs stay out of the timing
    pipe = pipeline.TrainPipeline(cfg, split, targets)
    it = pipe.epoch_iterator(0, num_batches=min(pipe.num_batches(0), warmup + batches))
    try:
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        n = 0
        for batch in it:
            n += batch["views"].shape[0]
        dt = time.perf_counter() - t0
    finally:
        it.close()
    return n / dt


def main() -> None:
    cfg = get_base_config()
    cfg.img_size = tuple(int(v) for v in _IMG_SIZE.value)
    cfg.data.batch_size = _BATCH_SIZE.value
    cfg.data.num_instances = 4
    split = InMemorySplit(_IMAGES.value)
    targets = ParsingTargets(
        targets=np.zeros((len(split), 22, 11, 6), np.float32), weights=np.ones(len(split), np.float32), num_missing=0
    )
    print(
        f"host: {os.cpu_count()} logical cores; split: {len(split)} JPEGs 128x64, {split.num_classes} ids; "
        f"input {cfg.img_size[0]}x{cfg.img_size[1]}, batch {cfg.data.batch_size}"
    )
    sec = per_sample_seconds(split, cfg)
    print(f"one sample (decode + 4 views), in-process, no grain: {sec * 1e3:.2f} ms -> {1 / sec:.0f} samples/s/core")
    print(f"{'workers':>8} {'samples/s':>10} {'per worker':>11}")
    rates = {}
    for w in (int(v) for v in _WORKERS.value):
        rate = measure(split, targets, cfg, w, _BATCHES.value)
        rates[w] = rate
        per = f"{rate / w:11.1f}" if w else f"{'-':>11}"
        print(f"{w:>8} {rate:>10.1f} {per}")
    measured = [r / w for w, r in rates.items() if w]
    estimates = {"measured per worker (best)": max(measured)} if measured else {}
    estimates["one core, no grain (min of 3)"] = 1 / sec
    for what, per_worker in estimates.items():
        cores = math.ceil(_TARGET.value / per_worker)
        print(
            f"{what}: {per_worker:.0f} samples/s -> {_TARGET.value:.0f} samples/s needs {cores} worker processes "
            f"= {cores + 1} host cores (workers + the training process), with cores as fast as these"
        )


if __name__ == "__main__":
    cli.run(main)  # flags parsed by tools.cli: a bad flag or config value is one line, no traceback

"""Batched parser inference over every visible device, with SCHP's pre- and post-processing, restartable.

Images are cut into fixed batches (``batch_size`` per device times the device count) in the order given; batch ``k``
always holds the same images at the same positions (the last one padded), so an image's result never depends on which
batches ran before. That makes restarts exact: work is recorded per batch, and a rerun computes only the batches not
recorded, with the same compiled program, giving the same numbers as an uninterrupted run.

Host side: a thread pool decodes and warps the next batches while the device runs (OpenCV releases the GIL) and warps
the logits back to each image; the device side is one ``jax.jit`` program (normalise, network, align-corners upsample
to the input size) with the batch sharded over a 1-D ``'data'`` mesh and the weights replicated.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tmspr_jax.parser import preprocess
from tmspr_jax.parser.network import Arch, AugmentCE2P, resize_align_corners
from tmspr_jax.parser.weights import VARIABLES_FILE, load_parser

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Item(NamedTuple):
    """One image to parse: its name (for outputs and errors) and a function returning it as ``uint8`` BGR."""

    name: str
    load: Callable[[], np.ndarray]


class Prepared(NamedTuple):
    warped: np.ndarray  # uint8 [H, W, 3]
    center: np.ndarray
    scale: np.ndarray
    height: int
    width: int


@functools.lru_cache(maxsize=8)
def _forward_fn(arch: Arch, dtype: str, size: tuple[int, int], out_sharding: Any) -> Callable:
    """The jitted device program, one per network and setting, so that parsers of the same weights share compiles."""
    precision = jax.lax.Precision.HIGHEST if dtype == "float32" else None
    net = AugmentCE2P(arch, dtype=DTYPES[dtype], precision=precision)
    mean = np.asarray(preprocess.BGR_MEAN, np.float32)
    std = np.asarray(preprocess.BGR_STD, np.float32)

    def forward(variables: Any, images: jax.Array) -> jax.Array:
        x = (images.astype(jnp.float32) / 255.0 - mean) / std  # ToTensor then Normalize, as SCHP
        return resize_align_corners(net.apply(variables, x)["fusion"], size)

    return jax.jit(forward, out_shardings=out_sharding)


class Parser:
    """A converted SCHP parser ready to run: ``Parser(folder).logits(batch)`` or :meth:`run` over many images.

    ``dtype='float32'`` computes the convolutions at full float32 precision (``Precision.HIGHEST``, no TF32 on GPUs);
    ``'bfloat16'`` runs them in bfloat16 (batch norms and the upsampling stay float32). ``input_size`` overrides the
    network input SCHP uses for the checkpoint's dataset (``meta.json``).
    """

    def __init__(
        self,
        folder: str,
        *,
        dtype: str = "float32",
        batch_size: int = 8,
        devices: Sequence[jax.Device] | None = None,
        input_size: Sequence[int] | None = None,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.folder = os.path.abspath(folder)
        self.arch, variables, self.meta = load_parser(folder)
        self.input_size = tuple(int(v) for v in (input_size or self.meta["input_size"]))
        self.num_classes = int(self.meta["num_classes"])
        self.labels = tuple(self.meta.get("labels", ()))
        self.dtype = dtype
        devices = list(devices or jax.devices())
        self.mesh = jax.sharding.Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        self.batch_size = batch_size * len(devices)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self._data = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
        self.variables = jax.device_put(variables, replicated)
        self._forward = _forward_fn(self.arch, dtype, self.input_size, self._data)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the numbers: the weights file, dtype and batch size (see the module docstring)."""
        st = os.stat(os.path.join(self.folder, VARIABLES_FILE))
        return {
            "parser": self.folder,
            "weights_size": st.st_size,
            "weights_mtime": int(st.st_mtime),
            "dtype": self.dtype,
            "batch_size": self.batch_size,
        }

    def logits(self, warped: np.ndarray) -> jax.Array:
        """``uint8`` BGR inputs ``[B, H, W, 3]`` already warped to the input size (``B`` = :attr:`batch_size`) ->
        input-sized fusion logits ``[B, H, W, C]`` float32 (dispatched asynchronously)."""
        return self._forward(self.variables, jax.device_put(warped, self._data))

    def prepare(self, item: Item) -> Prepared:
        img = item.load()
        warped, center, scale = preprocess.warp_to_input(img, self.input_size)
        return Prepared(warped, center, scale, int(img.shape[0]), int(img.shape[1]))

    def to_image(self, logits: np.ndarray, p: Prepared) -> np.ndarray:
        """Input-sized logits of one image -> ``[h, w, C]`` at the image's own size (SCHP's ``transform_logits``)."""
        return preprocess.warp_to_image(logits, p.center, p.scale, p.height, p.width, self.input_size)

    def num_batches(self, n: int) -> int:
        return -(-n // self.batch_size)

    def run(
        self,
        items: Sequence[Item],
        post: Callable[[Item, np.ndarray], Any],
        on_batch: Callable[[int, list[Item], list[Any]], None],
        *,
        todo: Iterable[int] | None = None,
        workers: int | None = None,
        progress: bool = True,
        desc: str = "parsing",
    ) -> None:
        """Parses ``items`` batch by batch: ``post(item, logits [h, w, C])`` runs in worker threads for each image,
        then ``on_batch(k, items, results)`` in this thread, batches in order. ``todo`` limits the batches run."""
        b = self.batch_size
        todo = list(range(self.num_batches(len(items))) if todo is None else todo)
        workers = workers or min(16, os.cpu_count() or 1)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(len(items[k * b : (k + 1) * b]) for k in todo), desc=desc, unit="img")
        with ThreadPoolExecutor(workers) as pool:

            def load(k: int) -> list:
                return [pool.submit(self.prepare, it) for it in items[k * b : (k + 1) * b]]

            def finish(k: int, out: jax.Array, prepared: list[Prepared]) -> None:
                host = np.asarray(out)
                batch = list(items[k * b : (k + 1) * b])
                results = list(
                    pool.map(lambda i: post(batch[i], self.to_image(host[i], prepared[i])), range(len(batch)))
                )
                on_batch(k, batch, results)
                if bar is not None:
                    bar.update(len(batch))

            ahead = {k: load(k) for k in todo[:2]}
            prev = None
            for pos, k in enumerate(todo):
                prepared = [f.result() for f in ahead.pop(k)]
                stack = np.zeros((b, *self.input_size, 3), np.uint8)
                for i, p in enumerate(prepared):
                    stack[i] = p.warped
                out = self.logits(stack)
                if pos + 2 < len(todo):
                    ahead[todo[pos + 2]] = load(todo[pos + 2])
                if prev is not None:
                    finish(*prev)
                prev = (k, out, prepared)
            if prev is not None:
                finish(*prev)
        if bar is not None:
            bar.close()


def run_restartable(
    parser: Parser,
    items: Sequence[Item],
    post: Callable[[Item, np.ndarray], np.ndarray],
    work_dir: str,
    settings: dict[str, Any],
    *,
    max_images: int | None = None,
    progress: bool = True,
    desc: str = "parsing",
) -> np.ndarray | None:
    """Runs ``post`` (returning an array per image) over ``items`` and returns the stacked results, recording
    each finished batch in ``work_dir`` (``settings.json`` + ``batch_<k>.npy``) so that a killed run resumes there.

    ``settings`` (plus the parser's fingerprint and the item names) must equal the recorded ones, otherwise the
    records are discarded and the run starts over. ``max_images`` stops after about that many images (whole
    batches) and returns None: the run is unfinished, a later call completes it.
    """
    if not items:
        raise ValueError("no images to parse")
    names_hash = hashlib.sha256("\n".join(it.name for it in items).encode()).hexdigest()
    want = json.loads(json.dumps({**settings, **parser.fingerprint(), "items": names_hash}))
    settings_file = os.path.join(work_dir, "settings.json")
    if os.path.isdir(work_dir):
        have = None
        if os.path.isfile(settings_file):
            with open(settings_file) as f:
                try:
                    have = json.load(f)
                except json.JSONDecodeError:
                    have = None
        if have != want:
            logging.warning("%s holds batches made with other settings; starting over", work_dir)
            shutil.rmtree(work_dir)
    if not os.path.isdir(work_dir):
        os.makedirs(work_dir)
        with open(settings_file + ".tmp", "w") as f:
            json.dump(want, f, indent=1, sort_keys=True)
        os.replace(settings_file + ".tmp", settings_file)

    def batch_file(k: int) -> str:
        return os.path.join(work_dir, f"batch_{k:06d}.npy")

    n_batches = parser.num_batches(len(items))
    todo = [k for k in range(n_batches) if not os.path.isfile(batch_file(k))]
    if todo and len(todo) < n_batches:
        logging.info("resuming: %d of %d batches already done in %s", n_batches - len(todo), n_batches, work_dir)
    if max_images is not None:
        todo = todo[: max(1, -(-max_images // parser.batch_size))]

    def on_batch(k: int, _: list[Item], results: list[np.ndarray]) -> None:
        tmp = batch_file(k) + ".tmp.npy"
        np.save(tmp, np.stack(results))
        os.replace(tmp, batch_file(k))  # a batch is recorded whole or not at all

    parser.run(items, post, on_batch, todo=todo, progress=progress, desc=desc)
    if any(not os.path.isfile(batch_file(k)) for k in range(n_batches)):
        return None
    return np.concatenate([np.load(batch_file(k)) for k in range(n_batches)])

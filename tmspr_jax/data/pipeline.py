"""grain pipelines: PK training batches with four views, and fixed-order evaluation batches.

Training: the PK sampler's ``[num_batches, B]`` index array of each epoch -> this process's rows of every global batch
-> (epoch, position, record) elements of all the epochs to run, concatenated (:meth:`TrainPipeline.run_iterator`: the
worker processes start once per run, not once per epoch) -> per-sample record decode + four views (``MapDataset.map``)
-> ``.batch(b)`` -> ``to_iter_dataset`` -> ``mp_prefetch`` -> parsing targets added in the main process. Batching
happens *before* ``mp_prefetch``: grain then hands whole batches round-robin to the workers and interleaves them back
in order, so each batch's composition and the batch order do not depend on the number of workers
(``grain.DataLoader`` with workers would reorder PK batches). Every sample's random views come from a generator seeded
by ``(seed, epoch, global position in the epoch)``, so the arrays are also independent of the number of workers and of
processes.

Resuming: a batch is a pure function of ``(config, split, epoch, batch index)``, so the pipeline's JSON-able state is
just that position (plus what must not change for it to mean the same thing); restoring rebuilds the dataset from the
saved batch on. See :class:`TrainPipeline`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import grain
import ml_collections
import numpy as np
from absl import flags, logging

from tmspr_jax.data import sampler as sampler_lib
from tmspr_jax.data import sources, views
from tmspr_jax.utils import pair

STATE_VERSION = 1
VIEWS_STREAM = 2  # tag of the per-sample view generators (the sampler uses sampler.SAMPLER_STREAM)


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of the views of the sample at global ``position`` of ``epoch`` (the same on any worker/host)."""
    if seed < 0 or epoch < 0 or position < 0:
        raise ValueError(f"config.seed, epoch and position must be >= 0, got {seed}, {epoch}, {position}")
    return np.random.default_rng([seed, epoch, VIEWS_STREAM, position])


class Split(Protocol):
    """What the pipelines need from a split (``tmspr_jax.data.sources.ReIDSplit`` provides it)."""

    pids: np.ndarray
    camids: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


def train_labels(pids: np.ndarray) -> np.ndarray:
    """Train labels 0..C-1 in sorted raw-pid order (identity on already relabelled pids)."""
    _, labels = np.unique(np.asarray(pids), return_inverse=True)
    return labels.astype(np.int32)


def _read_options(num_workers: int, prefetch_buffer: int) -> grain.ReadOptions:
    # Elements are whole batches here: a small buffer bounds memory (a 32x4x256x128x3 f32 batch is 50 MB). Inside
    # worker processes one thread per worker is enough; in-process, a few threads overlap PIL decoding (GIL released).
    buffer = max(1, int(prefetch_buffer))
    return grain.ReadOptions(num_threads=1 if num_workers > 0 else buffer, prefetch_buffer_size=buffer)


def _maybe_mp_prefetch(ds: grain.IterDataset, num_workers: int, prefetch_buffer: int) -> grain.IterDataset:
    if num_workers < 0:
        raise ValueError(f"config.data.num_workers must be >= 0, got {num_workers}")
    if num_workers == 0:
        return ds
    if not flags.FLAGS.is_parsed():
        # grain's worker processes read absl flags; unparsed flags fail deep inside grain.
        raise RuntimeError(
            f"config.data.num_workers={num_workers} needs parsed absl flags (grain workers read them): run under "
            "absl.app.run, or call absl.flags.FLAGS.mark_as_parsed() first; or set config.data.num_workers=0"
        )
    options = grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(1, int(prefetch_buffer)))
    return ds.mp_prefetch(options, worker_init_fn=functools.partial(_bind_worker_to_parent, os.getpid()))


PARENT_POLL_S = 0.5  # how often a worker checks that the trainer still lives


def _bind_worker_to_parent(parent_pid: int, worker_index: int, num_workers: int) -> None:
    """Runs first in every grain worker process: the worker never outlives the trainer that started it.

    The trainer stops its workers itself (SIGTERM and Ctrl-C go to it, not to them, so that it can finish its step and
    save); a trainer killed outright (``kill -9``, out of memory) cannot, so each worker also watches its parent and
    exits within ``PARENT_POLL_S`` of its death. (``prctl(PR_SET_PDEATHSIG)`` is not used: it fires when the *thread*
    that started the worker ends, which need not be the trainer's main thread.)
    """
    del worker_index, num_workers
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if os.getppid() != parent_pid:  # the parent died before this worker started
        os._exit(0)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="tmspr-parent-watch", daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


def _img_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
    size = tuple(int(v) for v in config.img_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"config.img_size must be (H, W) with positive entries, got {config.img_size!r}")
    return size  # type: ignore[return-value]


def _check_split(split: Split, what: str) -> None:
    n = len(split)
    if n == 0:
        raise ValueError(f"{what} split is empty")
    for key in ("pids", "camids"):
        arr = np.asarray(getattr(split, key))
        if arr.shape != (n,):
            raise ValueError(f"{what} split: {key} has shape {arr.shape}, expected ({n},) (one per record)")


def _decode(split: Split, index: int) -> np.ndarray:
    """Record ``index`` -> RGB uint8 ``[h, w, 3]`` (a corrupt image raises naming the record's file)."""
    return sources.decode_image(split[index])


# --------------------------------------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True, eq=False)
class _TrainSample:
    """(epoch, global position in the epoch, record index) -> one sample's views and labels. Picklable for grain
    workers."""

    split: Split
    labels: np.ndarray
    camids: np.ndarray
    occluders: Any
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    occluder_normalize: bool
    flip_prob: float
    seed: int

    def __call__(self, element: np.ndarray) -> dict[str, np.ndarray]:
        epoch, position, index = int(element[0]), int(element[1]), int(element[2])
        image = _decode(self.split, index)
        rng = sample_rng(self.seed, epoch, position)
        # Drawn only when enabled, so flip_prob=0 keeps the reference's views draw for draw.
        flipped = self.flip_prob > 0 and bool(rng.random() < self.flip_prob)
        if flipped:
            image = image[:, ::-1]  # the source image, before all four views (their parsing target is mirrored too)
        v = views.train_views(image, rng, self.occluders, self.img_size, self.mean, self.std, self.occluder_normalize)
        return {
            "views": np.asarray(v, dtype=np.float32),
            "pids": np.int32(self.labels[index]),
            "camids": np.int32(self.camids[index]),
            "index": np.int32(index),
            "flipped": np.bool_(flipped),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class _AddParsing:
    """Adds the parsing targets of a batch by record index (runs in the main process: the targets stay unpickled).

    A horizontally flipped sample gets its target with the patch columns reversed (see :func:`flip_misalignment`)."""

    targets: np.ndarray
    weights: np.ndarray

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = batch["index"]
        out = dict(batch)
        targets = self.targets[index]
        flipped = batch["flipped"]
        if flipped.any():
            targets = np.where(flipped[:, None, None, None], targets[:, :, ::-1], targets)
        out["parsing"] = np.ascontiguousarray(targets, dtype=np.float32)
        out["parsing_weight"] = np.asarray(self.weights[index], dtype=np.float32)
        return out


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Batches of one or more epochs (this process's slice) from one grain pipeline, so worker processes start once
    rather than once per epoch; advances the owning :class:`TrainPipeline`'s position.

    ``schedule`` lists the ``(epoch, batch index)`` of every batch in order; :meth:`epoch_batches` walks one epoch.
    """

    def __init__(self, pipeline: TrainPipeline, schedule: list[tuple[int, int]], ds: grain.IterDataset):
        self._pipeline = pipeline
        self._schedule = schedule
        self._cursor = 0
        self._it = iter(ds)

    @property
    def epoch(self) -> int | None:
        """Epoch of the next batch (None when exhausted)."""
        return self._schedule[self._cursor][0] if self._cursor < len(self._schedule) else None

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._cursor >= len(self._schedule):
            raise StopIteration
        batch = next(self._it)
        epoch, index = self._schedule[self._cursor]
        self._cursor += 1
        self._pipeline._position = sampler_lib.SamplerPosition(epoch, index + 1)
        return batch

    def epoch_batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """The remaining batches of ``epoch``, which must be the epoch of the next batch (or already finished)."""
        if self.epoch is not None and self.epoch < epoch:
            raise ValueError(f"TrainIterator: asked for epoch {epoch} but epoch {self.epoch} is not finished")
        while self.epoch == epoch:
            yield next(self)

    def close(self) -> None:
        """Stops grain's worker processes (also happens on garbage collection)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> TrainIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TrainPipeline:
    """Training batches epoch by epoch, with a JSON-able position for checkpoints.

    Usage::

        pipe = TrainPipeline(config, split, targets, process_index=jax.process_index(),
                             process_count=jax.process_count())
        pipe.set_state(saved)                       # optional: resume
        run = pipe.run_iterator(pipe.resume_epoch(), epochs)  # from the restored position
        for epoch in range(pipe.resume_epoch(), epochs + 1):
            for batch in run.epoch_batches(epoch):
                ...                                  # save pipe.get_state() beside the model

    ``epoch_iterator(epoch)`` starts at batch 0, or at the restored/reached batch when ``epoch`` is the epoch of the
    current position. Each process builds the same global PK batches and yields rows
    ``[process_index*b, (process_index+1)*b)`` of every one, ``b = batch_size // process_count``.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        split: Split,
        targets: Any,
        *,
        process_index: int = 0,
        process_count: int = 1,
        occluders: Any = None,
    ):
        _check_split(split, "training")
        d = config.data
        self.batch_size = int(d.batch_size)
        self.num_instances = int(d.num_instances)
        self.seed = int(config.seed)
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
        if self.batch_size % process_count:
            raise ValueError(
                f"config.data.batch_size={self.batch_size} must be divisible by the process count {process_count}"
            )
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = self.batch_size // process_count
        self.num_records = len(split)
        self.labels = train_labels(split.pids)
        num_classes = getattr(split, "num_classes", None)
        if num_classes is not None and int(num_classes) != int(self.labels.max()) + 1:
            raise ValueError(
                f"training split reports num_classes={num_classes} but its records hold "
                f"{int(self.labels.max()) + 1} distinct pids"
            )
        self.sampler = sampler_lib.PKSampler(self.labels, self.batch_size, self.num_instances, self.seed)
        self._targets = _check_targets(targets, self.num_records)
        if occluders is None:
            occluders = _default_occluders(config, split)
        self._sample = functools.partial(
            _TrainSample,
            split=split,
            labels=self.labels,
            camids=np.asarray(split.camids).astype(np.int32),
            occluders=occluders,
            img_size=_img_size(config),
            mean=tuple(float(v) for v in d.mean),
            std=tuple(float(v) for v in d.std),
            occluder_normalize=bool(d.occluder_normalize),
            flip_prob=_flip_prob(config),
            seed=self.seed,
        )
        self.num_workers = int(d.num_workers)
        self.prefetch_buffer = int(d.prefetch_buffer)
        self._position = sampler_lib.SamplerPosition(0, 0)

    # -- sizes
    def num_batches(self, epoch: int) -> int:
        """Batches in ``epoch`` (the sampler's exact count; the reference's nominal count is an upper bound)."""
        return self.sampler.num_batches(epoch)

    steps_per_epoch = num_batches  # the train loop's name for it

    # -- datasets
    def epoch_dataset(self, epoch: int, start: int = 0, stop: int | None = None) -> grain.IterDataset:
        """The grain dataset of this process's batches ``start..stop-1`` of ``epoch`` (no position bookkeeping)."""
        return self._dataset([self._span(epoch, start, stop)])

    def _span(self, epoch: int, start: int, stop: int | None) -> tuple[int, int, int]:
        n = self.num_batches(epoch)
        stop = n if stop is None else int(stop)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"batches [{start}, {stop}) out of range: epoch {epoch} has {n} batches")
        return epoch, int(start), stop

    def _dataset(self, spans: list[tuple[int, int, int]]) -> grain.IterDataset:
        """Batches ``start..stop-1`` of each ``(epoch, start, stop)`` in turn, through one grain pipeline."""
        b = self.local_batch_size
        lo = self.process_index * b
        cols = np.arange(lo, lo + b, dtype=np.int64)[None, :]
        parts = [np.zeros((0, 3), np.int64)]
        for epoch, start, stop in spans:
            batches = self.sampler.epoch_batches(epoch)[start:stop, lo : lo + b].astype(np.int64)
            rows = np.arange(start, stop, dtype=np.int64)[:, None]
            positions = rows * self.batch_size + cols  # global position of each sample in the epoch
            epochs = np.full_like(positions, epoch)
            parts.append(np.stack([epochs, positions, batches], axis=-1).reshape(-1, 3))
        elements = np.concatenate(parts)
        ds = grain.MapDataset.source(elements).map(self._sample()).batch(b, drop_remainder=True)
        it = ds.to_iter_dataset(_read_options(self.num_workers, self.prefetch_buffer))
        it = _maybe_mp_prefetch(it, self.num_workers, self.prefetch_buffer)
        return it.map(_AddParsing(*self._targets))

    def run_iterator(
        self,
        start_epoch: int,
        end_epoch: int,
        *,
        start_batch: int | None = None,
        num_batches: Callable[[int], int] | None = None,
    ) -> TrainIterator:
        """Every batch from ``(start_epoch, start_batch)`` to the end of ``end_epoch``, through one grain pipeline.

        Args:
          start_epoch, end_epoch: the first and last epoch (inclusive).
          start_batch: first batch of ``start_epoch``; default: the current position's batch if it is in
            ``start_epoch`` (after :meth:`set_state`), else 0.
          num_batches: batches to take of each epoch (a cap such as ``train.max_steps_per_epoch``); default: all.
        """
        if start_batch is None:
            start_batch = self._position.batch if self._position.epoch == start_epoch else 0
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        spans = []
        for epoch in range(int(start_epoch), int(end_epoch) + 1):
            _, _, stop = self._span(epoch, 0, None if num_batches is None else num_batches(epoch))
            spans.append((epoch, min(int(start_batch), stop) if epoch == start_epoch else 0, stop))
        schedule = [(e, j) for e, start, stop in spans for j in range(start, stop)]
        if spans:
            self._position = sampler_lib.SamplerPosition(spans[0][0], spans[0][1])
        return TrainIterator(self, schedule, self._dataset(spans))

    def epoch_iterator(
        self, epoch: int, *, start_batch: int | None = None, num_batches: int | None = None
    ) -> TrainIterator:
        """Iterator over ``epoch``'s batches.

        Args:
          epoch: the epoch (any int; the train loop counts from 1).
          start_batch: first batch to produce; default: the current position's batch if it is in ``epoch`` (after
            :meth:`set_state` or a partly consumed iterator of this epoch), else 0.
          num_batches: stop after batch ``num_batches - 1`` (a cap such as ``train.max_steps_per_epoch``); default:
            the whole epoch.
        """
        cap = None if num_batches is None else (lambda _: int(num_batches))
        return self.run_iterator(epoch, epoch, start_batch=start_batch, num_batches=cap)

    # -- state
    @property
    def position(self) -> sampler_lib.SamplerPosition:
        """Next batch to be produced: (epoch, batch index)."""
        return self._position

    def resume_epoch(self) -> int:
        """The epoch a training loop should continue with (the next one if the saved epoch was finished)."""
        pos = self._position
        return pos.epoch + 1 if pos.batch >= self.num_batches(pos.epoch) else pos.epoch

    def get_state(self) -> dict[str, int]:
        """JSON-able state to save beside the model (e.g. ``ocp.args.JsonSave(pipe.get_state())``)."""
        return {
            "version": STATE_VERSION,
            **self._position.to_dict(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_instances": self.num_instances,
            "num_records": self.num_records,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a :meth:`get_state` dict; the next ``epoch_iterator(epoch)`` continues from it."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"training pipeline state must be a dict with version={STATE_VERSION}, got {state!r}")
        mine = self.get_state()
        for key, what in (
            ("seed", "config.seed"),
            ("batch_size", "config.data.batch_size"),
            ("num_instances", "config.data.num_instances"),
            ("num_records", "the training split's size"),
        ):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"cannot resume the training pipeline: saved {key}={state.get(key)!r} but {what} is now "
                    f"{mine[key]!r}; the saved batch position would point into different batches"
                )
        self._position = sampler_lib.SamplerPosition.from_dict(state)


def _check_targets(targets: Any, num_records: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        t, w = np.asarray(targets.targets), np.asarray(targets.weights)
    except AttributeError as e:
        raise TypeError(
            f"targets must be a ParsingTargets with .targets [N,gh,gw,6] and .weights [N], got {type(targets).__name__}"
        ) from e
    if t.ndim != 4 or t.shape[0] != num_records or t.shape[-1] != 6:
        raise ValueError(f"parsing targets have shape {t.shape}, expected ({num_records}, gh, gw, 6) for this split")
    if w.shape != (num_records,):
        raise ValueError(f"parsing weights have shape {w.shape}, expected ({num_records},)")
    return t, w


def _flip_prob(config: ml_collections.ConfigDict) -> float:
    p = float(config.data.flip_prob)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"config.data.flip_prob={p} must be a probability in [0, 1]")
    if p > 0:
        shift = flip_misalignment(config)
        if shift:
            logging.warning(
                "data.flip_prob=%s: the patch grid leaves %d pixel column(s) uncovered on the right, so a mirrored "
                "image's patches sit %d px away from the mirrored parsing cells (grid columns reversed).",
                p,
                shift,
                shift,
            )
    return p


def flip_misalignment(config: ml_collections.ConfigDict) -> int:
    """Pixels by which a mirrored image's patches miss the column-reversed parsing cells (0 = exact).

    Patch ``x`` covers columns ``[sx*x, sx*x + patch)``; the grid leaves ``r = W - sx*(gw-1) - patch`` columns
    uncovered on the right and none on the left, so mirroring shifts every window by ``r``. ``parsing.method =
    'reference'`` targets are a resize of the whole image, which mirrors exactly. Width 128 with patch 16 and a stride
    dividing 112 (16, 14, 8) gives 0; the paper's stride 11 gives 2 px (of a 16 px window).
    """
    if str(config.parsing.method) == "reference":
        return 0
    width, patch = int(config.img_size[1]), int(config.model.patch_size)
    sx = pair(config.model.stride, "config.model.stride")[1]
    return (width - patch) % sx


def _default_occluders(config: ml_collections.ConfigDict, split: Split) -> views.OccluderBank:
    """The covering view's occluders: the training split in use, ``config.data.occluder_source``'s train split, or
    the image files in ``config.data.occluder_dir``."""
    source = str(config.data.occluder_source)
    folder = str(config.data.occluder_dir)
    if source and folder:
        raise ValueError(
            f"config.data.occluder_source={source!r} and config.data.occluder_dir={folder!r} are both set: the "
            "covering view takes its occluders from one of them, set the other to ''"
        )
    if folder:
        return views.OccluderBank.from_dir(os.path.expanduser(folder))
    if not source:
        return views.OccluderBank.from_records(split, name="training split")
    other = sources.open_split(source, "train", config.data.data_dir, config.data.manual_dir or None)
    return views.OccluderBank.from_records(other, name=f"{source}/train")


def train_batches(
    config: ml_collections.ConfigDict,
    split: Split,
    targets: Any,
    *,
    epoch: int,
    process_index: int = 0,
    process_count: int = 1,
    occluders: Any = None,
) -> TrainIterator:
    """This process's slice of every PK batch of ``epoch``, as NumPy dicts.

    Each batch: ``views f32 [b,4,H,W,3]``, ``pids i32 [b]`` (train labels), ``camids i32 [b]``,
    ``parsing f32 [b,gh,gw,6]``, ``parsing_weight f32 [b]``, ``index i32 [b]`` (record index), ``flipped bool [b]``
    (mirrored by ``data.flip_prob``), with
    ``b = config.data.batch_size // process_count``. For resumable iteration use :class:`TrainPipeline`.
    """
    pipe = TrainPipeline(
        config, split, targets, process_index=process_index, process_count=process_count, occluders=occluders
    )
    return pipe.epoch_iterator(epoch)


# ------------------------------------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True, eq=False)
class _EvalSample:
    """Record index -> test view and labels; index -1 is a padding row (zero image, pid -1, camera 0, invalid)."""

    split: Split
    pids: np.ndarray
    camids: np.ndarray
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index < 0:
            # camera 0 keeps the SIE embedding lookup valid; 'valid' masks the row out of batch statistics and results.
            return {
                "images": np.zeros((*self.img_size, 3), np.float32),
                "pids": np.int32(-1),
                "camids": np.int32(0),
                "valid": np.bool_(False),
            }
        image = _decode(self.split, index)
        return {
            "images": np.asarray(views.eval_view(image, self.img_size, self.mean, self.std), dtype=np.float32),
            "pids": np.int32(self.pids[index]),
            "camids": np.int32(self.camids[index]),
            "valid": np.bool_(True),
        }


def eval_layout(
    num_records: int, batch_size: int, *, pad_to: int = 1, process_index: int = 0, process_count: int = 1
) -> list[np.ndarray]:
    """Record indices of this process's rows of every evaluation batch (-1 = padding row).

    Global batch ``j`` holds records ``[j*batch_size, min(N, (j+1)*batch_size))`` (so the last one is smaller), padded
    to a multiple of ``lcm(pad_to, process_count)``; process ``i`` gets the ``i``-th of ``process_count`` equal
    contiguous parts. Concatenating the parts in process order gives the global batch.
    """
    if batch_size < 1:
        raise ValueError(f"config.data.test_batch_size must be >= 1, got {batch_size}")
    if pad_to < 1:
        raise ValueError(f"pad_to must be >= 1, got {pad_to}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    multiple = math.lcm(pad_to, process_count)
    out = []
    for lo in range(0, num_records, batch_size):
        rows = np.arange(lo, min(num_records, lo + batch_size), dtype=np.int64)
        rows = np.concatenate([rows, np.full(-rows.size % multiple, -1, np.int64)])
        part = rows.size // process_count
        out.append(rows[process_index * part : (process_index + 1) * part])
    return out


def eval_batches(
    config: ml_collections.ConfigDict,
    split: Split,
    *,
    pad_to: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """The split's records in order, ``config.data.test_batch_size`` per batch, the last one smaller.

    Each batch: ``images f32 [b,H,W,3]`` (test view), ``pids i32 [b]`` (raw), ``camids i32 [b]``, ``valid bool [b]``.
    ``pad_to > 1`` pads every global batch with ``valid=False`` rows to a multiple of ``pad_to`` (e.g. the device
    count), which changes only the last batch when ``test_batch_size`` is a multiple already. With several processes,
    each gets its equal contiguous part of every (padded) global batch; see :func:`eval_layout`.
    """
    _check_split(split, "evaluation")
    d = config.data
    layout = eval_layout(
        len(split), int(d.test_batch_size), pad_to=pad_to, process_index=process_index, process_count=process_count
    )
    sample = _EvalSample(
        split=split,
        pids=np.asarray(split.pids).astype(np.int32),
        camids=np.asarray(split.camids).astype(np.int32),
        img_size=_img_size(config),
        mean=tuple(float(v) for v in d.mean),
        std=tuple(float(v) for v in d.std),
    )
    # All batches but the last have the same local size, so grain's .batch() cuts the flat row list exactly.
    ds = grain.MapDataset.source(np.concatenate(layout)).map(sample).batch(len(layout[0]))
    workers, buffer = int(d.num_workers), int(d.prefetch_buffer)
    it = _maybe_mp_prefetch(ds.to_iter_dataset(_read_options(workers, buffer)), workers, buffer)
    return iter(it)

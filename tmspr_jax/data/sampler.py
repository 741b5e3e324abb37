"""PK identity sampler: P distinct identities x K images per batch (docs/reference.md §11.2).

The reference's ``RandomIdentitySampler`` re-draws an epoch of batches from Python/NumPy global RNGs. Here an epoch is a
pure function of ``(pids, P, K, seed, epoch)``: the same arguments give the same ``[num_batches, P*K]`` index array on
every host and in every worker, so a position ``(epoch, batch)`` is all that is needed to save and resume sampling.

Semantics (as the reference):
  * per identity (sorted pid order, for determinism) its record indices in dataset order; an identity with fewer than K
    images is replaced by exactly K draws with replacement;
  * shuffle, cut into chunks of K, drop the incomplete last chunk;
  * while at least P identities have chunks left: pick P distinct identities at random, pop one chunk from each
    (so a batch is P consecutive blocks of K indices of one identity each);
  * the epoch ends when fewer than P identities have chunks left (their chunks are dropped for this epoch).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

# Random streams are told apart by a tag word: NumPy's SeedSequence ignores trailing zeros ([s, e] == [s, e, 0]), so a
# plain [seed, epoch] here would equal the view generator of sample 0 ([seed, epoch, 0]).
SAMPLER_STREAM = 1


def _check_pk(pids: np.ndarray, num_ids: int, num_instances: int) -> np.ndarray:
    pids = np.asarray(pids)
    if pids.ndim != 1 or pids.size == 0:
        raise ValueError(f"pids must be a non-empty 1-D array of identity labels, got shape {pids.shape}")
    if not np.issubdtype(pids.dtype, np.integer):
        raise ValueError(f"pids must be integers, got dtype {pids.dtype}")
    if num_instances < 1:
        raise ValueError(f"num_instances (K, config.data.num_instances) must be >= 1, got {num_instances}")
    if num_ids < 1:
        raise ValueError(f"identities per batch (P = batch_size // num_instances) must be >= 1, got {num_ids}")
    return pids


def identities_per_batch(batch_size: int, num_instances: int) -> int:
    """P = batch_size // K; the batch size must be a positive multiple of K."""
    if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
        raise ValueError(
            f"config.data.batch_size={batch_size} must be a positive multiple of "
            f"config.data.num_instances={num_instances} (P identities x K images)"
        )
    return batch_size // num_instances


def epoch_batches(pids: np.ndarray, num_ids: int, num_instances: int, *, seed: int, epoch: int) -> np.ndarray:
    """All PK batches of one epoch as dataset indices.

    Args:
      pids: int ``[N]`` identity label of each record (any integers; only equality matters).
      num_ids: P, distinct identities per batch.
      num_instances: K, images per identity in a batch.
      seed: run seed (``config.seed``).
      epoch: epoch number; different epochs give different batches.

    Returns:
      int32 ``[num_batches, P*K]``; row ``j`` holds P blocks of K consecutive indices, one identity per block.
      ``num_batches`` may be 0 when the split has fewer than P identities.
    """
    pids = _check_pk(pids, num_ids, num_instances)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed (config.seed) and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    k = num_instances
    rng = np.random.default_rng([int(seed), int(epoch), SAMPLER_STREAM])
    # Per identity, in sorted pid order: its shuffled complete chunks of K indices.
    order = np.argsort(pids, kind="stable")  # stable: indices of one pid stay in dataset order
    uniq, starts = np.unique(pids[order], return_index=True)
    bounds = list(starts) + [pids.size]
    chunks: list[np.ndarray] = []
    for u in range(uniq.size):
        idxs = order[bounds[u] : bounds[u + 1]]
        if idxs.size < k:
            idxs = rng.choice(idxs, size=k, replace=True)
        else:
            idxs = idxs.copy()
        rng.shuffle(idxs)
        n_chunks = idxs.size // k
        chunks.append(idxs[: n_chunks * k].reshape(n_chunks, k))
    remaining = np.array([c.shape[0] for c in chunks], dtype=np.int64)
    popped = np.zeros_like(remaining)
    avail = np.flatnonzero(remaining > 0)  # kept in ascending identity order
    batches: list[np.ndarray] = []
    while avail.size >= num_ids:
        sel = avail[rng.choice(avail.size, size=num_ids, replace=False)]
        batch = np.empty((num_ids, k), dtype=np.int64)
        for slot, u in enumerate(sel):
            batch[slot] = chunks[u][popped[u]]
            popped[u] += 1
        batches.append(batch.reshape(-1))
        if np.any(popped[sel] == remaining[sel]):
            avail = avail[popped[avail] < remaining[avail]]
    if not batches:
        return np.zeros((0, num_ids * k), dtype=np.int32)
    return np.stack(batches).astype(np.int32)


def nominal_length(pids: np.ndarray, num_instances: int) -> int:
    """The reference sampler's ``len()``: sum over identities of ``m - m % K`` with ``m = max(n, K)`` (indices)."""
    pids = _check_pk(pids, 1, num_instances)
    _, counts = np.unique(pids, return_counts=True)
    m = np.maximum(counts, num_instances)
    return int(np.sum(m - m % num_instances))


def nominal_num_batches(pids: np.ndarray, batch_size: int, num_instances: int) -> int:
    """The reference's ``len(train_loader) = ceil(nominal_length / B)``; an upper bound on the real epoch length."""
    return math.ceil(nominal_length(pids, num_instances) / batch_size)


@dataclasses.dataclass(frozen=True)
class SamplerPosition:
    """Where sampling stands: the next batch to produce is batch ``batch`` of epoch ``epoch``."""

    epoch: int
    batch: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "batch": int(self.batch)}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> SamplerPosition:
        """Inverse of :meth:`to_dict`, with a clear error on a malformed state."""
        try:
            epoch, batch = state["epoch"], state["batch"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"sampler state must be a dict with int 'epoch' and 'batch', got {state!r}") from e
        whole = isinstance(epoch, (int, np.integer)) and isinstance(batch, (int, np.integer))
        if not whole or epoch < 0 or batch < 0:
            raise ValueError(f"sampler state needs non-negative ints 'epoch' and 'batch', got {state!r}")
        return cls(int(epoch), int(batch))


class PKSampler:
    """PK batches of a split, epoch by epoch, with a saveable position.

    ``sampler[position]`` style access is via :meth:`batch`; iteration via :meth:`next` advances the position and rolls
    over to the next epoch at the end of one. The last computed epoch is cached (recomputing is cheap but not free).
    """

    def __init__(self, pids: np.ndarray, batch_size: int, num_instances: int, seed: int):
        self.num_ids = identities_per_batch(batch_size, num_instances)
        self.pids = _check_pk(pids, self.num_ids, num_instances)
        num_identities = np.unique(self.pids).size
        if num_identities < self.num_ids:
            # Every identity yields >= 1 chunk, so this is the only way an epoch can be empty.
            raise ValueError(
                f"the split has {num_identities} identities, fewer than P={self.num_ids} "
                f"(config.data.batch_size={batch_size} // config.data.num_instances={num_instances}): "
                "no PK batch can be formed"
            )
        self.num_instances = num_instances
        self.batch_size = batch_size
        self.seed = int(seed)
        self.position = SamplerPosition(0, 0)
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """int32 ``[num_batches, batch_size]`` for ``epoch`` (see :func:`epoch_batches`)."""
        if self._cache is None or self._cache[0] != epoch:
            batches = epoch_batches(self.pids, self.num_ids, self.num_instances, seed=self.seed, epoch=epoch)
            self._cache = (epoch, batches)
        return self._cache[1]

    def num_batches(self, epoch: int) -> int:
        return int(self.epoch_batches(epoch).shape[0])

    def batch(self, position: SamplerPosition) -> np.ndarray:
        batches = self.epoch_batches(position.epoch)
        if not 0 <= position.batch < batches.shape[0]:
            raise IndexError(
                f"batch {position.batch} out of range: epoch {position.epoch} has {batches.shape[0]} batches"
            )
        return batches[position.batch]

    def next(self) -> np.ndarray:
        """The batch at the current position; advances it (to batch 0 of the next epoch after the last batch)."""
        pos = self.position
        if pos.batch >= self.num_batches(pos.epoch):
            pos = SamplerPosition(pos.epoch + 1, 0)
        out = self.batch(pos)
        self.position = SamplerPosition(pos.epoch, pos.batch + 1)
        return out

    def get_state(self) -> dict[str, int]:
        """JSON-able position (the sampler's settings are part of the config, not of the state)."""
        return self.position.to_dict()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.position = SamplerPosition.from_dict(state)

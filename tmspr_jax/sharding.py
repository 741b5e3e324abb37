"""Data parallelism as one global program: single-GPU semantics on any number of devices.

A 1-D mesh over every device of every process, axis ``'data'`` with ``AxisType.Auto`` (Explicit axes break
``flax.linen`` dropout-style code). Batches are sharded on their leading axis, parameters are replicated, and ``jax.jit``
compiles the single-device program for the whole mesh, so batch-wise statistics (BNNeck, batch-hard triplet mining,
the part min-max, the recovery nearest neighbour) see the global batch exactly as the reference's single-GPU run.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Joins a multi-host job when launched as one (coordinator address etc. in the environment).

    ``jax.distributed.initialize()`` reads the cluster settings (SLURM, Open MPI, or ``JAX_COORDINATOR_ADDRESS`` /
    ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``); on a single host with none of them set it is skipped.
    """
    import os

    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_NTASKS") or os.environ.get(
        "OMPI_COMM_WORLD_SIZE"
    ):
        jax.distributed.initialize()
        logging.info("Joined distributed job: process %d of %d", jax.process_index(), jax.process_count())


def make_data_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D ``'data'`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices()) if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_global_batch(global_batch: int, mesh: jax.sharding.Mesh, what: str = "data.batch_size") -> None:
    """The global batch must split evenly over the devices and over the processes."""
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if global_batch % n_dev or global_batch % n_proc:
        raise ValueError(
            f"{what}={global_batch} must be divisible by the number of devices ({n_dev}) and of processes ({n_proc})."
        )


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Builds global arrays from this process's slice of every batch array (leading axis = batch)."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in batch.items()
        if isinstance(v, np.ndarray) and v.dtype != object
    }


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places a pytree (parameters, optimiser state) replicated on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def to_host(x: jax.Array) -> np.ndarray:
    """Gathers a (possibly multi-host, batch-sharded) array to a NumPy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_host(x: np.ndarray) -> np.ndarray:
    """Concatenates a host-local array over processes in process order (itself on one process)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

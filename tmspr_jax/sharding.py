"""Data parallelism as one global program: single-GPU semantics on any number of devices.

A 1-D mesh over every device of every process, axis ``'data'`` with ``AxisType.Auto`` (Explicit axes break
``flax.linen`` dropout-style code). Batches are sharded on their leading axis, parameters are replicated, and
``jax.jit`` compiles the single-device program for the whole mesh, so batch-wise statistics (BNNeck, batch-hard triplet
mining, the part min-max, the recovery nearest neighbour) see the global batch exactly as the reference's single-GPU
run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA_AXIS = "data"


# Variables of the launchers whose multi-process jobs jax.distributed.initialize() recognises by itself.
_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def distributed_settings(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The arguments of ``jax.distributed.initialize`` for a multi-process launch, or None for a single process.

    * ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES=N``, ``JAX_PROCESS_ID=i``: all three are needed (JAX
      reads only the address from the environment, so the other two are passed explicitly);
    * SLURM (``srun``), Open MPI (``mpirun``) with more than one task, and Kubernetes indexed jobs
      (``JOB_COMPLETION_INDEX``): JAX's own cluster detection (an empty dict: no arguments).
    """
    address = env.get("JAX_COORDINATOR_ADDRESS", "").strip()
    if address:
        values = {}
        for key in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
            text = env.get(key, "").strip()
            if not text:
                raise ValueError(
                    f"JAX_COORDINATOR_ADDRESS={address} is set but {key} is not: a multi-process launch "
                    "sets JAX_NUM_PROCESSES (the number of processes) and JAX_PROCESS_ID (0..N-1) too."
                )
            try:
                values[key] = int(text)
            except ValueError:
                raise ValueError(f"{key}={text!r}: expected an integer.") from None
        n, i = values["JAX_NUM_PROCESSES"], values["JAX_PROCESS_ID"]
        if n < 1 or not 0 <= i < n:
            raise ValueError(
                f"JAX_PROCESS_ID={i} with JAX_NUM_PROCESSES={n}: expected 0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES."
            )
        return {"coordinator_address": address, "num_processes": n, "process_id": i}
    for key in _CLUSTER_SIZE_VARS:
        if env.get(key, "").strip().isdigit() and int(env[key]) > 1:
            return {}
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("JOB_COMPLETION_INDEX"):
        return {}
    return None


def maybe_initialize_distributed() -> None:
    """Joins a multi-process job when launched as one (see :func:`distributed_settings`); else does nothing.

    Must run before anything touches a JAX backend. On CPU the processes' collectives go through gloo.
    """
    import os

    settings = distributed_settings(os.environ)
    if settings is None:
        return
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only hosts (and CI)
    jax.distributed.initialize(**settings)
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

"""Training checkpoints on disk: saving them asynchronously (:class:`Saver`, whose failures are one line), which step
to use, and restoring only what is intact and fits the config.

A training workdir's ``checkpoints/<step>/`` holds two orbax items: ``state`` (the train state) and ``data`` (JSON: the
data position to resume from, the model's size as ``weights.model_meta`` gives it, and a checksum of every array of
the state). Nothing restored is trusted blindly:

* the model size saved beside the state is compared with the config's before any array is read, and a difference is
  refused in one line naming the key and both values (:class:`ModelSizeError`);
* a checkpoint that does not restore (missing item, truncated file) or whose arrays do not match their saved checksums
  or are not finite is *damaged*: the newest checkpoint that restores cleanly is used instead, with a one-line
  warning naming the damaged one, which a resumed run moves to ``WORKDIR/checkpoints_damaged/`` (kept for inspection,
  out of the way of the next saves).

Step selection (``--mode=eval``, ``tools.extract``, ``tools.export``): an explicit step, else the best by mAP, else the
latest step (a run stopped before its first evaluation has no best).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as ocp_managers

from tmspr_jax import weights

ITEMS = ("state", "data")
CHECKPOINTS_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"
CHECKSUM_KEY = "checksum"
MODEL_KEY = "model"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the folder (and the step) and what was expected."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint did not restore, or its arrays differ from what was saved."""


class ModelSizeError(CheckpointError):
    """A checkpoint of another model size (depth, width, classes, cameras, grid) than the config's."""


# A tool reading a workdir while its training run saves: the run deletes all but its newest checkpoints (and the best).
ROTATED = "rotated away by the training run writing to this workdir, which keeps only its newest checkpoints"


class CheckpointSaveError(RuntimeError):
    """An asynchronous checkpoint save failed (a full disk, a lost mount): training stops."""


# ---------------------------------------------------------------------------------------------------- managers


def checkpoints_dir(path: str) -> str:
    """The orbax folder of a training workdir (``path`` may be the workdir or its ``checkpoints`` folder)."""
    path = os.path.abspath(os.path.expanduser(path))
    return path if os.path.basename(path.rstrip("/")) == CHECKPOINTS_DIR else os.path.join(path, CHECKPOINTS_DIR)


def make_manager(workdir: str, keep: int, *, read_only: bool = False) -> ocp.CheckpointManager:
    """Latest-``keep`` plus the best checkpoint by mAP (``best_step()`` works), saved asynchronously."""
    policy = ocp_managers.AnyPreservationPolicy(
        [
            ocp_managers.LatestN(n=max(1, int(keep))),
            ocp_managers.BestN(
                get_metric_fn=lambda m: m["mAP"], reverse=True, n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy,
        best_fn=lambda m: m["mAP"],
        best_mode="max",
        enable_async_checkpointing=not read_only,
        create=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(checkpoints_dir(workdir), item_names=ITEMS, options=options)


# ---------------------------------------------------------------------------------------------------- checksums


def _leaf_checksum(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An order-sensitive sum of the array's bit patterns (mod 2**32) and whether its floats are all finite."""
    x = jnp.ravel(x)
    size = x.dtype.itemsize
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    elif size == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif size == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif size == 1:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    else:  # 8-byte values (x64 mode): both halves
        bits = jnp.ravel(jax.lax.bitcast_convert_type(x, jnp.uint32))
    # Weights 1..65521 make a swap of two values visible too; integer sums do not depend on the summation order.
    weights_ = (jnp.arange(bits.shape[0], dtype=jnp.uint32) % jnp.uint32(65521)) + jnp.uint32(1)
    total = jnp.sum(bits, dtype=jnp.uint32) + jnp.uint32(0x9E3779B1) * jnp.sum(bits * weights_, dtype=jnp.uint32)
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    return total, finite


@jax.jit
def _checksums(tree: Any) -> tuple[jax.Array, jax.Array]:
    pairs = [_leaf_checksum(x) for x in jax.tree.leaves(tree)]
    if not pairs:
        return jnp.zeros((0,), jnp.uint32), jnp.zeros((0,), bool)
    return jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])


def _local(x: jax.Array) -> np.ndarray:
    """A replicated result as NumPy, on any process (multi-host arrays are not fully addressable)."""
    return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)


def state_checksums(tree: Any) -> tuple[list[int], list[bool]]:
    """Per leaf (``jax.tree.leaves`` order): a checksum of its bits, and whether it is finite."""
    sums, finite = _checksums(tree)
    return [int(v) for v in _local(sums)], [bool(v) for v in _local(finite)]


def _leaf_names(tree: Any) -> list[str]:
    return ["/".join(_key_name(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


# ---------------------------------------------------------------------------------------------------- saving


def save_args(state: Any, data: Mapping[str, Any], model: Any | None = None) -> ocp.args.Composite:
    """Orbax args saving ``state`` and ``data`` (JSON) plus the model's size and the state's checksums."""
    sums, _ = state_checksums(state)
    data = dict(data)
    # Keyed by path: a state restored without a target (evaluation) comes back as dicts, in another leaf order.
    data[CHECKSUM_KEY] = dict(zip(_leaf_names(state), sums))
    if model is not None:
        data[MODEL_KEY] = weights.model_meta(model)
    return ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))


class Saver:
    """The asynchronous saves of one training run, their failures turned into one-line :class:`CheckpointSaveError`.

    ``last``: the newest step saved (or resumed from), which is not saved again.
    """

    def __init__(self, manager: ocp.CheckpointManager, model: Any, last: int | None = None):
        self.manager, self.model, self.last = manager, model, last

    def save(self, step: int, state: Any, data: Mapping[str, Any], metrics: dict | None = None) -> None:
        """Starts saving ``state`` and ``data`` (JSON, e.g. the data position) as ``step``; ``metrics``: its mAP."""
        if step == self.last:
            return  # this step is already saved (a mid-epoch save, or the checkpoint resumed from)
        self.check()
        try:  # orbax writes part of a checkpoint before save() returns: a full disk may fail here already
            self.manager.save(step, args=save_args(state, data, self.model), metrics=metrics)
        except Exception as e:
            raise self._failed(e, step) from e
        self.last = step

    def check(self) -> None:
        """Raises the error of an earlier save that failed in the background."""
        try:
            self.manager.check_for_errors()
        except Exception as e:
            raise self._failed(e) from e

    def wait(self) -> None:
        """Waits until every save started is on disk."""
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:
            raise self._failed(e) from e

    def _failed(self, e: BaseException, step: int | None = None) -> CheckpointSaveError:
        # An earlier asynchronous save's error may surface only here (orbax raises it on the next save or wait), so
        # the message names the step being saved, not necessarily the one that failed.
        try:
            self.manager.reload()
            intact = self.manager.latest_step()
        except Exception:  # the folder itself may be gone
            intact = None
        text = " ".join(str(e).split())[:300]
        return CheckpointSaveError(
            f"A checkpoint save in {self.manager.directory} failed ({type(e).__name__}: {text}; seen while saving step "
            f"{self.last if step is None else step}): training stopped; the newest complete checkpoint is step "
            f"{intact}. Free space and run the same command to resume."
        )


# ---------------------------------------------------------------------------------------------------- restoring


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(str(manager.directory), str(step))


def read_data(manager: ocp.CheckpointManager, step: int) -> dict:
    """The ``data`` item (JSON) of ``step``; a missing or unreadable one is :class:`DamagedCheckpointError`."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
        data = restored["data"]
    except Exception as e:  # orbax / json raise many types for damaged files
        raise DamagedCheckpointError(f"{_step_dir(manager, step)}/data: {_short(e)}") from e
    if not isinstance(data, Mapping):
        raise DamagedCheckpointError(f"{_step_dir(manager, step)}/data: expected a JSON object, got {type(data)}")
    return dict(data)


def check_model_size(
    manager: ocp.CheckpointManager, step: int, data: Mapping[str, Any], model: Any, expected_tree: Any | None = None
) -> None:
    """Refuses a checkpoint of another model size in one line, before its arrays are read.

    Uses the size saved beside the state; a checkpoint without it is compared array by array with
    ``expected_tree`` (shapes, e.g. from ``jax.eval_shape``) through orbax's metadata.
    """
    where = _step_dir(manager, step)
    saved = data.get(MODEL_KEY)
    if saved is not None:
        try:
            weights.check_model_size(saved, model, where)
        except weights.WeightsError as e:
            raise ModelSizeError(str(e)) from e
        return
    if expected_tree is None:
        return
    try:
        meta = manager.item_metadata(step)["state"]
    except Exception as e:
        raise DamagedCheckpointError(f"{where}/state: no readable metadata ({_short(e)})") from e
    saved_tree, expected_tree = _as_dict(getattr(meta, "tree", meta)), _as_dict(expected_tree)
    if isinstance(saved_tree, Mapping) and isinstance(expected_tree, Mapping):  # only the parts the model shapes
        saved_tree = {k: v for k, v in saved_tree.items() if k in expected_tree}
    compare_shapes(saved_tree, expected_tree, where)


def _as_dict(tree: Any) -> Any:
    """A state tree (or orbax's metadata of one) as nested dicts; an array's metadata (a dataclass with a shape) is a
    leaf."""
    if hasattr(tree, "shape"):
        return tree
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return {f.name: _as_dict(getattr(tree, f.name)) for f in dataclasses.fields(tree)}
    if isinstance(tree, Mapping):
        return {str(k): _as_dict(v) for k, v in tree.items()}
    return tree


def compare_shapes(saved: Any, expected: Any, where: str, prefix: str = "") -> None:
    """Raises :class:`ModelSizeError` at the first array missing, extra or of another shape (``saved`` vs config)."""
    if isinstance(expected, Mapping) or isinstance(saved, Mapping):
        if not isinstance(expected, Mapping) or not isinstance(saved, Mapping):
            raise ModelSizeError(f"{where}: {prefix or 'the state'} differs in structure from the config's model")
        for key in sorted(set(saved) | set(expected)):
            name = f"{prefix}/{key}" if prefix else key
            if key not in expected:
                raise ModelSizeError(f"{where}: the checkpoint has {name} which the config's model does not have")
            if key not in saved:
                raise ModelSizeError(f"{where}: the checkpoint lacks {name} which the config's model has")
            compare_shapes(saved[key], expected[key], where, name)
        return
    have, want = getattr(saved, "shape", None), getattr(expected, "shape", None)
    if have is not None and want is not None and tuple(have) != tuple(want):
        raise ModelSizeError(
            f"{where}: {prefix} has shape {tuple(have)} in the checkpoint but {tuple(want)} for the config's model"
        )


def restore_verified(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any = None, data: Mapping[str, Any] | None = None
) -> tuple[Any, dict]:
    """``(state, data)`` of ``step``, checked: the arrays must match the checksums saved with them and be finite.

    ``abstract_state`` (shapes, dtypes and shardings) restores into that structure; ``None`` restores as saved.
    """
    where = _step_dir(manager, step)
    data = read_data(manager, step) if data is None else dict(data)
    restore = ocp.args.StandardRestore(abstract_state) if abstract_state is not None else ocp.args.StandardRestore()
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=restore))["state"]
    except Exception as e:
        raise DamagedCheckpointError(f"{where}/state: {_short(e)}") from e
    sums, finite = state_checksums(state)
    names = _leaf_names(state)
    saved = data.get(CHECKSUM_KEY)
    if isinstance(saved, Mapping):
        for name, have in zip(names, sums):
            if name not in saved:
                if name.startswith(("params/", "batch_stats/")):  # the model's arrays are named alike either way
                    raise DamagedCheckpointError(f"{where}/state: {name} was restored but not saved")
                continue
            if int(have) != int(saved[name]):
                raise DamagedCheckpointError(f"{where}/state: {name} does not match its saved checksum")
    for name, ok in zip(names, finite):
        if not ok:
            raise DamagedCheckpointError(f"{where}/state: {name} holds NaN or infinite values")
    return state, data


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def move_aside(manager: ocp.CheckpointManager, step: int) -> str | None:
    """Moves ``step``'s folder to ``checkpoints_damaged/`` beside the checkpoints folder (process 0); returns where."""
    src = _step_dir(manager, step)
    dest_root = os.path.join(os.path.dirname(str(manager.directory).rstrip("/")), DAMAGED_DIR)
    dest = os.path.join(dest_root, str(step))
    if os.path.exists(dest):
        dest = f"{dest}.{int(time.time())}"
    if jax.process_index() == 0 and os.path.isdir(src):
        os.makedirs(dest_root, exist_ok=True)
        shutil.move(src, dest)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"tmspr_move_aside_{step}")
    manager.reload()
    return dest


def candidate_steps(manager: ocp.CheckpointManager, step: int | None = None, *, prefer_best: bool = True) -> list[int]:
    """Steps to try, in order: ``[step]`` when given (it must exist), else the best by mAP (``prefer_best``) and then
    the others from the newest."""
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None and step >= 0:
        if step not in steps:
            raise CheckpointError(f"{manager.directory}: no checkpoint of step {step}; its steps are {sorted(steps)}")
        return [int(step)]
    best = manager.best_step() if prefer_best else None
    if best is not None:
        return [int(best)] + [s for s in steps if s != best]
    return [int(s) for s in steps]


def restore_newest_intact(
    manager: ocp.CheckpointManager,
    steps: list[int],
    *,
    model: Any = None,
    abstract_state: Any = None,
    expected_tree: Callable[[], Any] | Any = None,
    move_damaged: bool = False,
) -> tuple[int, Any, dict] | None:
    """The first of ``steps`` that restores cleanly: ``(step, state, data)``; None when there are no steps.

    A damaged checkpoint gets a one-line warning naming it (and is moved aside when ``move_damaged``); a checkpoint of
    another model size stops everything (:class:`ModelSizeError`). If every one is damaged, the last error is raised.
    """
    error: DamagedCheckpointError | None = None
    damaged: list[str] = []
    rotated: list[int] = []  # removed while being read: the run writing this workdir keeps only its newest ones
    for step in steps:
        try:
            data = read_data(manager, step)
            if model is not None:
                tree = expected_tree() if callable(expected_tree) else expected_tree
                check_model_size(manager, step, data, model, tree)
            state, data = restore_verified(manager, step, abstract_state, data)
        except DamagedCheckpointError as e:
            if not os.path.isdir(_step_dir(manager, step)):  # gone, not damaged
                rotated.append(step)
                continue
            error = e
            moved = f" (moved to {move_aside(manager, step)})" if move_damaged else ""
            damaged.append(f"{e}{moved}")
            continue
        for text in damaged:  # one line per damaged checkpoint, saying what is used instead
            logging.warning("Damaged checkpoint not used: %s; using step %d instead.", text, step)
        for gone in rotated:
            logging.warning(
                "%s was removed while being read (%s); using step %d.", _step_dir(manager, gone), ROTATED, step
            )
        return step, state, data
    if rotated:
        also = f"; damaged: {'; '.join(damaged)}" if damaged else ""
        raise CheckpointError(
            f"{manager.directory}: the checkpoint of step {', '.join(map(str, rotated))} was removed while being read "
            f"({ROTATED}), it is not damaged; run the same command again to read the newest one{also}"
        )
    if error is not None:
        raise DamagedCheckpointError(f"no intact checkpoint in {manager.directory}: {'; '.join(damaged)}")
    return None


def read_workdir(path: str, step: int | None = None, *, what: str = "--checkpoint") -> tuple[int, dict, Any]:
    """``(step, state, data)`` of a training workdir's checkpoint, read only: ``step`` when given, else the best by
    mAP, else the latest; a damaged one falls back to the newest intact. A folder without ``checkpoints/`` or without
    any checkpoint is a FileNotFoundError naming it (``what``: the setting that gave ``path``)."""
    ckpt_dir = checkpoints_dir(path)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(
            f"{what} {path!r} is neither a converted-weights folder (with meta.json) nor a training workdir "
            "(with a checkpoints/ folder)"
        )
    manager = make_manager(path, 1, read_only=True)
    found = restore_newest_intact(manager, candidate_steps(manager, step))
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    return found

"""tmspr_jax/checkpoints.py on small hand-made states: a checkpoint removed while a tool reads the workdir (the
training run rotated it away) is said to be so, never reported as damaged; one holding non-finite values is never
used; one saved without its model size is still compared with the config's model, array by array."""

from __future__ import annotations

import logging
import os
import shutil

import jax
import numpy as np
import pytest

import tiny
from tmspr_jax import checkpoints
from tmspr_jax.models import build_model, init_variables


def _workdir(tmp_path, steps=(2, 4)) -> str:
    workdir = str(tmp_path / "run")
    manager = checkpoints.make_manager(workdir, keep=len(steps))
    for step in steps:
        state = {"step": np.asarray(step), "w": np.full((3,), float(step), np.float32)}
        manager.save(step, args=checkpoints.save_args(state, {"epoch": step}))
    manager.wait_until_finished()
    manager.close()
    return workdir


def test_a_checkpoint_rotated_away_while_read_is_skipped_with_a_warning(tmp_path, caplog):
    workdir = _workdir(tmp_path)
    manager = checkpoints.make_manager(workdir, 2, read_only=True)
    steps = checkpoints.candidate_steps(manager)  # [4, 2]: listed, then the run deletes step 4
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    with caplog.at_level(logging.WARNING):
        step, state, _ = checkpoints.restore_newest_intact(manager, steps)
    assert step == 2 and int(state["step"]) == 2
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "removed while being read" in text and "rotated away" in text and "Damaged" not in text


def test_every_listed_checkpoint_rotated_away_says_so_not_damaged(tmp_path):
    workdir = _workdir(tmp_path, steps=(2,))
    manager = checkpoints.make_manager(workdir, 1, read_only=True)
    steps = checkpoints.candidate_steps(manager)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))
    with pytest.raises(checkpoints.CheckpointError) as e:
        checkpoints.restore_newest_intact(manager, steps)
    assert not isinstance(e.value, checkpoints.DamagedCheckpointError)
    assert "step 2 was removed while being read (rotated away" in str(e.value) and "no intact" not in str(e.value)


IMG = (64, 32)


def _variables(**overrides):
    model = build_model(tiny.model_config(stride=(16, 16), **overrides), IMG, num_classes=4, num_cameras=2)
    return model, jax.device_get(init_variables(model, jax.random.PRNGKey(0)))


def _save(manager, step: int, state, model=None) -> None:
    manager.save(step, args=checkpoints.save_args(state, {"next_epoch": 1, "next_batch": 0}, model=model))
    manager.wait_until_finished()


def test_a_checkpoint_holding_nan_is_never_used(tmp_path, caplog):
    model, variables = _variables()
    manager = checkpoints.make_manager(str(tmp_path), 3)
    _save(manager, 1, variables, model)
    bad = jax.tree.map(np.copy, variables)
    path, leaf = jax.tree_util.tree_leaves_with_path(bad["params"])[0]
    leaf.reshape(-1)[0] = np.nan  # saved with its own checksum: only the finite check can tell
    name = "params/" + "/".join(str(k.key) for k in path)
    _save(manager, 2, bad, model)
    with pytest.raises(checkpoints.DamagedCheckpointError, match=f"2/state: {name} holds NaN or infinite"):
        checkpoints.restore_verified(manager, 2)
    with caplog.at_level(logging.WARNING):
        step, state, _ = checkpoints.restore_newest_intact(manager, [2, 1], model=model)
    assert step == 1 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    assert "holds NaN or infinite values" in caplog.text and "using step 1 instead" in caplog.text


def test_a_checkpoint_saved_without_its_model_size_is_compared_array_by_array(tmp_path):
    model, variables = _variables()
    manager = checkpoints.make_manager(str(tmp_path), 3)
    _save(manager, 1, variables, model=None)  # as older runs saved: no model size beside the state
    assert checkpoints.MODEL_KEY not in checkpoints.read_data(manager, 1)
    other, other_variables = _variables(embed_dim=16)
    expected = jax.eval_shape(lambda: other_variables)
    with pytest.raises(checkpoints.ModelSizeError, match=r"1: \S+ has shape \(32,\) in the checkpoint but \(16,\) for"):
        checkpoints.restore_newest_intact(manager, [1], model=other, expected_tree=expected)
    step, _, _ = checkpoints.restore_newest_intact(
        manager, [1], model=model, expected_tree=jax.eval_shape(lambda: variables)
    )
    assert step == 1

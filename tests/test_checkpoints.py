"""tmspr_jax/checkpoints.py on small hand-made states: a checkpoint removed while a tool reads the workdir (the
training run rotated it away) is said to be so, never reported as damaged."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from tmspr_jax import checkpoints


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

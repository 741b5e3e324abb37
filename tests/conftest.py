"""Fixtures shared by the test modules: generated data and tiny runs, made once per test session (per worker under
pytest-xdist). The configurations themselves are in ``tiny.py``."""

from __future__ import annotations

import os

# The test processes run hundreds of different programs: glibc's defaults hand their freed memory back, where
# hostmem.retain_freed_memory (applied by the commands' flag parsing, which tests call in-process) would hold every
# process at the largest peak it ever reached. tests/test_hostmem.py sets the switch itself.
os.environ.setdefault("TMSPR_RETAIN_FREED_MEMORY", "0")

import jax
import pytest

import tiny
from tmspr_jax import experiment, weights
from tmspr_jax.datagen import ensure
from tmspr_jax.models.tmspr import init_variables


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> str:
    """A prepared synthetic set for training (:func:`tiny.train_config`): 8 training ids of 4 images, 6 test ids."""
    root = str(tmp_path_factory.mktemp("tiny_reid"))
    ensure.prepare_for_config(tiny.train_config(root))
    return root


@pytest.fixture(scope="session")
def tool_run(tmp_path_factory) -> tuple:
    """``(config, weights folder)``: a prepared synthetic set (:func:`tiny.run_config`) and a randomly initialised
    tiny model for it, saved as a converted-weights folder. Shared by the tool tests: do not modify."""
    root = str(tmp_path_factory.mktemp("tools_tiny"))
    cfg = tiny.run_config(root, {"data.test_batch_size": 32})
    ensure.prepare_for_config(cfg)
    exp = experiment.setup_experiment(cfg)
    ckpt = os.path.join(root, "weights0")
    weights.save_variables(ckpt, init_variables(exp.model, jax.random.PRNGKey(0)), weights.model_meta(exp.model))
    return cfg, ckpt

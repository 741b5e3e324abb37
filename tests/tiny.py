"""The tests' one tiny configuration, and readers of what a tiny run writes.

Every end-to-end test (training, faults, tools) runs :func:`run_config`: the demo config on a small generated
synthetic set with a depth-2, width-32 model on 64x32 images, overridden per test by dotted keys. The model tests
build :func:`model_config` (the same model, ``config.model`` only) with their own overrides. Plain functions here,
fixtures in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from configs import demo
from tmspr_jax.config import get_base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.py")
TINY_IMG = (64, 32)
TINY_MODEL = {"embed_dim": 32, "depth": 2, "num_heads": 2}
# The generated set: 6 test ids of 1 query and 3 gallery images each; the training ids vary per use
SYNTHETIC = dict(
    num_train_ids=4,
    images_per_id=2,
    num_test_ids=6,
    queries_per_id=1,
    gallery_per_id=3,
    height=TINY_IMG[0],
    width=TINY_IMG[1],
    num_occluder_images=0,
    seed=3,
)
# Training in seconds: batches of 2 ids x 4 images, 2 epochs of 2 steps, an evaluation after each
TRAINING = {
    "data.batch_size": 8,
    "model.stride": (16, 16),
    "train.epochs": 2,
    "train.max_steps_per_epoch": 2,
    "train.eval_period": 1,
    "train.log_every": 1,
    "train.eval_untrained": False,
}
TRAINING_SET = {"num_train_ids": 8, "images_per_id": 4}  # enough for two PK batches of 2 x 4


def override(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Sets ``{"section.key": value}`` on ``config``; a key the config does not have is a KeyError."""
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"config has no {path!r}")
        node[leaf] = value
    return config


def model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """``config.model``: the reference defaults with :data:`TINY_MODEL`, then ``overrides``."""
    return override(get_base_config().model, {**TINY_MODEL, **overrides})


def run_config(
    root: str, overrides: dict[str, Any] | None = None, synthetic: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """The demo config on the synthetic set generated under ``root`` (``SYNTHETIC`` updated by ``synthetic``) with
    the tiny model, then ``overrides`` (dotted keys)."""
    c = demo.get_config()
    c.img_size = TINY_IMG
    c.data.data_dir = os.path.join(root, "tfds")
    c.data.manual_dir = os.path.join(root, "synthetic")
    c.data.synthetic_options = {**SYNTHETIC, **(synthetic or {})}
    c.parsing.maps_dir = os.path.join(c.data.manual_dir, "parsing_lip")
    c.data.occluder_dir = ""  # the training split's images (the folder option is tested in test_pipeline/test_demo)
    c.data.test_batch_size = 8
    c.data.num_workers = 0
    c.eval.max_rank = 10
    override(c, {f"model.{k}": v for k, v in TINY_MODEL.items()})
    return override(c, overrides or {})


def train_config(root: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """:func:`run_config` for training in seconds (``TRAINING``) on the training set ``TRAINING_SET``."""
    return run_config(root, {**TRAINING, **(overrides or {})}, synthetic=TRAINING_SET)


def cli_flags(config: ml_collections.ConfigDict) -> list[str]:
    """Command-line flags giving a :func:`run_config` (its data, the tiny model) to a command; the data and
    ``--config`` first."""
    return [
        f"--config={DEMO}",
        f"--config.data.data_dir={config.data.data_dir}",
        f"--config.data.manual_dir={config.data.manual_dir}",
        "--config.data.synthetic=False",
        "--config.data.occluder_dir=",
        "--config.data.num_workers=0",
        f"--config.data.test_batch_size={config.data.test_batch_size}",
        *model_flags(),
    ]


def model_flags() -> list[str]:
    """Command-line flags for the tiny model on ``TINY_IMG`` images."""
    return [f"--config.img_size={TINY_IMG}", *(f"--config.model.{k}={v}" for k, v in TINY_MODEL.items())]


def latest_variables(workdir: str) -> tuple[int, dict]:
    """``(step, {'params', 'batch_stats'})`` of a run's newest checkpoint."""
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"))
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return step, {"params": state["params"], "batch_stats": state["batch_stats"]}


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]

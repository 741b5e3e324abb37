"""A tiny prepared synthetic dataset and a random checkpoint for the tool tests (extract, search, visualize, sheets).

``prepare_tiny(root)`` generates the demo's synthetic set at 64x32 (4 train ids, 6 test ids: 6 queries and 18
gallery images), builds it, and saves a randomly initialised depth-2, width-32 model as a converted-weights folder.
"""

from __future__ import annotations

import os

import jax

from configs import demo
from tmspr_jax import experiment, weights
from tmspr_jax.datagen import ensure as setup
from tmspr_jax.models.tmspr import init_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")
TINY_MODEL = (
    "--config.img_size=(64, 32)",
    "--config.model.embed_dim=32",
    "--config.model.depth=2",
    "--config.model.num_heads=2",
)


def tiny_config(root: str, test_batch_size: int = 32):
    """The demo config on a small generated set with a depth-2, width-32 model on 64x32 images."""
    c = demo.get_config()
    c.img_size = (64, 32)
    c.data.data_dir = os.path.join(root, "tfds")
    c.data.manual_dir = os.path.join(root, "synthetic")
    c.data.synthetic_options = dict(
        num_train_ids=4,
        images_per_id=2,
        num_test_ids=6,
        queries_per_id=1,
        gallery_per_id=3,
        height=64,
        width=32,
        num_occluder_images=0,
        seed=3,
    )
    c.data.occluder_dir = ""
    c.data.test_batch_size = test_batch_size
    c.data.num_workers = 0
    c.model.embed_dim, c.model.depth, c.model.num_heads = 32, 2, 2
    c.eval.max_rank = 10
    return c


def cli_overrides(cfg) -> list[str]:
    """Command-line flags giving ``cfg`` (from :func:`tiny_config`) to a tool."""
    return [
        f"--config={DEMO}",
        f"--config.data.data_dir={cfg.data.data_dir}",
        f"--config.data.manual_dir={cfg.data.manual_dir}",
        "--config.data.synthetic=False",
        "--config.data.occluder_dir=",
        "--config.data.num_workers=0",
        f"--config.data.test_batch_size={cfg.data.test_batch_size}",
        *TINY_MODEL,
    ]


def prepare_tiny(root: str, seed: int = 0, test_batch_size: int = 32):
    """``(config, weights folder)``: the generated, built dataset and a random model for it."""
    cfg = tiny_config(root, test_batch_size)
    setup.prepare_for_config(cfg)
    exp = experiment.setup_experiment(cfg)
    ckpt = os.path.join(root, f"weights{seed}")
    weights.save_variables(ckpt, init_variables(exp.model, jax.random.PRNGKey(seed)), weights.model_meta(exp.model))
    return cfg, ckpt


_SHARED: dict[str, tuple] = {}


def shared(tmp_path_factory):
    """:func:`prepare_tiny` once per test session (the tool test modules share it; they must not modify it)."""
    if "tiny" not in _SHARED:
        _SHARED["tiny"] = prepare_tiny(str(tmp_path_factory.mktemp("tools_tiny")))
    return _SHARED["tiny"]

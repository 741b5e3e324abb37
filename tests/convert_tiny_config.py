"""The converter tests' config: the tests' tiny model (tests/tiny.py) at width 64 on the reference's 256x128 input
with stride 11 (22x11 grid), no stochastic depth.

Used as ``--config=tests/convert_tiny_config.py`` by tests/test_convert_weights.py and tests/test_weights.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # loaded by path from the commands under test

import tiny
from tmspr_jax.config import get_base_config


def get_config():
    model = {**tiny.TINY_MODEL, "embed_dim": 64, "drop_path": 0.0}
    return tiny.override(get_base_config(), {f"model.{k}": v for k, v in model.items()})

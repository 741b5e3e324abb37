"""Tiny T-MSPR config for the converter tests: D=64, depth 2, 2 heads, 256x128 input, stride 11 (22x11 grid).

Used as ``--config=tests/convert_tiny_config.py`` by tests/test_convert_weights.py and tests/test_weights.py.
"""

from tmspr_jax.config import get_base_config


def get_config():
    c = get_base_config()
    c.model.embed_dim = 64
    c.model.depth = 2
    c.model.num_heads = 2
    c.model.drop_path = 0.0
    return c

"""The synthetic demo set written by ``python -m tmspr_jax.tools.synthetic --out DIR`` (Market-1501 layout)."""

from __future__ import annotations

from pathlib import Path

from tmspr_jax.data.builders import base
from tmspr_jax.data.builders.market1501 import read_market_layout

LAYOUT = """<manual_dir>/   (the --out folder of python -m tmspr_jax.tools.synthetic)
    bounding_box_train/0001_c1s1_000001_00.jpg ...  -> train
    query/...                                       -> query
    bounding_box_test/...                           -> gallery
    parsing_lip/...                                 (LIP label maps, read by tmspr_jax.data.parsing, not stored here)
File names '<pid>_c<cam>s1_<frame>_00.jpg', cams 1..6."""


class SyntheticOccluded(base.ReIDBuilder):
    """Small generated occluded re-ID set in the Market-1501 layout, for the demo and end-to-end tests."""

    name = "synthetic_occluded"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

    def _read_layout(self, manual_dir: Path):
        # Any number of generated ids: no upper pid bound.
        return read_market_layout(manual_dir, folder_names=(), layout=LAYOUT, max_cam=6, max_pid=None)

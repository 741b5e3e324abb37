"""DukeMTMC-reID (Zheng et al., ICCV 2017) in its release layout; reader rules as docs/reference.md §11.1."""

from __future__ import annotations

from pathlib import Path

from tmspr_jax.data.builders import base
from tmspr_jax.data.builders.market1501 import read_market_layout

FOLDER_NAMES = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid")
LAYOUT = """<manual_dir>/DukeMTMC-reID/   (or dukemtmc-reid/, dukemtmcreid/, or <manual_dir> itself)
    bounding_box_train/0001_c2_f0046182.jpg ...  -> train
    query/0005_c2_f0046985.jpg ...               -> query
    bounding_box_test/0002_c1_f0044158.jpg ...   -> gallery
File names '<pid>_c<cam>...jpg', cams 1..8 (pid -1, if any, is junk: dropped and counted)."""


class DukemtmcReid(base.ReIDBuilder):
    """DukeMTMC-reID: 1,404 ids + distractors, 8 cameras (train 702 ids / 16,522 images)."""

    name = "dukemtmc_reid"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

    def _read_layout(self, manual_dir: Path):
        return read_market_layout(manual_dir, folder_names=FOLDER_NAMES, layout=LAYOUT, max_cam=8, max_pid=None)

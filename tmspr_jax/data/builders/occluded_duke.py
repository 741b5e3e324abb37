"""Occluded-Duke (Miao et al., ICCV 2019) in its release layout; reader rules as docs/reference.md §11.1."""

from __future__ import annotations

from pathlib import Path

from tmspr_jax.data.builders import base
from tmspr_jax.data.builders.market1501 import read_market_layout

FOLDER_NAMES = ("Occluded_Duke", "occluded_dukemtmc", "Occluded-Duke")
LAYOUT = """<manual_dir>/Occluded_Duke/   (or occluded_dukemtmc/ as the reference names it, or <manual_dir> itself)
    bounding_box_train/0001_c2_f0046182.jpg ...  -> train
    query/0005_c2_f0046985.jpg ...               -> query
    bounding_box_test/0002_c1_f0044158.jpg ...   -> gallery
File names '<pid>_c<cam>...jpg', cams 1..8 (pid -1, if any, is junk: dropped and counted)."""


class OccludedDuke(base.ReIDBuilder):
    """Occluded-Duke: DukeMTMC-reID re-split so that queries are occluded (train 702 ids / 15,618 images)."""

    name = "occluded_duke"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    HOMEPAGE = "https://github.com/lightas/Occluded-DukeMTMC-Dataset"

    def _read_layout(self, manual_dir: Path):
        return read_market_layout(manual_dir, folder_names=FOLDER_NAMES, layout=LAYOUT, max_cam=8, max_pid=None)

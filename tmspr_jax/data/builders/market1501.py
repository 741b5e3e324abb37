"""Market-1501 (Zheng et al., ICCV 2015) in its release layout; reader rules as docs/reference.md §11.1."""

from __future__ import annotations

from pathlib import Path

from tmspr_jax.data.builders import base

FOLDER_NAMES = ("Market-1501-v15.09.15", "market1501", "Market-1501")
SUBFOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

LAYOUT = """<manual_dir>/Market-1501-v15.09.15/   (or market1501/, or <manual_dir> itself)
    bounding_box_train/0002_c1s1_000451_03.jpg ...   -> train
    query/0001_c1s1_001051_00.jpg ...                -> query
    bounding_box_test/0000_c1s1_000151_01.jpg ...    -> gallery
File names '<pid>_c<cam>...jpg': pid -1 = junk (dropped, counted), 0 = distractor (kept), 0<=pid<=1501, cams 1..6."""


def read_market_layout(
    manual_dir: Path,
    *,
    folder_names: tuple[str, ...],
    layout: str,
    max_cam: int,
    max_pid: int | None,
) -> tuple[dict[str, list[base.Item]], dict[str, int]]:
    """Reads a Market/Duke-style release: three folders of ``<pid>_c<cam>...`` images (sorted), junk pid -1 dropped."""
    root = base.find_dataset_root(manual_dir, folder_names, list(SUBFOLDERS.values()), layout)
    splits, junk = {}, {}
    for split, sub in SUBFOLDERS.items():
        splits[split], junk[split] = base.read_market_folder(
            root / sub, max_cam=max_cam, max_pid=max_pid, layout=layout
        )
    return splits, junk


class Market1501(base.ReIDBuilder):
    """Market-1501 person re-identification: 1,501 ids, 6 cameras (train 751 ids, query/gallery 750/752)."""

    name = "market1501"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    HOMEPAGE = "https://zheng-lab-anu.github.io/Project/project_reid.html"

    def _read_layout(self, manual_dir: Path):
        return read_market_layout(manual_dir, folder_names=FOLDER_NAMES, layout=LAYOUT, max_cam=6, max_pid=1501)

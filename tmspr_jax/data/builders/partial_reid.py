"""Partial-REID (Zheng et al., ICCV 2015), test-only; reader rules as docs/reference.md §11.1.

Training for Partial-REID uses another builder's train split (the reference: Market-1501), named separately in the
config (``data.train`` / ``data.test``).
"""

from __future__ import annotations

from pathlib import Path

from tmspr_jax.data.builders import base

FOLDER_NAMES = ("Partial_REID", "Partial-REID", "Partial-REID_Dataset", "partial_reid")
LAYOUT = """<manual_dir>/Partial_REID/   (or Partial-REID/, Partial-REID_Dataset/, or <manual_dir> itself)
    partial_body_images/001_01.jpg ...  -> query   (camid 0)
    whole_body_images/001_01.jpg ...    -> gallery (camid 1)
Flat folders of .jpg; pid = the integer before the first '_' of the file name (raw, not relabelled)."""


def leading_pid(path: Path, layout: str) -> int:
    """``int(basename.split('_')[0])`` with an error naming the file when it is not an integer."""
    head = path.name.split("_")[0]
    if not head.isdigit():
        raise base.DatasetLayoutError(
            f"File name {path} does not start with '<pid>_' (e.g. 001_01.jpg). Expected layout:\n{layout}"
        )
    return int(head)


class PartialReid(base.ReIDBuilder):
    """Partial-REID: 60 ids, 5 partial (query) + 5 whole-body (gallery) images each; no train split."""

    name = "partial_reid"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

    def _read_layout(self, manual_dir: Path):
        root = base.find_dataset_root(manual_dir, FOLDER_NAMES, ["partial_body_images", "whole_body_images"], LAYOUT)
        splits = {}
        # Single-shot set without cameras: the reference forces query camid 0 and gallery camid 1.
        for split, sub, camid in (("query", "partial_body_images", 0), ("gallery", "whole_body_images", 1)):
            files = base.list_images(root / sub, (".jpg", ".jpeg"), LAYOUT)
            splits[split] = [base.Item(p, leading_pid(p, LAYOUT), camid, p.name) for p in files]
        return splits, {}

"""Occluded-ReID (Zhuo et al., ICME 2018) in its release layout; reader rules as docs/reference.md §11.1.

Configs:

* ``occluded_reid/full`` (default): the common protocol. Query = every occluded image (camid 0), gallery = every
  whole-body image (camid 1), no train split (train on another builder, e.g. ``market1501``).
* ``occluded_reid/half``: the committed reference reader's protocol. ``num_train_ids`` (100) of the ids, chosen with a
  fixed seed, form the train split (occluded and whole-body images, camid 0, relabelled 0..99); the other ids give
  query (occluded, camid 0) and gallery (whole-body, camid 1). The reference drew its split unseeded; ours is
  reproducible: ids are ranked by SHA-256 of ``"<seed>:<pid>"``, which no library version can change.

Stored file names follow the reference's renaming: ``<stem>_01<ext>`` for occluded and ``<stem>_02<ext>`` for
whole-body images (the release uses the same names in both folders, and the train split of ``half`` holds both).
TIFF images are stored as lossless PNG (see :mod:`tmspr_jax.data.builders.base`) and get the ``.png`` extension.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import tensorflow_datasets as tfds

from tmspr_jax.data.builders import base

FOLDER_NAMES = ("Occluded_REID", "OccludedREID", "occluded_reid", "Occluded-REID")
EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
KINDS = (("occluded_body_images", "_01", 0), ("whole_body_images", "_02", 1))  # folder, name suffix, test camid
LAYOUT = """<manual_dir>/Occluded_REID/   (or OccludedREID/, occluded_reid/, or <manual_dir> itself)
    occluded_body_images/<pid>/<pid>_<n>.tif ...   occluded images, one folder per identity (e.g. 001/001_01.tif)
    whole_body_images/<pid>/<pid>_<n>.tif ...      whole-body images, same identities
Images .tif/.jpg/.png; the folder name is the pid and each file name must start with the same '<pid>_'."""


@dataclasses.dataclass(eq=False)
class OccludedReidConfig(tfds.core.BuilderConfig):
    """``num_train_ids`` ids (0 = none, test-only) go to the train split, chosen by ``seed``."""

    num_train_ids: int = 0
    seed: int = 0


def select_train_ids(pids: list[int], num_train_ids: int, seed: int) -> list[int]:
    """The ``num_train_ids`` pids ranked first by SHA-256 of ``"<seed>:<pid>"``: fixed for a seed, sorted."""
    ranked = sorted(pids, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    return sorted(ranked[:num_train_ids])


def read_identity_folders(top: Path, suffix: str) -> list[tuple[Path, int, str]]:
    """(path, pid, stored file name) for every image under ``top/<pid>/``; pid from the folder, checked on the file."""
    if not top.is_dir():
        raise base.DatasetLayoutError(f"Missing folder {top}. Expected layout:\n{LAYOUT}")
    loose = [p.name for p in top.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS]
    if loose:
        raise base.DatasetLayoutError(
            f"Images directly in {top} (e.g. {loose[:3]}); expected one folder per identity. Layout:\n{LAYOUT}"
        )
    out = []
    folders = sorted(p for p in top.iterdir() if p.is_dir())
    if not folders:
        raise base.DatasetLayoutError(f"Folder {top} holds no identity folders. Expected layout:\n{LAYOUT}")
    for folder in folders:
        if not folder.name.isdigit():
            raise base.DatasetLayoutError(f"Identity folder {folder} is not an integer pid. Expected layout:\n{LAYOUT}")
        pid = int(folder.name)
        for path in base.list_images(folder, EXTENSIONS, LAYOUT):
            head = path.name.split("_")[0]
            if not head.isdigit() or int(head) != pid:
                raise base.DatasetLayoutError(
                    f"File {path}: name should start with '{folder.name}_' (the pid of its folder). "
                    f"Expected layout:\n{LAYOUT}"
                )
            out.append((path, pid, f"{path.stem}{suffix}{base.stored_extension(path)}"))
    return out


class OccludedReid(base.ReIDBuilder):
    """Occluded-ReID: 200 ids, 5 occluded + 5 whole-body images each (``full`` test-only; ``half`` 100/100 ids)."""

    name = "occluded_reid"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS = [
        OccludedReidConfig(name="full", description="query = all occluded, gallery = all whole-body, no train"),
        OccludedReidConfig(
            name="half", num_train_ids=100, seed=0, description="reference split: 100 train ids, 100 test ids"
        ),
    ]

    def _read_layout(self, manual_dir: Path):
        cfg = self.builder_config
        root = base.find_dataset_root(manual_dir, FOLDER_NAMES, [k for k, _, _ in KINDS], LAYOUT)
        found = {kind: read_identity_folders(root / kind, suffix) for kind, suffix, _ in KINDS}
        pids = sorted({pid for entries in found.values() for _, pid, _ in entries})
        if cfg.num_train_ids < 0 or cfg.num_train_ids >= len(pids):
            raise ValueError(
                f"occluded_reid/{cfg.name}: num_train_ids={cfg.num_train_ids} must be in 0..{len(pids) - 1} "
                f"({len(pids)} ids found under {root})."
            )
        train_ids = set(select_train_ids(pids, cfg.num_train_ids, cfg.seed))
        splits: dict[str, list[base.Item]] = {"query": [], "gallery": []}
        if train_ids:
            splits["train"] = []
        for (kind, _, test_camid), split in zip(KINDS, ("query", "gallery")):
            for path, pid, name in found[kind]:
                if pid in train_ids:  # every training image gets camid 0, as in the reference
                    splits["train"].append(base.Item(path, pid, 0, name))
                else:
                    splits[split].append(base.Item(path, pid, test_camid, name))
        self.info.metadata["train_ids"] = sorted(train_ids)
        return splits, {}

"""Generators of tiny re-ID dataset folders in each dataset's real release layout, for tests.

Each ``make_*`` writes small Pillow images (16x8 by default) under ``root`` and returns a :class:`DatasetTruth`
describing what it wrote: the folder to pass as ``manual_dir`` and, per split, the ``(file_name, pid, camid)`` each
record must have (train pids already relabelled to 0..N-1 in sorted raw-pid order, query/gallery pids raw).
The truth is computed here from what was generated, independently of the builders.

Usage from another test module (``tests/`` is on ``sys.path`` under pytest)::

    from fixtures import make_market1501
    truth = make_market1501(tmp_path / "raw")
    split = open_split("market1501", "train", tmp_path / "tfds", manual_dir=truth.manual_dir)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "query", "gallery")
Row = tuple[str, int, int]  # (stored file name, pid, camid)


@dataclasses.dataclass
class DatasetTruth:
    """What a fixture generated: the manual dir, each split's expected records and the junk files it wrote."""

    manual_dir: Path
    splits: dict[str, list[Row]]
    junk: dict[str, int] = dataclasses.field(default_factory=dict)
    sources: dict[str, Path] = dataclasses.field(default_factory=dict)  # stored file name -> source image (train+test)

    def stats(self, split: str) -> dict[str, int]:
        """``{'ids', 'images', 'cameras'}`` of ``split``, as the prepare table reports them."""
        rows = self.splits[split]
        return {"ids": len({r[1] for r in rows}), "images": len(rows), "cameras": len({r[2] for r in rows})}


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (16, 8)) -> Path:
    """A random RGB image of ``size`` (H, W), format from the extension (JPEG, PNG, TIFF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _relabel(rows: Iterable[Row]) -> list[Row]:
    rows = list(rows)
    mapping = {p: i for i, p in enumerate(sorted({r[1] for r in rows}))}
    return [(n, mapping[p], c) for n, p, c in rows]


def _market_style(
    root: Path,
    *,
    train_ids: list[int],
    query_ids: list[int],
    gallery_ids: list[int],
    num_cams: int,
    per_id: int,
    name_fmt: str,
    junk_per_split: int,
    seed: int,
) -> DatasetTruth:
    """Writes bounding_box_train / query / bounding_box_test with names from ``name_fmt`` (pid, cam, frame)."""
    rng = np.random.default_rng(seed)
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    ids = {"train": train_ids, "query": query_ids, "gallery": gallery_ids}
    splits: dict[str, list[Row]] = {}
    junk: dict[str, int] = {}
    frame = 0
    for split, folder in folders.items():
        rows = []
        for k, pid in enumerate(ids[split]):
            for j in range(per_id):
                cam = 1 + (k + j) % num_cams  # spread ids over cameras
                frame += 1
                name = name_fmt.format(pid=pid, cam=cam, frame=frame)
                write_image(root / folder / name, rng)
                rows.append((name, pid, cam - 1))
        for j in range(junk_per_split):
            frame += 1
            write_image(root / folder / name_fmt.format(pid=-1, cam=1 + j % num_cams, frame=frame), rng)
        junk[split] = junk_per_split
        splits[split] = _relabel(rows) if split == "train" else rows
    return DatasetTruth(manual_dir=root, splits=splits, junk=junk)


MARKET_NAME = "{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"
DUKE_NAME = "{pid:04d}_c{cam}_f{frame:07d}.jpg"


def make_market1501(
    root: Path,
    *,
    folder: str = "Market-1501-v15.09.15",
    train_ids: tuple[int, ...] = (2, 7, 11, 1501),
    test_ids: tuple[int, ...] = (3, 5, 12),
    per_id: int = 2,
    junk_per_split: int = 1,
    distractors: int = 2,
    seed: int = 0,
) -> DatasetTruth:
    """Market-1501 release under ``root/folder``: ``per_id`` images per id, ``junk_per_split`` pid -1 files in each
    folder (dropped by the builder), ``distractors`` pid-0 images in the gallery (kept). Returns the truth; its
    ``manual_dir`` is ``root`` (the builder finds ``folder`` inside)."""
    truth = _market_style(
        root / folder,
        train_ids=list(train_ids),
        query_ids=list(test_ids),
        gallery_ids=list(test_ids),
        num_cams=6,
        per_id=per_id,
        name_fmt=MARKET_NAME,
        junk_per_split=junk_per_split,
        seed=seed,
    )
    rng = np.random.default_rng(seed + 1)
    for j in range(distractors):  # pid 0: Market's distractors, gallery only
        name = MARKET_NAME.format(pid=0, cam=1 + j % 6, frame=900000 + j)
        write_image(root / folder / "bounding_box_test" / name, rng)
        truth.splits["gallery"].append((name, 0, j % 6))
    truth.manual_dir = root
    return truth


def make_dukemtmc_reid(
    root: Path,
    *,
    folder: str = "DukeMTMC-reID",
    train_ids: tuple[int, ...] = (1, 4, 7140),
    query_ids: tuple[int, ...] = (5, 9),
    gallery_ids: tuple[int, ...] = (5, 9, 6000),
    per_id: int = 3,
    seed: int = 1,
) -> DatasetTruth:
    """DukeMTMC-reID release (``0001_c2_f0046182.jpg`` names, 8 cameras, no junk) under ``root/folder``."""
    truth = _market_style(
        root / folder,
        train_ids=list(train_ids),
        query_ids=list(query_ids),
        gallery_ids=list(gallery_ids),
        num_cams=8,
        per_id=per_id,
        name_fmt=DUKE_NAME,
        junk_per_split=0,
        seed=seed,
    )
    truth.manual_dir = root
    return truth


def make_occluded_duke(root: Path, *, folder: str = "Occluded_Duke", seed: int = 2, **kwargs) -> DatasetTruth:
    """Occluded-Duke release (Duke layout) under ``root/folder`` (the reference's name is ``occluded_dukemtmc``)."""
    return make_dukemtmc_reid(root, folder=folder, seed=seed, **kwargs)


def make_synthetic_layout(
    root: Path, *, train_ids: tuple[int, ...] = (1, 2, 3), test_ids: tuple[int, ...] = (4, 5), per_id: int = 2
) -> DatasetTruth:
    """What ``python -m tmspr_jax.tools.synthetic --out root`` writes (Market layout directly in ``root``,
    names ``0001_c1s1_000001_00.jpg``), minus the parsing maps (an empty ``parsing_lip/`` folder)."""
    truth = _market_style(
        root,
        train_ids=list(train_ids),
        query_ids=list(test_ids),
        gallery_ids=list(test_ids),
        num_cams=6,
        per_id=per_id,
        name_fmt=MARKET_NAME,
        junk_per_split=0,
        seed=3,
    )
    (root / "parsing_lip").mkdir(exist_ok=True)
    return truth


def make_partial_reid(
    root: Path, *, folder: str = "Partial_REID", pids: tuple[int, ...] = (1, 2, 60), per_id: int = 2
) -> DatasetTruth:
    """Partial-REID release: flat ``partial_body_images/`` (query, camid 0) and ``whole_body_images/`` (gallery,
    camid 1) of ``<pid:03d>_<n:02d>.jpg``; no train split."""
    rng = np.random.default_rng(4)
    splits: dict[str, list[Row]] = {"query": [], "gallery": []}
    for split, sub, camid in (("query", "partial_body_images", 0), ("gallery", "whole_body_images", 1)):
        for pid in pids:
            for n in range(1, per_id + 1):
                name = f"{pid:03d}_{n:02d}.jpg"
                write_image(root / folder / sub / name, rng)
                splits[split].append((name, pid, camid))
    return DatasetTruth(manual_dir=root, splits=splits)


@dataclasses.dataclass
class OccludedReidTruth(DatasetTruth):
    """Occluded-ReID truth: ``images`` lists every generated image as (stored name, raw pid, occluded?)."""

    images: list[tuple[str, int, bool]] = dataclasses.field(default_factory=list)

    def splits_for(self, train_ids: Iterable[int]) -> dict[str, list[Row]]:
        """Expected splits when ``train_ids`` form the train split (camid 0, relabelled) and the rest are tested."""
        train_ids = set(train_ids)
        train = [(n, p, 0) for n, p, _ in self.images if p in train_ids]
        out = {
            "query": [(n, p, 0) for n, p, occ in self.images if occ and p not in train_ids],
            "gallery": [(n, p, 1) for n, p, occ in self.images if not occ and p not in train_ids],
        }
        if train:
            out["train"] = _relabel(train)
        return out


def make_occluded_reid(
    root: Path,
    *,
    folder: str = "Occluded_REID",
    num_ids: int = 4,
    per_kind: int = 2,
    ext: str = ".tif",
    size: tuple[int, int] = (16, 8),
) -> OccludedReidTruth:
    """Occluded-ReID release: ``occluded_body_images/<pid:03d>/<pid:03d>_<n:02d><ext>`` and the same names under
    ``whole_body_images/``, ids 1..num_ids. Stored names are ``<stem>_01`` (occluded) / ``<stem>_02`` (whole) with
    ``.png`` for TIFF sources. ``splits`` is the default ``full`` config (no train)."""
    rng = np.random.default_rng(5)
    images, sources = [], {}
    stored_ext = ".png" if ext in (".tif", ".tiff") else ext
    for sub, suffix, occluded in (("occluded_body_images", "_01", True), ("whole_body_images", "_02", False)):
        for pid in range(1, num_ids + 1):
            for n in range(1, per_kind + 1):
                stem = f"{pid:03d}_{n:02d}"
                path = write_image(root / folder / sub / f"{pid:03d}" / f"{stem}{ext}", rng, size)
                stored = f"{stem}{suffix}{stored_ext}"
                images.append((stored, pid, occluded))
                sources[stored] = path
    truth = OccludedReidTruth(manual_dir=root, splits={}, sources=sources, images=images)
    truth.splits = truth.splits_for(())
    return truth


def make_msmt17(
    root: Path,
    *,
    folder: str = "MSMT17_V1",
    train_pids: tuple[int, ...] = (0, 1, 2),
    val_pids: tuple[int, ...] = (1, 2),
    test_pids: tuple[int, ...] = (0, 5),
) -> DatasetTruth:
    """MSMT17 V1 release: ``train/<pid:04d>/<pid:04d>_<track:03d>_<cam:02d>_0303morning_<frame:04d>_0.jpg`` (likewise
    ``test/``) with ``list_{train,val,query,gallery}.txt`` lines ``<relpath> <pid>``; cameras up to 15."""
    rng = np.random.default_rng(6)
    base = root / folder
    lines: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    splits: dict[str, list[Row]] = {"train": [], "query": [], "gallery": []}
    frame = 0
    plan = [
        ("train", "train", train_pids, "train"),
        ("val", "train", val_pids, "train"),
        ("query", "test", test_pids, "query"),
        ("gallery", "test", test_pids, "gallery"),
    ]
    for listname, imgdir, pids, split in plan:
        for pid in pids:
            frame += 1
            cam = 1 + (frame * 7) % 15  # spreads over 1..15, including two-digit cameras
            name = f"{pid:04d}_{frame:03d}_{cam:02d}_0303morning_{frame:04d}_0.jpg"
            write_image(base / imgdir / f"{pid:04d}" / name, rng)
            lines[listname].append(f"{pid:04d}/{name} {pid}")
            splits[split].append((name, pid, cam - 1))
    for listname, ls in lines.items():
        (base / f"list_{listname}.txt").write_text("\n".join(ls) + "\n")
    splits["train"] = _relabel(splits["train"])
    return DatasetTruth(manual_dir=root, splits=splits)

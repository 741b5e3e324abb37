"""MSMT17 (Wei et al., CVPR 2018) in its release layout; reader rules as docs/reference.md §11.1."""

from __future__ import annotations

from pathlib import Path

from tmspr_jax.data.builders import base

FOLDER_NAMES = ("MSMT17", "MSMT17_V1", "MSMT17_V2")
LIST_FILES = {
    "train": ("list_train.txt", "list_val.txt"),
    "query": ("list_query.txt",),
    "gallery": ("list_gallery.txt",),
}
# V1 ships train/ and test/; V2 ships mask_train_v2/ and mask_test_v2/.
IMAGE_DIRS = {"train": ("train", "mask_train_v2"), "test": ("test", "mask_test_v2")}
MAX_CAM = 15
LAYOUT = """<manual_dir>/MSMT17_V1/   (or MSMT17/, MSMT17_V2/, or <manual_dir> itself)
    train/0000/0000_000_01_0303morning_0015_0.jpg ...   (V2: mask_train_v2/)
    test/0000/0000_000_01_0303morning_0008_0.jpg ...    (V2: mask_test_v2/)
    list_train.txt list_val.txt        lines '<relpath under train/> <pid>'  -> train (both lists)
    list_query.txt list_gallery.txt    lines '<relpath under test/> <pid>'   -> query, gallery
camid = int(basename.split('_')[2]) - 1, cameras 1..15."""


def image_dir(root: Path, which: str) -> Path:
    """``train`` or ``test`` image folder of a V1 or V2 release."""
    for name in IMAGE_DIRS[which]:
        if (root / name).is_dir():
            return root / name
    raise base.DatasetLayoutError(f"No image folder {' or '.join(IMAGE_DIRS[which])} under {root}. Layout:\n{LAYOUT}")


def camera_of(path: Path) -> int:
    """0-based camera from ``PPPP_TTT_CC_...jpg`` (third '_' field)."""
    fields = path.name.split("_")
    if len(fields) < 3 or not fields[2].isdigit():
        raise base.DatasetLayoutError(
            f"File name {path} does not match '<pid>_<track>_<cam>_...' (e.g. 0000_000_01_0303morning_0015_0.jpg)."
        )
    cam = int(fields[2])
    if not 1 <= cam <= MAX_CAM:
        raise base.DatasetLayoutError(f"File name {path}: camera {cam} outside 1..{MAX_CAM}.")
    return cam - 1


def read_list(list_file: Path, images: Path) -> list[base.Item]:
    """Items of one list file; every listed image must exist."""
    items = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise base.DatasetLayoutError(f"{list_file}:{lineno}: expected '<relpath> <pid>', got {line!r}.")
        path = images / parts[0]
        if not path.is_file():
            raise base.DatasetLayoutError(f"{list_file}:{lineno}: listed image {path} does not exist.")
        pid = int(parts[1])
        if pid < 0:
            raise base.DatasetLayoutError(f"{list_file}:{lineno}: pid {pid} is negative.")
        items.append(base.Item(path, pid, camera_of(path), path.name))
    if not items:
        raise base.DatasetLayoutError(f"List file {list_file} lists no images. Expected layout:\n{LAYOUT}")
    return items


class Msmt17(base.ReIDBuilder):
    """MSMT17: 4,101 ids, 15 cameras (train 1,041 ids / 32,621 images incl. the validation list)."""

    name = "msmt17"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    HOMEPAGE = "https://www.pkuvmc.com/dataset.html"

    def _read_layout(self, manual_dir: Path):
        lists = [f for files in LIST_FILES.values() for f in files]
        root = base.find_dataset_root(manual_dir, FOLDER_NAMES, lists, LAYOUT)
        train_dir, test_dir = image_dir(root, "train"), image_dir(root, "test")
        splits = {}
        for split, files in LIST_FILES.items():
            images = train_dir if split == "train" else test_dir
            splits[split] = [it for f in files for it in read_list(root / f, images)]
        return splits, {}

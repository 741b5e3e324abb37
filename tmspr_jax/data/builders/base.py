"""Shared machinery of the re-ID TFDS builders: record features, layout lookup, image checks, relabelling.

Every dataset module lists its images as :class:`Item` s per split (reading the release's own layout); the base class
:class:`ReIDBuilder` turns them into TFDS splits stored as ``array_record``. The image bytes are stored as found
(JPEG/PNG) after Pillow has opened and fully decoded each one, so a corrupt file fails the build with its path.
TIFF (Occluded-ReID's release format) is re-encoded losslessly as PNG: TIFF is itself lossless, PNG keeps every pixel
while being a format every image reader decodes, and JPEG would add compression artefacts the release does not have.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import inspect
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

VERSION = tfds.core.Version("1.0.0")

# Market / Duke style names: "0002_c1s1_000451_03.jpg", "-1_c3s2_..." (junk), "0001_c2_f0046182.jpg".
MARKET_NAME = re.compile(r"^([-\d]+)_c(\d)")
# Pillow formats kept byte-for-byte; anything else (TIFF, BMP, ...) is re-encoded as PNG.
_KEPT_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}


class DatasetLayoutError(ValueError):
    """The raw release folder does not have the expected layout (missing/empty folder, unparsable name, ...)."""


class CorruptImageError(ValueError):
    """An image file of the release cannot be decoded by Pillow."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of one split, before it is read: where it is and what the builder stores for it."""

    path: Path
    pid: int
    camid: int
    file_name: str  # basename stored in the record (unique within a split)


def find_dataset_root(manual_dir: Path, folder_names: Sequence[str], required: Sequence[str], layout: str) -> Path:
    """Returns the release folder inside ``manual_dir`` (or ``manual_dir`` itself) that holds all of ``required``.

    ``manual_dir`` may be the release folder itself or a folder containing it under one of ``folder_names``.
    """
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise DatasetLayoutError(
            f"manual_dir {manual_dir} does not exist or is not a folder. Expected layout:\n{layout}"
        )
    candidates = [manual_dir] + [manual_dir / name for name in folder_names]
    for cand in candidates:
        if all((cand / child).exists() for child in required):
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetLayoutError(f"No folder with {list(required)} found; looked in: {tried}. Expected layout:\n{layout}")


def list_images(folder: Path, extensions: Sequence[str], layout: str) -> list[Path]:
    """Sorted image files of ``folder`` (non-recursive); a missing or image-less folder is an error.

    Files with other extensions (e.g. the ``Thumbs.db`` some releases ship) are left out and logged.
    """
    if not folder.is_dir():
        raise DatasetLayoutError(f"Missing folder {folder}. Expected layout:\n{layout}")
    exts = {e.lower() for e in extensions}
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    files = [p for p in entries if p.suffix.lower() in exts]
    others = [p.name for p in entries if p.suffix.lower() not in exts]
    if others:
        logging.warning("%s: ignoring %d non-image file(s) (not %s): %s", folder, len(others), sorted(exts), others[:5])
    if not files:
        raise DatasetLayoutError(
            f"Folder {folder} holds no images with extension {sorted(exts)}. Expected layout:\n{layout}"
        )
    return files


def parse_market_name(path: Path, *, max_cam: int, max_pid: int | None, layout: str) -> tuple[int, int]:
    """(raw pid, 1-based camera) from a Market/Duke-style basename ``PID_cC...``; errors name the file."""
    match = MARKET_NAME.match(path.name)
    if match is None:
        raise DatasetLayoutError(
            f"File name {path} does not match '<pid>_c<cam>...' (e.g. 0002_c1s1_000451_03.jpg). "
            f"Expected layout:\n{layout}"
        )
    try:
        pid = int(match.group(1))
    except ValueError:
        raise DatasetLayoutError(f"File name {path}: pid {match.group(1)!r} is not an integer.") from None
    cam = int(match.group(2))
    if pid != -1 and (pid < 0 or (max_pid is not None and pid > max_pid)):
        raise DatasetLayoutError(f"File name {path}: pid {pid} outside 0..{max_pid} (or -1 for junk).")
    if not 1 <= cam <= max_cam:
        raise DatasetLayoutError(f"File name {path}: camera {cam} outside 1..{max_cam}.")
    return pid, cam


def read_market_folder(
    folder: Path, *, max_cam: int, max_pid: int | None, layout: str, extensions: Sequence[str] = (".jpg",)
) -> tuple[list[Item], int]:
    """Items of one Market/Duke-style folder (sorted by name) with raw pids, and the number of pid -1 junk files
    dropped."""
    items, junk = [], 0
    for path in list_images(folder, extensions, layout):
        pid, cam = parse_market_name(path, max_cam=max_cam, max_pid=max_pid, layout=layout)
        if pid == -1:  # the release's documented junk label: dropped, counted, reported
            junk += 1
            continue
        items.append(Item(path=path, pid=pid, camid=cam - 1, file_name=path.name))
    if not items:
        raise DatasetLayoutError(f"Folder {folder} holds only junk images (pid -1). Expected layout:\n{layout}")
    return items, junk


def relabel(items: Sequence[Item]) -> tuple[list[Item], dict[int, int]]:
    """Train pids -> 0..N-1 in sorted raw-pid order; returns the new items and the raw->label map."""
    mapping = {pid: label for label, pid in enumerate(sorted({it.pid for it in items}))}
    return [dataclasses.replace(it, pid=mapping[it.pid]) for it in items], mapping


def encoded_image(path: Path) -> bytes:
    """The bytes to store for ``path``: as found for JPEG/PNG, PNG for other formats; fully decoded once to check it."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorruptImageError(f"Cannot read image {path}: {e}") from e
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()  # structural checks (e.g. PNG chunk CRCs)
        with Image.open(io.BytesIO(raw)) as im:
            fmt = im.format
            im.load()  # a full decode: catches truncated/garbled pixel data that verify() misses for JPEG
            if fmt in _KEPT_FORMATS:
                return raw
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except Exception as e:  # Pillow raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise CorruptImageError(f"Corrupt or unreadable image {path}: {type(e).__name__}: {e}") from e


def stored_extension(path: Path) -> str:
    """Extension matching what :func:`encoded_image` stores for ``path`` (.jpg/.png kept, others become .png)."""
    return path.suffix if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"


def split_stats(items: Sequence[Item]) -> dict[str, Any]:
    """ids / images / cameras of one split, as the reference's statistics table counts them."""
    return {
        "ids": len({it.pid for it in items}),
        "images": len(items),
        "cameras": len({it.camid for it in items}),
        "camera_ids": sorted({it.camid for it in items}),
    }


class ReIDBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of every re-ID builder: manual-download folder in, ``train``/``query``/``gallery`` array_record out.

    Subclasses set ``MANUAL_DOWNLOAD_INSTRUCTIONS`` (the expected layout) and implement :meth:`_read_layout`.
    """

    VERSION = VERSION
    RELEASE_NOTES = {"1.0.0": "First release."}
    # Set in subclasses: the folder layout (shown in every layout error) and the dataset's home page.
    MANUAL_DOWNLOAD_INSTRUCTIONS = ""
    HOMEPAGE = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds derives this through `importlib_resources`, which this environment lacks (it is only used to look
        # for a checksums file next to the code); the module's own file is the same answer.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip(),
            homepage=self.HOMEPAGE or None,
            features=tfds.features.FeaturesDict(
                {
                    # Encoded bytes as stored in the release (JPEG/PNG), decoded by the reader with Pillow.
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "pid": tfds.features.Scalar(dtype=np.int64),
                    "camid": tfds.features.Scalar(dtype=np.int64),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=None,
            # Records keep the generation order (sorted file names, as the reference's Market reader), so that
            # fixed-order evaluation batches, and with them batch-wise part normalisation, are reproducible.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    @abc.abstractmethod
    def _read_layout(self, manual_dir: Path) -> tuple[dict[str, list[Item]], dict[str, int]]:
        """Lists each split's items (train pids raw, not yet relabelled) and the junk dropped per split."""

    def _relabel_train(self, splits: dict[str, list[Item]]) -> dict[int, int]:
        """Relabels ``splits['train']`` in place; returns the raw->label map (overridden when already relabelled)."""
        splits["train"], mapping = relabel(splits["train"])
        return mapping

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        try:
            manual_dir = Path(os.fspath(dl_manager.manual_dir))
        except AssertionError as e:  # tfds' message names the folder; ours adds the builder and stays a ValueError
            raise DatasetLayoutError(f"{self.name}: {e}") from None
        splits, junk = self._read_layout(manual_dir)
        label_map = self._relabel_train(splits) if "train" in splits else {}
        for split, items in splits.items():
            if not items:
                raise DatasetLayoutError(f"{self.name}: split {split!r} is empty under {manual_dir}.")
            dup = [n for n, c in collections.Counter(it.file_name for it in items).items() if c > 1]
            if dup:  # file names key the parsing targets, so they must be unique within a split
                raise DatasetLayoutError(f"{self.name}: split {split!r} has duplicate file names, e.g. {dup[:3]}.")
        stats = {split: split_stats(items) for split, items in splits.items()}
        md = self.info.metadata
        md["source_dir"] = str(manual_dir)
        md["splits"] = stats
        md["junk_dropped"] = {split: int(junk.get(split, 0)) for split in splits}
        md["num_classes"] = stats["train"]["ids"] if "train" in stats else 0
        # SIE rows the model needs: max camid + 1. The reference counts distinct train cameras, the same number
        # whenever they are 0..n-1 (every real release); with a gap the count would leave the top camid unindexable.
        md["num_cameras"] = max(stats["train"]["camera_ids"]) + 1 if "train" in stats else 0
        md["train_label_map"] = {str(raw): label for raw, label in label_map.items()}
        return {split: self._generate_examples(items) for split, items in splits.items()}

    def _generate_examples(self, items: Iterable[Item]) -> Iterator[tuple[str, dict[str, Any]]]:
        for index, it in enumerate(items):
            record = {"image": encoded_image(it.path), "pid": it.pid, "camid": it.camid, "file_name": it.file_name}
            yield f"{index:010d}", record  # with shuffling disabled tfds orders records by key

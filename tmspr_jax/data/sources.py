"""Random-access reading of the prepared re-ID datasets (tfds data sources over array_record, no TensorFlow).

``open_split('occluded_duke', 'train', data_dir)`` gives a :class:`ReIDSplit`: ``len``, ``split[i]`` -> record
``{'image': bytes, 'pid': int, 'camid': int, 'file_name': str}``, and per-split NumPy arrays ``pids`` / ``camids`` /
``file_names`` read from the records themselves. Records are in the builders' generation order (sorted file names per
folder; tfds shuffling is disabled), but labels are always read from the records, never inferred from that order.
Builder names may carry a config: ``occluded_reid/half``; the user's own sets are ``custom/<name>``.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import signal
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tmspr_jax.data import builders
from tmspr_jax.data.builders import CorruptImageError

_READ_CHUNK = 1024  # records per random-access batch when scanning a whole split for its labels


class CorruptDatasetError(ValueError):
    """A prepared dataset's files cannot be read (truncated, overwritten): the message names them and says how to
    prepare the dataset again."""


def _builder_name(name: str) -> str:
    return name.split("/")[0].split(":")[0]


def get_builder(name: str, data_dir: str | os.PathLike, *, camid: str = "") -> tfds.core.DatasetBuilder:
    """The builder ``name`` (``'dataset[/config]'``, or ``'custom/<name>'``) rooted at ``data_dir``; unknown names are
    an error. ``camid`` is the custom datasets' ``--camid`` option (read only when they are built)."""
    if _builder_name(name) == builders.custom.NAME:
        return builders.custom_builder(name, os.fspath(data_dir), camid=camid)
    if _builder_name(name) not in builders.BUILDERS:
        raise ValueError(f"Unknown dataset {name!r}; known builders: {builders.DATASET_NAMES}.")
    return tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")


def prepare_dataset(
    name: str,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    camid: str = "",
) -> tfds.core.DatasetBuilder:
    """Builds dataset ``name`` from the raw release folder ``manual_dir`` into ``data_dir`` (array_record).

    An already prepared dataset is reused unless ``overwrite``; a custom dataset prepared from another folder (or with
    another ``camid``) is refused rather than reused. ``overwrite`` builds the new copy beside the old one and swaps
    them when it is complete, so an interrupted rebuild leaves the old dataset in place. Layout problems raise
    :class:`~tmspr_jax.data.builders.DatasetLayoutError`, unreadable images
    :class:`~tmspr_jax.data.builders.CorruptImageError`, both naming the offending path.
    """
    builder = get_builder(name, data_dir, camid=camid)
    if not os.path.isdir(manual_dir):
        raise builders.DatasetLayoutError(
            f"manual_dir {os.fspath(manual_dir)} does not exist or is not a folder. Expected layout for {name}:\n"
            f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    prepared = builder.is_prepared()
    if prepared and overwrite:
        _rebuild_beside(name, data_dir, manual_dir, camid, os.fspath(builder.data_dir))
        return get_builder(name, data_dir)
    if prepared and _builder_name(name) == builders.custom.NAME:
        md = builder.info.metadata
        was, now = os.path.realpath(md.get("source_dir", "")), os.path.realpath(manual_dir)
        if (was, md.get("camid_option", "")) != (now, camid):
            raise ValueError(
                f"{name} is already prepared under {data_dir} from {was} (--camid={md.get('camid_option', '')!r}); "
                f"pass --overwrite to rebuild it from {now} (--camid={camid!r}), or choose another name"
            )
    mode = tfds.download.GenerateMode
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir),
            # not prepared: a leftover folder of an interrupted first build is replaced
            download_mode=mode.FORCE_REDOWNLOAD if overwrite else mode.REUSE_DATASET_IF_EXISTS,
        )
    )
    return builder


def _rebuild_beside(name: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike, camid: str, final: str):
    """Builds ``name`` into a scratch data_dir next to ``final`` (same file system), then swaps the two folders."""
    scratch = tempfile.mkdtemp(prefix=".rebuild-", dir=os.fspath(data_dir))
    try:
        fresh = get_builder(name, scratch, camid=camid)
        fresh.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=os.fspath(manual_dir), download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
            )
        )
        old = f"{final}.old-{os.getpid()}"
        # Two renames; Ctrl-C and SIGTERM wait until both are done, so the dataset is never missing.
        blocked = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            os.rename(final, old)
            os.rename(os.fspath(fresh.data_dir), final)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class ReIDSplit:
    """One split of a prepared re-ID dataset: random access to records plus its label arrays and metadata."""

    def __init__(
        self,
        name: str,
        split: str,
        source: Any,
        metadata: Mapping[str, Any],
        files: list[str] | None = None,
        data_dir: str = "",
    ):
        self.name = name
        self.split = split
        self._source = source
        self.metadata = dict(metadata)
        self.files = list(files or [])
        self.data_dir = data_dir

    def _damaged(self, e: BaseException) -> CorruptDatasetError:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return corrupt_dataset_error(self.name, self.split, self.files, self.data_dir, f"{type(e).__name__}: {first}")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"{self.name}/{self.split}: index {index} out of range for {n} records.")
        try:
            return _normalise(self._source[i % n])
        except Exception as e:  # array_record / riegeli / tfds decoding raise many types for damaged files
            raise self._damaged(e) from e

    def __repr__(self) -> str:
        return f"ReIDSplit(name={self.name!r}, split={self.split!r}, records={len(self)})"

    @functools.cached_property
    def _labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pids, camids, names = [], [], []
        try:
            for start in range(0, len(self), _READ_CHUNK):
                for rec in self._source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(self))))):
                    pids.append(int(rec["pid"]))
                    camids.append(int(rec["camid"]))
                    names.append(_text(rec["file_name"]))
        except Exception as e:
            raise self._damaged(e) from e
        return np.asarray(pids, np.int64), np.asarray(camids, np.int64), np.asarray(names, dtype=object)

    @property
    def pids(self) -> np.ndarray:
        """int64 ``[N]`` pid of every record, in record order (train: labels 0..C-1; query/gallery: raw pids)."""
        return self._labels[0]

    @property
    def camids(self) -> np.ndarray:
        """int64 ``[N]`` 0-based camera of every record, in record order."""
        return self._labels[1]

    @property
    def file_names(self) -> np.ndarray:
        """object ``[N]`` of str: the stored basename of every record, in record order."""
        return self._labels[2]

    @property
    def num_classes(self) -> int:
        """Number of training identities of this dataset (0 for test-only datasets)."""
        return int(self.metadata.get("num_classes", 0))

    @property
    def num_cameras(self) -> int:
        """Rows of the SIE camera table for this dataset's train split: max train camid + 1 (0 for test-only)."""
        return int(self.metadata.get("num_cameras", 0))

    def stats(self) -> dict[str, int]:
        """``{'ids', 'images', 'cameras'}`` counted from the records, as the reference's statistics table."""
        return {
            "ids": int(len(np.unique(self.pids))),
            "images": len(self),
            "cameras": int(len(np.unique(self.camids))),
        }


def corrupt_dataset_error(name: str, split: str, files: list[str], data_dir: str, reason: str) -> CorruptDatasetError:
    where = ", ".join(files) if files else f"the {split} files under {data_dir}"
    return CorruptDatasetError(
        f"The prepared dataset {name!r} ({split} split) is damaged: cannot read {where} ({reason}). Prepare it again: "
        f"python -m tmspr_jax.tools.prepare --dataset {name} --manual_dir <raw release folder> --data_dir {data_dir} "
        "--overwrite"
    )


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _normalise(rec: Mapping[str, Any]) -> dict[str, Any]:
    """tfds returns Text as bytes and scalars as NumPy values; callers get bytes, int, int, str."""
    image = rec["image"]
    return {
        "image": bytes(image) if not isinstance(image, bytes) else image,
        "pid": int(rec["pid"]),
        "camid": int(rec["camid"]),
        "file_name": _text(rec["file_name"]),
    }


def open_split(
    name: str, split: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None = None
) -> ReIDSplit:
    """Opens split ``split`` of dataset ``name`` (``'dataset[/config]'``) prepared under ``data_dir``.

    If the dataset is not prepared and ``manual_dir`` (the raw release folder) is given, it is built first; without
    ``manual_dir`` a missing dataset is an error that names the folder searched and the ``prepare`` command to run.
    """
    builder = get_builder(name, data_dir)
    if not builder.is_prepared():
        if manual_dir:
            builder = prepare_dataset(name, data_dir, manual_dir)
        else:
            raise FileNotFoundError(
                f"Dataset {name!r} is not prepared under data_dir {os.fspath(data_dir)} (looked for "
                f"{builder.data_dir}). Build it with:\n  python -m tmspr_jax.tools.prepare --dataset {name} "
                f"--manual_dir <raw release folder> --data_dir {os.fspath(data_dir)}\n"
                f"or pass manual_dir (config key data.manual_dir)."
            )
    available = list(builder.info.splits.keys())
    if split not in available:
        raise ValueError(f"Dataset {name!r} has no split {split!r}; its splits are {available}.")
    files = sorted(str(f) for f in _split_files(builder, split))
    try:
        source = builder.as_data_source(split=split)
    except Exception as e:
        raise corrupt_dataset_error(name, split, files, os.fspath(data_dir), f"{type(e).__name__}: {e}") from e
    return ReIDSplit(name, split, source, builder.info.metadata, files=files, data_dir=os.fspath(data_dir))


def _split_files(builder: tfds.core.DatasetBuilder, split: str) -> list[str]:
    try:
        return list(builder.info.splits[split].filepaths)
    except Exception:  # older tfds: the files by their naming pattern
        import glob

        return glob.glob(os.path.join(os.fspath(builder.data_dir), f"*-{split}.*"))


def decode_image(record: Mapping[str, Any]) -> np.ndarray:
    """The record's image as ``uint8 [H, W, 3]`` RGB (Pillow); a corrupt image raises naming the record's file."""
    try:
        with Image.open(io.BytesIO(record["image"])) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # Pillow raises several exception types for bad data
        raise CorruptImageError(f"Cannot decode image of record {_text(record.get('file_name', '?'))!r}: {e}") from e

"""Builds one re-ID dataset from its raw release folder into TFDS array_record files and prints its statistics.

    python -m tmspr_jax.tools.prepare --dataset occluded_duke --manual_dir /data/raw --data_dir ~/tensorflow_datasets

``--manual_dir`` is the release folder itself (e.g. ``.../Occluded_Duke``) or a folder containing it. Your own images:
``--dataset custom/<name>`` (``--dataset custom`` alone takes the name from the folder's), laid out as
:mod:`tmspr_jax.data.builders.custom` describes, with ``--camid`` where the files do not name their cameras. The table
``subset | # ids | # images | # cameras`` is counted from the written records. With ``--json`` the last line of stdout
is ``{"train": {"ids", "images", "cameras"} | null, "query": ..., "gallery": ...}``; a split the dataset does not have
(``train`` of the test-only ``partial_reid`` and ``occluded_reid/full``) is ``null``. The builders themselves are
:mod:`tmspr_jax.data.builders`.

After the table come notes on the training images: identities with fewer images than ``--num_instances`` (K of the
PK sampler, which draws K of their images with replacement) and images under 4 px on a side (kept; as occluders
a side under 4 px gets a 1-px crop, see :func:`tmspr_jax.data.views.covering_view`).
``--overwrite`` builds the new copy beside the old one and swaps them when it is complete.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys

import numpy as np
from PIL import Image

from tmspr_jax.config import default_data_dir
from tmspr_jax.data import builders, sources
from tmspr_jax.tools import cli

SPLITS = ("train", "query", "gallery")


def dataset_stats(name: str, data_dir: str) -> dict[str, dict[str, int] | None]:
    """``{split: {'ids', 'images', 'cameras'} or None}`` counted from the prepared records of ``name``."""
    available = set(sources.get_builder(name, data_dir).info.splits.keys())
    return {s: (sources.open_split(name, s, data_dir).stats() if s in available else None) for s in SPLITS}


def format_table(stats: dict[str, dict[str, int] | None]) -> str:
    """The reference's statistics table (``subset | # ids | # images | # cameras``); missing splits are left out."""
    lines = [
        "  ----------------------------------------",
        "  subset   | # ids | # images | # cameras",
        "  ----------------------------------------",
    ]
    for split, s in stats.items():
        if s is not None:
            lines.append(f"  {split:<8} | {s['ids']:5d} | {s['images']:8d} | {s['cameras']:9d}")
    lines.append("  ----------------------------------------")
    return "\n".join(lines)


MIN_SIDE = 4  # the covering view's occluder crop is randint[side // 4, side // 2]: empty under 4 px


def dataset_name(name: str, manual_dir: str) -> str:
    """``custom`` alone becomes ``custom/<manual_dir's folder name>`` (characters a name cannot hold become '_')."""
    if name != builders.custom.NAME:
        return name
    folder = os.path.basename(os.path.normpath(os.path.abspath(manual_dir)))
    return f"{name}/{re.sub(r'[^A-Za-z0-9_.-]', '_', folder).lstrip('._-') or 'data'}"


def _examples(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def training_notes(split: sources.ReIDSplit, num_instances: int) -> list[str]:
    """What the training split holds that the sampler or the views treat specially, one line each."""
    notes = []
    pids, counts = np.unique(split.pids, return_counts=True)
    few = pids[counts < num_instances]
    if few.size:
        raw = {v: int(k) for k, v in split.metadata.get("train_label_map", {}).items()}  # label -> raw pid
        named = {v: k for k, v in split.metadata.get("identity_map", {}).get("train", {}).items()}  # custom sets
        names = [str(named.get(raw.get(int(p), int(p)), raw.get(int(p), int(p)))) for p in few]
        notes.append(
            f"{few.size} of {pids.size} training identities have fewer than num_instances={num_instances} images "
            f"({_examples(names)}): the PK sampler draws {num_instances} of their images with replacement"
        )
    tiny = []
    for i in range(len(split)):
        rec = split[i]
        with Image.open(io.BytesIO(rec["image"])) as im:  # the header only
            w, h = im.size
        if min(w, h) < MIN_SIDE:
            tiny.append(f"{rec['file_name']} ({w}x{h})")
    if tiny:
        notes.append(
            f"{len(tiny)} training image(s) under {MIN_SIDE} px on a side ({_examples(tiny)}): kept; as occluders of "
            "the covering view a side under 4 px gets a 1-px crop, stretched to the pasted strip"
        )
    return notes


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    name, data_dir = dataset_name(f.dataset, f.manual_dir), f.data_dir
    if f.camid and not name.startswith(builders.custom.NAME + "/"):
        sys.exit(
            f"error: prepare: --camid applies to custom/<name> datasets only, not {name!r} (its files name the cameras)"
        )
    if f.num_instances < 1:
        sys.exit(
            f"error: prepare: --num_instances={f.num_instances}: expected a positive integer (K of the PK sampler)"
        )
    try:
        builder = sources.prepare_dataset(name, data_dir, f.manual_dir, overwrite=f.overwrite, camid=f.camid)
    except (builders.DatasetLayoutError, builders.CorruptImageError, ValueError) as e:
        # A user mistake (layout, image, name): the message names the path; no traceback.
        sys.exit(f"error: prepare --dataset {name}: {e}")
    stats = dataset_stats(name, data_dir)
    md = builder.info.metadata
    print(f"Dataset {name} prepared in {builder.data_dir} from {md.get('source_dir', f.manual_dir)}")
    print(format_table(stats))
    junk = {s: n for s, n in md.get("junk_dropped", {}).items() if n}
    if junk:
        print(f"Dropped junk images (pid -1, the release's convention): {junk}")
    notes = list(md.get("notes", []))
    if stats["train"] is not None:
        notes += training_notes(sources.open_split(name, "train", data_dir), f.num_instances)
    for note in notes:
        print(f"note: {note}")
    if name.startswith(builders.custom.NAME + "/"):
        print(f"Train on it: python -m tmspr_jax.main --config=configs/custom.py:{name.split('/', 1)[1]} --workdir=...")
    if f.json:
        print(json.dumps(stats), flush=True)


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "dataset",
        None,
        f"Dataset name, optionally with a config ('occluded_reid/half'): {builders.DATASET_NAMES}; 'custom' alone "
        "is named after the manual_dir folder.",
    )
    flags.DEFINE_string("manual_dir", None, "Raw release folder (or a folder containing it).")
    flags.DEFINE_string(
        "data_dir",
        default_data_dir(),
        "Where prepared TFDS datasets live (same default as configs: $TMSPR_DATA_DIR or ~/tensorflow_datasets).",
    )
    flags.DEFINE_bool("json", False, "Also print the statistics as one JSON object on the last line.")
    flags.DEFINE_bool(
        "overwrite", False, "Rebuild even if the dataset is already prepared (beside it; swapped in when complete)."
    )
    flags.DEFINE_string(
        "camid", "", "custom/<name> only: the camera of every image (2) or per split (query:0,gallery:1)."
    )
    flags.DEFINE_integer(
        "num_instances", 4, "K of the PK sampler (config.data.num_instances), for the note on small identities."
    )


if __name__ == "__main__":
    define_flags()
    cli.run(_main, required=["dataset", "manual_dir"])

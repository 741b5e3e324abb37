"""Builds one re-ID dataset from its raw release folder into TFDS array_record files and prints its statistics.

    python -m tmspr_jax.data.prepare --dataset occluded_duke --manual_dir /data/raw --data_dir ~/tensorflow_datasets

``--manual_dir`` is the release folder itself (e.g. ``.../Occluded_Duke``) or a folder containing it. The table
``subset | # ids | # images | # cameras`` is counted from the written records. With ``--json`` the last line of stdout
is ``{"train": {"ids", "images", "cameras"} | null, "query": ..., "gallery": ...}``; a split the dataset does not have
(``train`` of the test-only ``partial_reid`` and ``occluded_reid/full``) is ``null``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import app, flags

from tmspr_jax.data import builders, sources

_DATASET = flags.DEFINE_string(
    "dataset", None, f"Builder name, optionally with a config ('occluded_reid/half'): {sorted(builders.BUILDERS)}."
)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Raw release folder (or a folder containing it).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    os.environ.get("TMSPR_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")),
    "Where prepared TFDS datasets live (same default as configs: $TMSPR_DATA_DIR or ~/tensorflow_datasets).",
)
_JSON = flags.DEFINE_bool("json", False, "Also print the statistics as one JSON object on the last line.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset is already prepared.")

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


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    name, data_dir = _DATASET.value, _DATA_DIR.value
    try:
        builder = sources.prepare_dataset(name, data_dir, _MANUAL_DIR.value, overwrite=_OVERWRITE.value)
    except (builders.DatasetLayoutError, builders.CorruptImageError, ValueError) as e:
        # A user mistake (layout, image, name): the message names the path; no traceback.
        sys.exit(f"prepare --dataset {name}: {type(e).__name__}: {e}")
    stats = dataset_stats(name, data_dir)
    md = builder.info.metadata
    print(f"Dataset {name} prepared in {builder.data_dir} from {md.get('source_dir', _MANUAL_DIR.value)}")
    print(format_table(stats))
    junk = {s: n for s, n in md.get("junk_dropped", {}).items() if n}
    if junk:
        print(f"Dropped junk images (pid -1, the release's convention): {junk}")
    if _JSON.value:
        print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["dataset", "manual_dir"])
    app.run(main)

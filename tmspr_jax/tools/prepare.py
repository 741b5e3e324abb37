"""Builds one re-ID dataset from its raw release folder into TFDS array_record files and prints its statistics.

    python -m tmspr_jax.tools.prepare --dataset occluded_duke --manual_dir /data/raw --data_dir ~/tensorflow_datasets

``--manual_dir`` is the release folder itself (e.g. ``.../Occluded_Duke``) or a folder containing it. The table
``subset | # ids | # images | # cameras`` is counted from the written records. With ``--json`` the last line of stdout
is ``{"train": {"ids", "images", "cameras"} | null, "query": ..., "gallery": ...}``; a split the dataset does not have
(``train`` of the test-only ``partial_reid`` and ``occluded_reid/full``) is ``null``. The builders themselves are
:mod:`tmspr_jax.data.builders`.
"""

from __future__ import annotations

import json
import sys

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


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    name, data_dir = f.dataset, f.data_dir
    try:
        builder = sources.prepare_dataset(name, data_dir, f.manual_dir, overwrite=f.overwrite)
    except (builders.DatasetLayoutError, builders.CorruptImageError, ValueError) as e:
        # A user mistake (layout, image, name): the message names the path; no traceback.
        sys.exit(f"prepare --dataset {name}: {type(e).__name__}: {e}")
    stats = dataset_stats(name, data_dir)
    md = builder.info.metadata
    print(f"Dataset {name} prepared in {builder.data_dir} from {md.get('source_dir', f.manual_dir)}")
    print(format_table(stats))
    junk = {s: n for s, n in md.get("junk_dropped", {}).items() if n}
    if junk:
        print(f"Dropped junk images (pid -1, the release's convention): {junk}")
    if f.json:
        print(json.dumps(stats), flush=True)


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "dataset", None, f"Builder name, optionally with a config ('occluded_reid/half'): {sorted(builders.BUILDERS)}."
    )
    flags.DEFINE_string("manual_dir", None, "Raw release folder (or a folder containing it).")
    flags.DEFINE_string(
        "data_dir",
        default_data_dir(),
        "Where prepared TFDS datasets live (same default as configs: $TMSPR_DATA_DIR or ~/tensorflow_datasets).",
    )
    flags.DEFINE_bool("json", False, "Also print the statistics as one JSON object on the last line.")
    flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset is already prepared.")


if __name__ == "__main__":
    define_flags()
    cli.run(_main, required=["dataset", "manual_dir"])

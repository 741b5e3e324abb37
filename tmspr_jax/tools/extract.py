"""Test features of a trained or converted checkpoint, written to one ``.npz`` for analysis outside the framework.

    python -m tmspr_jax.tools.extract --config=configs/occ_duke.py --checkpoint=WORKDIR [--out=FILE.npz]
        [--config.eval.flip=True]

``--checkpoint`` is what ``--mode=eval`` takes as ``--config.init_checkpoint``: a training workdir (its best checkpoint
by mAP) or a converted weights folder. The features are the evaluation's (same batches, same ``eval.flip``), before
any normalisation. The file (default ``<checkpoint>/features.npz``) holds, for ``split`` in ``query`` and ``gallery``,
in the dataset's record order:

* ``<split>_features`` float32 ``[N, D]``;
* ``<split>_pids``, ``<split>_camids`` int64 ``[N]`` (0-based cameras);
* ``<split>_file_names`` str ``[N]``;

and ``dataset`` (the test builder, e.g. ``occluded_duke``), ``checkpoint`` and ``config`` (the config as JSON text).
``python -m tmspr_jax.tools.visualize`` draws ranked lists from it; ``load_features`` reads it back, checked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from tmspr_jax.tools import cli

SPLITS = ("query", "gallery")
_PER_SPLIT = ("features", "pids", "camids", "file_names")


def save_features(
    path: str,
    query: tuple[np.ndarray, np.ndarray, np.ndarray],
    gallery: tuple[np.ndarray, np.ndarray, np.ndarray],
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    *,
    dataset: str,
    checkpoint: str = "",
    config_json: str = "",
) -> str:
    """Writes ``(features, pids, camids)`` of query and gallery with their file names; returns the path written."""
    arrays: dict[str, Any] = {"dataset": np.str_(dataset), "checkpoint": np.str_(checkpoint),
                              "config": np.str_(config_json)}  # fmt: skip
    for split, (feats, pids, camids), names in (("query", query, query_names), ("gallery", gallery, gallery_names)):
        arrays[f"{split}_features"] = np.asarray(feats, np.float32)
        arrays[f"{split}_pids"] = np.asarray(pids, np.int64)
        arrays[f"{split}_camids"] = np.asarray(camids, np.int64)
        arrays[f"{split}_file_names"] = np.asarray([str(n) for n in names], dtype=np.str_)
    _check(arrays, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would append '.npz' to a name without it
        np.savez(f, **arrays)
    return path


def load_features(path: str) -> dict[str, Any]:
    """Reads a file written by :func:`save_features`; a missing key or mismatched lengths raise naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no features file at {path!r} (write one with python -m tmspr_jax.tools.extract)")
    with np.load(path, allow_pickle=False) as f:
        out = {k: f[k] for k in f.files}
    for key in ("dataset",) + tuple(f"{s}_{k}" for s in SPLITS for k in _PER_SPLIT):
        if key not in out:
            raise ValueError(f"{path}: not a features file from tmspr_jax.tools.extract (no {key!r}; has {sorted(out)})")
    for key in ("dataset", "checkpoint", "config"):
        if key in out:
            out[key] = str(out[key])
    _check(out, path)
    return out


def _check(arrays: dict[str, Any], path: str) -> None:
    dims = set()
    for split in SPLITS:
        feats = arrays[f"{split}_features"]
        if feats.ndim != 2:
            raise ValueError(f"{path}: {split}_features must be [N, D], got shape {feats.shape}")
        dims.add(feats.shape[1])
        for key in _PER_SPLIT[1:]:
            if arrays[f"{split}_{key}"].shape != (feats.shape[0],):
                raise ValueError(
                    f"{path}: {split}_{key} has shape {arrays[f'{split}_{key}'].shape}, expected ({feats.shape[0]},) "
                    f"like {split}_features"
                )
    if len(dims) != 1:
        raise ValueError(f"{path}: query and gallery features have different widths {sorted(dims)}")


class Extracted(NamedTuple):
    """Where :func:`extract_to_file` wrote, and what."""

    path: str
    num_query: int
    num_gallery: int
    feature_dim: int


def extract_to_file(config: ml_collections.ConfigDict, checkpoint: str, out: str = "") -> Extracted:
    """Extracts the test features of ``checkpoint`` on the config's test split and saves them (see module doc)."""
    import jax

    from tmspr_jax import train

    exp = train.setup_experiment(config)
    variables = train.load_checkpoint_variables(checkpoint, exp)
    query, gallery = train.extract_test_features(exp, variables, desc="extract")
    out = out or os.path.join(os.path.abspath(os.path.expanduser(checkpoint)), "features.npz")
    if jax.process_index() == 0:
        save_features(
            out, query, gallery, exp.query_split.file_names, exp.gallery_split.file_names,
            dataset=str(config.data.test), checkpoint=os.path.abspath(checkpoint), config_json=config.to_json(),
        )  # fmt: skip
    return Extracted(out, len(query[0]), len(gallery[0]), int(query[0].shape[1]))


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    config = cli.config_or_demo(f.config)
    from tmspr_jax.data import setup

    setup.prepare_for_config(config)
    done = extract_to_file(config, f.checkpoint, f.out)
    print(
        f"{done.num_query} query and {done.num_gallery} gallery features ({done.feature_dim}-d) of {config.data.test} "
        f"written to {done.path}"
    )



if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config of the checkpoint (default: the demo).")
    flags.DEFINE_string("checkpoint", None, "Training workdir or converted weights folder.")
    flags.DEFINE_string("out", "", "Output .npz (default: <checkpoint>/features.npz).")
    cli.run(_main, required=["checkpoint"])

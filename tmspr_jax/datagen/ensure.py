"""Makes sure what a config needs on disk exists before a run: datasets, parsing targets, the demo's data.

Paper settings expect the datasets to be prepared (``python -m tmspr_jax.tools.prepare``) and their parsing targets
computed (``python -m tmspr_jax.tools.parsing_targets``); with ``data.manual_dir`` / ``parsing.maps_dir`` (or
``parsing.parser``) set, missing pieces are built here on first use instead. The demo (``data.synthetic=True``)
also generates its synthetic dataset (:mod:`tmspr_jax.datagen.synthetic`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from tmspr_jax.data import parsing, sources
from tmspr_jax.datagen import synthetic
from tmspr_jax.utils import DamagedFileError, pair, patch_grid


def ensure_synthetic_dataset(out_dir: str, options: Mapping[str, Any] | None = None) -> bool:
    """Generates the synthetic occluded dataset into ``out_dir`` unless one made with the same options is there.

    ``options`` are :class:`~tmspr_jax.datagen.synthetic.SyntheticOptions` fields (``config.data.synthetic_options``).
    Returns True if it (re)generated.
    """
    options = dict(options or {})
    marker = os.path.join(out_dir, "COMPLETE")
    if os.path.exists(marker):
        with open(marker) as f:
            try:
                made_with = json.load(f)
            except json.JSONDecodeError:
                made_with = None
        if made_with == options:
            return False
        logging.info("Synthetic dataset in %s was made with other options (%s): regenerating", out_dir, made_with)
    t0 = time.perf_counter()
    logging.info("Generating the synthetic occluded dataset in %s", out_dir)
    tmp = out_dir.rstrip("/") + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    synthetic.generate(tmp, **options)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    with open(marker, "w") as f:
        json.dump(options, f)
    logging.info("Synthetic dataset ready in %.1fs", time.perf_counter() - t0)
    return True


def ensure_parsing_targets(config: ml_collections.ConfigDict, grid: tuple[int, int]) -> None:
    """Computes the training split's parsing targets from ``parsing.maps_dir``, or else with the parser in
    ``parsing.parser``, when they are not stored yet."""
    cfg = config.parsing
    path = cfg.path or parsing.default_path(config.data.data_dir, config.data.train, grid)
    parser_dir = "" if cfg.maps_dir else cfg.parser
    if not cfg.maps_dir and not parser_dir:
        return
    img_size, patch, stride = geometry = parsing.config_geometry(config)
    if os.path.exists(path):
        try:
            stored = parsing.stored_geometry(path)
        except DamagedFileError:
            if cfg.path:  # the user's own file: named, never replaced
                raise
            # The default file is a cache of maps_dir (or of the parser): a truncated one is made again.
            logging.warning("%s is truncated or damaged: making it again from %s.", path, cfg.maps_dir or parser_dir)
        else:
            if cfg.path or stored is None or stored == geometry:
                return  # up to date, or the user's own file: load_targets checks it
            # The default file is a cache of maps_dir: made for another image size with the same grid, it is remade.
            logging.warning(
                "%s was pooled for img_size %s, patch %s, stride %s: recomputing it for this config.", path, *stored
            )
    split = sources.open_split(
        config.data.train, "train", config.data.data_dir, manual_dir=config.data.manual_dir or None
    )
    t0 = time.perf_counter()
    if parser_dir:
        got = parsing.parse_targets(
            split,
            parser_dir,
            img_size,
            patch,
            stride,
            out=path,
            method=cfg.method,
            dtype=cfg.parser_dtype,
            batch_size=cfg.parser_batch_size,
            progress=True,
        )
        assert got is not None  # no max_images: the run finishes or raises
        parsing.save_targets(
            path,
            *got,
            img_size=img_size,
            patch=patch,
            stride=stride,
            method=cfg.method,
            source=os.path.abspath(parser_dir),
        )
        parsing.remove_partial(path)
        logging.info(
            "Parsing targets for %d images made by the parser %s -> %s in %.1fs",
            len(got[0]),
            parser_dir,
            path,
            time.perf_counter() - t0,
        )
        return
    names, targets, missing = parsing.compute_targets(
        list(split.file_names),
        cfg.maps_dir,
        img_size,
        patch,
        stride,
        method=cfg.method,
        allow_missing=cfg.missing == "zero_weight",
    )
    parsing.save_targets(
        path,
        names,
        targets,
        img_size=img_size,
        patch=patch,
        stride=stride,
        method=cfg.method,
        source=cfg.maps_dir,
    )
    logging.info(
        "Parsing targets for %d images (%d missing) -> %s in %.1fs",
        len(names),
        len(missing),
        path,
        time.perf_counter() - t0,
    )


def _remove_stale_builds(config: ml_collections.ConfigDict) -> None:
    """A regenerated synthetic dataset invalidates its TFDS build and parsing targets."""
    for path in (
        os.path.join(config.data.data_dir, config.data.train),
        os.path.join(config.data.data_dir, "parsing", config.data.train),
    ):
        if os.path.isdir(path):
            shutil.rmtree(path)


def prepare_for_config(config: ml_collections.ConfigDict) -> None:
    """Generates / builds what the config names and is missing (see the module docstring)."""
    # The geometry first: a mistake in it is reported before any dataset is generated or built.
    grid = patch_grid(
        pair(config.img_size, "config.img_size"),
        config.model.patch_size,
        pair(config.model.stride, "config.model.stride"),
    )  # one number: square
    d = config.data
    if d.synthetic:
        if not d.manual_dir:
            raise ValueError("data.synthetic=True needs data.manual_dir (where the synthetic dataset is generated).")
        if ensure_synthetic_dataset(d.manual_dir, d.synthetic_options.to_dict()):
            _remove_stale_builds(config)
    manual = d.manual_dir or None
    for name, split in ((d.train, "train"), (d.test, "query"), (d.test, "gallery")):
        sources.open_split(name, split, d.data_dir, manual_dir=manual)  # builds on first use, or explains what to run
    if config.model.perception:  # without the part head nothing reads parsing targets
        ensure_parsing_targets(config, grid)

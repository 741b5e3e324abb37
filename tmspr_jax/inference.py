"""Test features of query and gallery through the model, and the re-ID metrics on them.

The evaluation batches keep the reference's order (query, then gallery) and batch size, with a smaller last batch:
with ``part_norm='batch'`` a feature depends on the rest of its batch (docs/reference.md §13.3). When the last batch
does not split over the devices it is padded, and the padding rows are masked out of the batch statistics (``valid``),
so the features equal those of the unpadded batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from tmspr_jax import evaluate, sharding


def make_extract_fn(model, flip: bool = False) -> Callable:
    """A jitted ``(variables, images, camids, valid) -> features`` (the eval feature of the model).

    ``flip=True`` returns the mean of the features of the images and of their mirror images (fast-reid's TEST.FLIP;
    the reference does not do it): a feature that does not change when the person is seen mirrored.
    """

    def extract(variables, images, camids, valid):
        out = model.apply(variables, images, camids, valid=valid, method=model.extract)
        if flip:
            mirrored = model.apply(variables, images[:, :, ::-1], camids, valid=valid, method=model.extract)
            out = (out + mirrored) / 2
        return out

    return jax.jit(extract)


def extract_features(
    extract_fn: Callable,
    variables: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    mesh: jax.sharding.Mesh,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs the model over evaluation batches; returns (features, pids, camids) of the valid rows, in order.

    ``batches`` are this process's parts of global batches that split evenly over the mesh (padding rows have
    ``valid=False``; see ``pipeline.eval_batches(pad_to=...)``).
    """
    feats, pids, camids = [], [], []
    for local in batches:
        arrays = sharding.shard_batch(
            {"images": local["images"], "camids": local["camids"].astype(np.int32), "valid": local["valid"]}, mesh
        )
        out = extract_fn(variables, arrays["images"], arrays["camids"], arrays["valid"])
        valid = sharding.gather_host(local["valid"])
        feats.append(sharding.to_host(out)[valid])
        pids.append(sharding.gather_host(local["pids"].astype(np.int64))[valid])
        camids.append(sharding.gather_host(local["camids"].astype(np.int64))[valid])
        if progress is not None:
            progress(int(valid.sum()))
    if not feats:
        raise ValueError("The evaluation split is empty: no batches to extract features from.")
    return np.concatenate(feats), np.concatenate(pids), np.concatenate(camids)


def evaluate_features(
    query: tuple[np.ndarray, np.ndarray, np.ndarray],
    gallery: tuple[np.ndarray, np.ndarray, np.ndarray],
    eval_cfg: ml_collections.ConfigDict,
) -> dict:
    """Metrics of query features against gallery features (fractions in [0, 1])."""
    feats = np.concatenate([query[0], gallery[0]])
    pids = np.concatenate([query[1], gallery[1]])
    camids = np.concatenate([query[2], gallery[2]])
    t0 = time.perf_counter()
    results = evaluate.compute_metrics(feats, pids, camids, len(query[0]), eval_cfg)
    logging.info(
        "Metrics on %d queries x %d gallery in %.1fs", len(query[0]), len(gallery[0]), time.perf_counter() - t0
    )
    return results

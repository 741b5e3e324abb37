"""Ranked lists: each query beside its top-k gallery images, framed green for the query's identity and red for another
(torchreid's ``visualize_ranked_results``), from the features that ``tmspr_jax.tools.extract`` wrote.

    python -m tmspr_jax.tools.visualize --features=W/features.npz --out=W/ranks [--config=configs/X.py]
        [--topk 10] [--num_queries 40] [--order hardest]

Distances and exclusions are the evaluation's: ``evaluate.distance_matrix`` with the config's ``eval`` settings
(normalisation, re-ranking), and gallery images of the query's identity seen by the query's camera are left out, as
``eval_reid`` leaves them out. ``--order hardest`` shows the queries whose first correct match ranks lowest first (the
errors to look at); ``--order index`` keeps the dataset's order. One PNG per query, ``NNN_<query file>.png``, with the
rank of the first correct match in the file's ``ranks.json``. The images are read from the config's prepared test
split (its ``data.data_dir``), matched to the features by file name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from tmspr_jax import evaluate
from tmspr_jax.tools import cli

MATCH, MISMATCH, QUERY = (40, 170, 60), (210, 40, 40), (90, 90, 90)


def ranked_lists(
    dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray, topk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``topk`` gallery indices of every query under the evaluation protocol.

    Returns ``order`` int64 ``[Nq, topk]`` (-1 where fewer gallery images remain), ``matches`` bool ``[Nq, topk]`` and
    ``first_match`` int64 ``[Nq]``: the 1-based rank of the first correct gallery image (0 if the query has none).
    Ties keep gallery order (a stable sort, as ``eval_reid``).
    """
    dist = np.asarray(dist)
    nq, ng = dist.shape
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    order = np.argsort(dist, axis=1, kind="stable")
    same = (g_pids[order] == q_pids[:, None]) & (g_camids[order] == q_camids[:, None])  # excluded, as eval_reid
    # A stable sort on the exclusion flag moves excluded entries to the end and keeps the ranking of the rest.
    kept = np.take_along_axis(order, np.argsort(same, axis=1, kind="stable"), axis=1)
    valid = np.arange(ng)[None, :] < (~same).sum(axis=1, keepdims=True)
    hit = (g_pids[kept] == q_pids[:, None]) & valid
    k = min(topk, ng)
    out = np.full((nq, topk), -1, np.int64)
    out[:, :k] = np.where(valid[:, :k], kept[:, :k], -1)
    matches = np.zeros((nq, topk), bool)
    matches[:, :k] = hit[:, :k]
    first = np.where(hit.any(axis=1), np.argmax(hit, axis=1) + 1, 0).astype(np.int64)
    return out, matches, first


def _fit(image: np.ndarray, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.asarray(image, np.uint8)).resize((size[1], size[0]), Image.Resampling.BILINEAR)


def render_ranked_list(
    query: np.ndarray,
    gallery: Sequence[np.ndarray],
    matches: Sequence[bool],
    *,
    size: tuple[int, int] = (128, 64),
    border: int = 4,
    gap: int = 6,
    labels: Sequence[str] | None = None,
    colours: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """One row: the query (grey frame), a gap, then the gallery images in rank order framed by ``matches``.

    Every image is resized to ``size = (H, W)`` and framed by ``border`` pixels; ``labels`` (one per image, query
    first) are written under the images; ``colours`` (one per gallery image) replace the match colours.
    """
    if len(gallery) != len(matches):
        raise ValueError(f"render_ranked_list: {len(gallery)} gallery images but {len(matches)} match flags")
    if colours is not None and len(colours) != len(gallery):
        raise ValueError(f"render_ranked_list: {len(gallery)} gallery images but {len(colours)} colours")
    h, w = int(size[0]), int(size[1])
    cell_w, cell_h = w + 2 * border, h + 2 * border
    text_h = 12 if labels is not None else 0
    n = len(gallery)
    canvas = Image.new("RGB", (cell_w * (n + 1) + 2 * gap, cell_h + text_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    images = [query, *gallery]
    colours = [QUERY, *(colours if colours is not None else [MATCH if m else MISMATCH for m in matches])]
    for j, (img, colour) in enumerate(zip(images, colours)):
        x = j * cell_w + (0 if j == 0 else 2 * gap)
        draw.rectangle([x, 0, x + cell_w - 1, cell_h - 1], fill=colour)
        canvas.paste(_fit(img, (h, w)), (x + border, border))
        if labels is not None:
            draw.text((x + 1, cell_h), str(labels[j])[: max(1, cell_w // 6)], fill=(0, 0, 0))
    return canvas


def query_order(first_match: np.ndarray, how: str) -> np.ndarray:
    """Query indices to show: ``'index'`` (dataset order) or ``'hardest'`` (latest first correct match first,
    queries with no correct match in the gallery last)."""
    if how == "index":
        return np.arange(first_match.size)
    if how == "hardest":
        key = np.where(first_match > 0, first_match, -1)
        return np.argsort(-key, kind="stable")
    raise ValueError(f"order must be 'index' or 'hardest', got {how!r}")


def visualize(
    features: dict[str, Any],
    query_images: Any,
    gallery_images: Any,
    eval_cfg: Any,
    out_dir: str,
    *,
    topk: int = 10,
    num_queries: int = 40,
    order: str = "hardest",
    size: tuple[int, int] = (128, 64),
) -> list[str]:
    """Writes ranked-list PNGs for ``num_queries`` queries (0 = all) and ``ranks.json``; returns the PNG paths.

    ``features`` is :func:`tmspr_jax.tools.extract.load_features`'s dict; ``query_images(i)`` and
    ``gallery_images(j)`` return the uint8 ``[H, W, 3]`` image of record ``i`` of each split.
    """
    dist = evaluate.distance_matrix(features["query_features"], features["gallery_features"], eval_cfg)
    qp, gp = features["query_pids"], features["gallery_pids"]
    top, matches, first = ranked_lists(dist, qp, gp, features["query_camids"], features["gallery_camids"], topk)
    shown = query_order(first, order)
    if num_queries:
        shown = shown[:num_queries]
    os.makedirs(out_dir, exist_ok=True)
    q_names, g_names = features["query_file_names"], features["gallery_file_names"]
    paths, summary = [], []
    for n, i in enumerate(shown):
        kept = top[i][top[i] >= 0]
        labels = [f"q {qp[i]}"] + [f"{r + 1}: {gp[j]}" for r, j in enumerate(kept)]
        row = render_ranked_list(query_images(int(i)), [gallery_images(int(j)) for j in kept],
                                 matches[i][: kept.size], size=size, labels=labels)  # fmt: skip
        stem = os.path.splitext(os.path.basename(str(q_names[i])))[0]
        path = os.path.join(out_dir, f"{n:03d}_{stem}.png")
        row.save(path)
        paths.append(path)
        summary.append({"query": str(q_names[i]), "pid": int(qp[i]), "first_match_rank": int(first[i]),
                        "top": [str(g_names[j]) for j in kept]})  # fmt: skip
    with open(os.path.join(out_dir, "ranks.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return paths


def _split_reader(config: ml_collections.ConfigDict, split: str, file_names: np.ndarray):
    """``i -> image`` of the features file's record ``i``, found in the prepared split by file name."""
    from tmspr_jax.data import sources

    d = config.data
    source = sources.open_split(d.test, split, d.data_dir, manual_dir=d.manual_dir or None)
    where = {str(n): k for k, n in enumerate(source.file_names)}
    missing = [str(n) for n in file_names if str(n) not in where]
    if missing:
        raise ValueError(
            f"{len(missing)} {split} file(s) of the features file are not in {d.test}/{split} under {d.data_dir} "
            f"(first: {missing[0]!r}); pass the --config the features were extracted with"
        )
    index = [where[str(n)] for n in file_names]
    return lambda i: sources.decode_image(source[index[i]])


def _main() -> None:
    from absl import app, flags

    from tmspr_jax.tools import extract

    f = flags.FLAGS
    feats = extract.load_features(f.features)
    config = cli.config_or_demo(f.config)
    if feats["dataset"] != str(config.data.test):
        raise app.UsageError(f"{f.features} holds features of {feats['dataset']!r} but the config tests on "
                             f"{config.data.test!r}; pass the config they were extracted with")  # fmt: skip
    paths = visualize(
        feats,
        _split_reader(config, "query", feats["query_file_names"]),
        _split_reader(config, "gallery", feats["gallery_file_names"]),
        config.eval,
        f.out,
        topk=f.topk,
        num_queries=f.num_queries,
        order=f.order,
        size=tuple(int(s) for s in config.img_size),
    )
    print(f"{len(paths)} ranked lists written to {f.out} (ranks.json lists each query's first correct rank)")



if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config of the features' dataset (default: the demo).")
    flags.DEFINE_string("features", None, "features.npz from python -m tmspr_jax.tools.extract")
    flags.DEFINE_string("out", None, "Folder for the PNGs and ranks.json")
    flags.DEFINE_integer("topk", 10, "gallery images per query")
    flags.DEFINE_integer("num_queries", 40, "queries to draw (0 = all)")
    flags.DEFINE_enum("order", "hardest", ["hardest", "index"], "which queries first")
    cli.run(_main, required=["features", "out"])

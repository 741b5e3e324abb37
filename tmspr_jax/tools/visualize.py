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

Two models on the same queries (the features of both, extracted from the same split)::

    python -m tmspr_jax.tools.visualize --features=A/features.npz --compare=B/features.npz --out=DIR
        [--name=T-MSPR --compare_name=TransReID] [--order differ|hardest|index]

writes ``compare_NNN_<query>.png``: the first model's rank-k list above the second's, each titled with its name, the
query's AP and first correct rank; by default the queries where the two differ most (absolute AP difference, then
fewest shared top-k images) come first; ``compare.json`` holds the numbers.

Part maps (what the perception module sees, and what the recovery module counts as visible)::

    python -m tmspr_jax.tools.visualize --part_maps --checkpoint=DIR --images=DIR_OR_LIST --out=part_maps.png
        [--num_queries=8]

draws, for each image, the six part-attention maps (background, head, upper body, accessory, legs, feet; the softmax
the part pooling uses, ``TMSPR.part_maps``) over the image: the background's framed grey, each body part's framed green
when the recovery module counts it visible (the argmax of some patch) and red when it borrows the part instead.
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
from tmspr_jax.utils import check_output_path

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
        row = render_ranked_list(
            query_images(int(i)),
            [gallery_images(int(j)) for j in kept],
            matches[i][: kept.size],
            size=size,
            labels=labels,
        )
        stem = os.path.splitext(os.path.basename(str(q_names[i])))[0]
        path = os.path.join(out_dir, f"{n:03d}_{stem}.png")
        row.save(path)
        paths.append(path)
        summary.append(
            {
                "query": str(q_names[i]),
                "pid": int(qp[i]),
                "first_match_rank": int(first[i]),
                "top": [str(g_names[j]) for j in kept],
            }
        )
    with open(os.path.join(out_dir, "ranks.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return paths


# ------------------------------------------------------------------------------------------ two models compared


def align_features(features: dict[str, Any], other: dict[str, Any], what: str = "--compare") -> dict[str, Any]:
    """``other`` with its rows in ``features``' order, matched by file name; both must hold the same dataset's same
    query and gallery files (a ``ValueError`` names the first difference)."""
    if str(other["dataset"]) != str(features["dataset"]):
        raise ValueError(f"{what} holds features of {other['dataset']!r} but --features of {features['dataset']!r}")
    out = dict(other)
    for split in ("query", "gallery"):
        mine = [str(n) for n in features[f"{split}_file_names"]]
        theirs = {str(n): i for i, n in enumerate(other[f"{split}_file_names"])}
        missing = [n for n in mine if n not in theirs]
        if missing or len(theirs) != len(mine):
            first = missing[0] if missing else "-"
            raise ValueError(
                f"{what}: its {split} files differ from --features' ({len(theirs)} against {len(mine)}; "
                f"first missing: {first}); extract both on the same split"
            )
        order = np.asarray([theirs[n] for n in mine], np.int64)
        for key in ("features", "pids", "camids", "file_names"):
            out[f"{split}_{key}"] = np.asarray(other[f"{split}_{key}"])[order]
    return out


def per_query_ap(features: dict[str, Any], eval_cfg: Any) -> np.ndarray:
    """The average precision of every query under the evaluation protocol (NaN where the query has no match)."""
    dist = evaluate.distance_matrix(features["query_features"], features["gallery_features"], eval_cfg)
    res = evaluate.eval_reid(
        dist,
        features["query_pids"],
        features["gallery_pids"],
        features["query_camids"],
        features["gallery_camids"],
        max_rank=1,
        per_query=True,
    )
    ap = np.full(dist.shape[0], np.nan)
    ap[res["per_query"]["index"]] = res["per_query"]["ap"]
    return ap


def difference_order(ap_a: np.ndarray, ap_b: np.ndarray, top_a: np.ndarray, top_b: np.ndarray) -> np.ndarray:
    """Queries by how much the two models differ: the absolute AP difference, largest first, then the fewest gallery
    images shared by the two top-k lists; queries without a match last."""
    diff = np.where(np.isnan(ap_a) | np.isnan(ap_b), -1.0, np.abs(ap_a - ap_b))
    shared = np.asarray([len(set(a[a >= 0]) & set(b[b >= 0])) for a, b in zip(top_a, top_b)])
    return np.lexsort((shared, -diff))


def render_comparison(
    rows: Sequence[Image.Image], titles: Sequence[str], *, band: int = 14, gap: int = 8
) -> Image.Image:
    """Ranked-list rows one above the other, each under its title."""
    if len(rows) != len(titles):
        raise ValueError(f"render_comparison: {len(rows)} rows but {len(titles)} titles")
    width = max(r.width for r in rows)
    height = sum(band + r.height for r in rows) + gap * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for row, title in zip(rows, titles):
        draw.text((2, y + 1), str(title), fill=(0, 0, 0))
        canvas.paste(row, (0, y + band))
        y += band + row.height + gap
    return canvas


def compare(
    features: dict[str, Any],
    other: dict[str, Any],
    query_images: Any,
    gallery_images: Any,
    eval_cfg: Any,
    out_dir: str,
    *,
    names: tuple[str, str] = ("model A", "model B"),
    topk: int = 10,
    num_queries: int = 10,
    order: str = "differ",
    size: tuple[int, int] = (128, 64),
) -> list[str]:
    """Writes ``compare_NNN_<query>.png`` (the two models' top-k lists of one query, ``features``' above ``other``'s)
    for ``num_queries`` queries (0 = all) and ``compare.json``; returns the PNG paths.

    ``order``: ``'differ'`` (largest per-query AP difference first), ``'hardest'`` (the first model's latest first
    correct match first) or ``'index'``."""
    other = align_features(features, other)
    lists, aps = [], []
    for f in (features, other):
        dist = evaluate.distance_matrix(f["query_features"], f["gallery_features"], eval_cfg)
        lists.append(
            ranked_lists(dist, f["query_pids"], f["gallery_pids"], f["query_camids"], f["gallery_camids"], topk)
        )
        aps.append(per_query_ap(f, eval_cfg))
    if order == "differ":
        shown = difference_order(aps[0], aps[1], lists[0][0], lists[1][0])
    else:
        shown = query_order(lists[0][2], order)
    if num_queries:
        shown = shown[:num_queries]
    os.makedirs(out_dir, exist_ok=True)
    qp, gp = features["query_pids"], features["gallery_pids"]
    q_names, g_names = features["query_file_names"], features["gallery_file_names"]
    paths, summary = [], []
    for n, i in enumerate(shown):
        rows, titles, entry = [], [], {"query": str(q_names[i]), "pid": int(qp[i])}
        for name, (top, matches, first), ap in zip(names, lists, aps):
            kept = top[i][top[i] >= 0]
            labels = [f"q {qp[i]}"] + [f"{r + 1}: {gp[j]}" for r, j in enumerate(kept)]
            rows.append(
                render_ranked_list(
                    query_images(int(i)),
                    [gallery_images(int(j)) for j in kept],
                    matches[i][: kept.size],
                    size=size,
                    labels=labels,
                )
            )
            ap_text = "no match in the gallery" if np.isnan(ap[i]) else f"AP {ap[i]:.2f}, first match at {first[i]}"
            titles.append(f"{name}: {ap_text}")
            entry[name] = {
                "ap": None if np.isnan(ap[i]) else float(ap[i]),
                "first_match_rank": int(first[i]),
                "top": [str(g_names[j]) for j in kept],
            }
        stem = os.path.splitext(os.path.basename(str(q_names[i])))[0]
        path = os.path.join(out_dir, f"compare_{n:03d}_{stem}.png")
        render_comparison(rows, titles).save(path)
        paths.append(path)
        summary.append(entry)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return paths


# ------------------------------------------------------------------------------------------------- part maps

PART_NAMES = ("background", "head", "upper body", "accessory", "legs", "feet")
VISIBLE, INVISIBLE, BACKGROUND = MATCH, MISMATCH, QUERY
# A dark-blue -> cyan -> yellow -> red ramp (attention 0 -> 1), blended over the image.
_RAMP = np.array([[0, 0, 120], [0, 160, 255], [255, 240, 0], [230, 20, 0]], np.float32)


def heat_overlay(image: np.ndarray, attention: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``image`` uint8 ``[H, W, 3]`` with ``attention`` (``[gh, gw]`` in [0, 1]) upsampled bilinearly over it."""
    h, w = image.shape[:2]
    att = np.asarray(Image.fromarray(np.asarray(attention, np.float32), mode="F").resize((w, h), Image.BILINEAR))
    x = np.clip(att, 0, 1) * (len(_RAMP) - 1)
    lo = np.minimum(np.floor(x).astype(int), len(_RAMP) - 2)
    t = (x - lo)[..., None]
    heat = _RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def render_part_maps(
    images: Sequence[np.ndarray],
    attention: np.ndarray,
    visible: np.ndarray,
    *,
    size: tuple[int, int] = (128, 64),
    border: int = 3,
    gap: int = 4,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """One row per image: the image (grey frame), then the six part-attention maps over it, the background's framed
    grey and each body part's green when the recovery module counts it visible, red when not.

    ``attention`` ``[B, gh, gw, 6]``, ``visible`` ``[B, 5]`` (parts 1..5); ``labels`` name the rows."""
    attention, visible = np.asarray(attention), np.asarray(visible)
    if attention.shape[0] != len(images) or visible.shape != (len(images), len(PART_NAMES) - 1):
        raise ValueError(
            f"render_part_maps: {len(images)} images, attention {attention.shape}, visibility "
            f"{visible.shape} (expected [B, gh, gw, 6] and [B, 5])"
        )
    h, w = int(size[0]), int(size[1])
    cell_w, cell_h, text_h = w + 2 * border, h + 2 * border, 12
    width = cell_w * 7 + gap * 2
    canvas = Image.new("RGB", (width, (cell_h + text_h) * len(images) + text_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    header = [n[: max(1, cell_w // 6)] for n in ("image", *PART_NAMES)]
    for j, name in enumerate(header):
        draw.text((j * cell_w + (0 if j == 0 else 2 * gap) + 1, 0), name, fill=(0, 0, 0))
    for b, img in enumerate(images):
        small = np.asarray(_fit(img, (h, w)))
        y = text_h + b * (cell_h + text_h)
        tiles = [small] + [heat_overlay(small, attention[b, ..., k]) for k in range(len(PART_NAMES))]
        colours = [QUERY, BACKGROUND] + [VISIBLE if visible[b, k] > 0.5 else INVISIBLE for k in range(5)]
        for j, (tile, colour) in enumerate(zip(tiles, colours)):
            x = j * cell_w + (0 if j == 0 else 2 * gap)
            draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=colour)
            canvas.paste(Image.fromarray(tile), (x + border, y + border))
        if labels is not None:
            draw.text((1, y + cell_h), str(labels[b])[: max(1, width // 6)], fill=(0, 0, 0))
    return canvas


def part_maps(model: Any, variables: Any, images: np.ndarray, camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(attention [B,gh,gw,6], visibility [B,5])`` of normalised test images (``TMSPR.part_maps``; with
    ``model.part_norm='batch'`` the attention is normalised over these images together, as in a test batch)."""
    import jax

    fn = jax.jit(lambda v, x, c: model.apply(v, x, c, method=type(model).part_maps))
    att, vis = fn(variables, np.asarray(images, np.float32), np.asarray(camids, np.int32))
    return np.asarray(att), np.asarray(vis)


def part_maps_to_file(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    images: str,
    out: str,
    *,
    num_images: int = 8,
    camid: int = 0,
    parse_names: bool = True,
) -> tuple[str, np.ndarray]:
    """Draws the part maps of the first ``num_images`` (0 = all) of ``images`` (a folder, image or list file) into
    ``out`` (a PNG/JPEG file); returns the path and the visibility flags ``[B, 5]``."""
    from tmspr_jax.data import views
    from tmspr_jax.tools import extract

    _, paths = extract.list_images(images)
    if num_images:
        paths = paths[:num_images]
    model, variables = extract.load_model(config, checkpoint)
    raw = [extract.read_image(p) for p in paths]
    size = tuple(int(s) for s in config.img_size)
    x = np.stack([views.eval_view(r, size, config.data.mean, config.data.std) for r in raw])
    _, camids = extract.image_labels(paths, camid=camid, parse_names=parse_names)
    att, vis = part_maps(model, variables, x, camids)
    picture = render_part_maps(raw, att, vis, size=size, labels=[os.path.basename(p) for p in paths])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    picture.save(out)
    return out, vis


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


def _default_name(path: str) -> str:
    """A features file's model name for titles: its folder's name for ``<workdir>/features.npz``, else its stem."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "features" else stem


def _main() -> None:
    from absl import app, flags

    from tmspr_jax.tools import extract

    f = flags.FLAGS
    config = cli.config_or_demo(f.config)
    if f.part_maps:
        if not f.checkpoint or not f.images:
            raise ValueError("--part_maps needs --checkpoint and --images (a folder, image or list file)")
        out = f.out if f.out.lower().endswith((".png", ".jpg", ".jpeg")) else os.path.join(f.out, "part_maps.png")
        check_output_path(out, "file")
        path, vis = part_maps_to_file(config, f.checkpoint, f.images, out, num_images=f.num_queries, camid=f.camid)
        print(
            f"part maps of {vis.shape[0]} images written to {path} ({int(vis.sum())} of {vis.size} body parts visible)"
        )
        return
    if not f.features:
        raise ValueError("--features is required (features.npz from python -m tmspr_jax.tools.extract)")
    check_output_path(f.out, "folder")
    feats = extract.load_features(f.features)
    if feats["dataset"] != str(config.data.test):
        raise app.UsageError(
            f"{f.features} holds features of {feats['dataset']!r} but the config tests on "
            f"{config.data.test!r}; pass the config they were extracted with"
        )
    query_images = _split_reader(config, "query", feats["query_file_names"])
    gallery_images = _split_reader(config, "gallery", feats["gallery_file_names"])
    if f.compare:
        names = (f.name or _default_name(f.features), f.compare_name or _default_name(f.compare))
        paths = compare(
            feats,
            extract.load_features(f.compare),
            query_images,
            gallery_images,
            config.eval,
            f.out,
            names=names,
            topk=f.topk,
            num_queries=f.num_queries,
            order="differ" if f.order == "auto" else f.order,
            size=tuple(int(s) for s in config.img_size),
        )
        print(f"{len(paths)} comparisons ({names[0]} above {names[1]}) written to {f.out} (compare.json: per-query AP)")
        return
    paths = visualize(
        feats,
        query_images,
        gallery_images,
        config.eval,
        f.out,
        topk=f.topk,
        num_queries=f.num_queries,
        order="hardest" if f.order == "auto" else f.order,
        size=tuple(int(s) for s in config.img_size),
    )
    print(f"{len(paths)} ranked lists written to {f.out} (ranks.json lists each query's first correct rank)")


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config of the features' dataset (default: the demo).")
    flags.DEFINE_string("features", "", "features.npz from python -m tmspr_jax.tools.extract")
    flags.DEFINE_string("out", None, "Folder for the PNGs and ranks.json (--part_maps: a folder or a .png/.jpg file)")
    flags.DEFINE_integer("topk", 10, "gallery images per query")
    flags.DEFINE_integer("num_queries", 40, "queries (--part_maps: images) to draw (0 = all)")
    flags.DEFINE_enum(
        "order",
        "auto",
        ["auto", "hardest", "index", "differ"],
        "which queries first (auto: hardest; with --compare: differ, the largest AP difference)",
    )
    flags.DEFINE_string("compare", "", "A second model's features.npz of the same split: both rank-k lists per query")
    flags.DEFINE_string("name", "", "Title of --features' model (default: its folder or file name)")
    flags.DEFINE_string("compare_name", "", "Title of --compare's model (default: its folder or file name)")
    flags.DEFINE_bool("part_maps", False, "Draw the part-attention maps and visibility flags of --images instead")
    flags.DEFINE_string("checkpoint", "", "With --part_maps: converted weights folder or training workdir")
    flags.DEFINE_string("images", "", "With --part_maps: a folder, image file or list file of images")
    flags.DEFINE_integer("camid", 0, "With --part_maps: camera of images without Market/Duke release names")
    cli.run(_main, required=["out"])

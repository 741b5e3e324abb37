"""Search a folder of images for the people in query images: the ranked gallery of each query, as a picture and JSON.

    python -m tmspr_jax.tools.search --checkpoint=DIR --gallery=DIR_OR_LIST --query=IMG_DIR_OR_LIST --out=DIR
        [--topk=10] [--config=configs/X.py] [--camid=0] [--interactive]

The features are ``tools.extract --images``'s (the evaluation's transform and feature); distances are the
evaluation's: rows L2-normalised when ``eval.feat_norm``, squared Euclidean (re-ranking is not applied: it needs the
whole query set). A query file that is also in the gallery is left out of its own list.

Per query, ``<out>/NNN_<query stem>.png``: the query (grey frame) then its top-k gallery images labelled with rank and
distance, framed green/red when both names are Market/Duke release names (same/other identity), else blue; and
``<out>/results.json``: ``[{"query", "strip", "results": [{"file", "distance"}, ...]}, ...]`` (gallery files relative
to the gallery folder). The strips a ``results.json`` lists are the search's own: a search into a used ``--out`` first
removes the previous search's (those its ``results.json`` lists) and touches no other file, so the folder never shows
an earlier search's pictures beside the new results. ``results.json`` is written before the strips, so a search
stopped midway still lists what it wrote. ``--out`` must be a folder outside the gallery and query folders (checked
before any work).

The gallery's features are cached beside it (``<gallery>/.tmspr_features/<model key>.npz``, or ``--cache``) and reused
while the checkpoint's files, the feature settings of the config and the gallery's files (names, sizes, modification
times) are unchanged; any change recomputes them. The gallery stays on the device as one ``[N, D]`` matrix: a query
costs one matrix product and ``jax.lax.top_k`` (``--benchmark=N`` times this on a random ``N x 7680`` gallery).
``--interactive`` reads further query paths from standard input, one per line, and prints each top-k list.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tmspr_jax.tools import cli, extract, visualize
from tmspr_jax.utils import check_output_path, error_message, l2_normalise, read_npz

CACHE_DIR = ".tmspr_features"
NEUTRAL = (60, 110, 200)  # the frame of a result whose identity is unknown


# ------------------------------------------------------------------------------------------------ cache keys


def _stat(path: str) -> list[Any]:
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def checkpoint_identity(checkpoint: str) -> list[Any]:
    """What identifies a checkpoint's weights on disk: its absolute path and every file's relative path, size and
    modification time (a workdir: only its ``checkpoints/`` folder, whose files change when a new one is saved)."""
    path = os.path.abspath(os.path.expanduser(checkpoint))
    from tmspr_jax import weights

    top = (
        path
        if weights.is_weights_folder(path) or os.path.basename(path) == "checkpoints"
        else (os.path.join(path, "checkpoints"))
    )
    files = []
    for folder, dirs, names in os.walk(top):
        dirs.sort()
        for n in sorted(names):
            full = os.path.join(folder, n)
            files.append([os.path.relpath(full, top), *_stat(full)])
    if not files:
        raise FileNotFoundError(f"--checkpoint {path!r}: no files under {top!r}")
    return [path, files]


def model_key(config: ml_collections.ConfigDict, checkpoint: str, **settings: Any) -> str:
    """Hash of the checkpoint's identity and everything in the config and ``settings`` that changes a feature."""
    what = {
        "checkpoint": checkpoint_identity(checkpoint),
        "model": json.loads(config.model.to_json()),
        "img_size": [int(s) for s in config.img_size],
        "mean": [float(v) for v in config.data.mean],
        "std": [float(v) for v in config.data.std],
        "flip": bool(config.eval.flip),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def files_key(paths: Sequence[str]) -> str:
    """Hash of the files' paths, sizes and modification times."""
    h = hashlib.sha256()
    for p in paths:
        h.update(json.dumps([p, *_stat(p)]).encode())
    return h.hexdigest()


def default_cache_path(gallery: str, key: str) -> str:
    """``<folder>/.tmspr_features/<key[:16]>.npz`` beside a gallery folder (for a list file: beside the list)."""
    path = os.path.abspath(os.path.expanduser(gallery))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    return os.path.join(folder, CACHE_DIR, f"{key[:16]}.npz")


# -------------------------------------------------------------------------------------------------- gallery


class Gallery(NamedTuple):
    """Gallery features and the files they came from (``paths`` absolute, ``file_names`` relative to ``root``)."""

    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]
    root: str
    reused: bool


def _read_cache(path: str, mkey: str, fkey: str) -> dict[str, np.ndarray] | None:
    if not os.path.isfile(path):
        return None
    try:
        data = read_npz(path, what="gallery features cache")
    except (OSError, ValueError) as e:  # truncated or unreadable: recomputed and written again
        print(f"warning: {error_message(e)}; recomputing the gallery features", file=sys.stderr)
        return None
    if str(data.get("model_key", "")) != mkey or str(data.get("files_key", "")) != fkey:
        return None
    return data


def _write_cache(path: str, arrays: dict[str, Any]) -> bool:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # readers never see a half-written cache
        return True
    except OSError as e:
        print(f"warning: cannot write the gallery cache {path} ({e}); the features are not kept", file=sys.stderr)
        return False


def gallery_features(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    gallery: str,
    *,
    model_and_variables: tuple[Any, Any] | None = None,
    cache: str = "",
    camid: int = 0,
    parse_names: bool = True,
    batch_size: int = 0,
) -> Gallery:
    """The gallery's features, from the cache when its keys match, else extracted and cached (see module doc)."""
    root, paths = extract.list_images(gallery)
    settings = {
        "camid": int(camid),
        "parse_names": bool(parse_names),
        "batch_size": int(batch_size or config.data.test_batch_size),
    }
    mkey, fkey = model_key(config, checkpoint, **settings), files_key(paths)
    cache = cache or default_cache_path(gallery, mkey)
    data = _read_cache(cache, mkey, fkey)
    if data is not None:
        return Gallery(data["features"], data["pids"], data["camids"], paths, root, True)
    model, variables = model_and_variables or extract.load_model(config, checkpoint)
    got = extract.extract_images(
        model, variables, paths, config, camid=camid, parse_names=parse_names, batch_size=batch_size, desc="gallery"
    )
    _write_cache(
        cache,
        {
            "features": got.features,
            "pids": got.pids,
            "camids": got.camids,
            "file_names": np.asarray([os.path.relpath(p, root) for p in paths], np.str_),
            "model_key": np.str_(mkey),
            "files_key": np.str_(fkey),
        },
    )
    return Gallery(got.features, got.pids, got.camids, paths, root, False)


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _nearest(gallery: jax.Array, g_sq: jax.Array, queries: jax.Array, k: int, normalize: bool):
    if normalize:
        queries = l2_normalise(queries, axis=1)
    q_sq = jnp.sum(queries * queries, axis=1, keepdims=True)
    # Contracting both on their feature axis: written as queries @ gallery.T, XLA on CPU copies the transposed
    # gallery on every call (measured 30x slower for one query).
    prod = jax.lax.dot_general(queries, gallery, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST)
    dist = jnp.maximum(q_sq + g_sq[None, :] - 2 * prod, 0)  # squared Euclidean, as evaluate.pairwise_distances
    neg, idx = jax.lax.top_k(-dist, k)
    return -neg, idx


class GalleryIndex:
    """Gallery features on the device, normalised once; :meth:`search` is one matrix product and ``top_k``."""

    def __init__(self, features: Any, *, feat_norm: bool = True):
        g = jnp.asarray(features, jnp.float32)
        if g.ndim != 2 or g.shape[0] == 0:
            raise ValueError(f"GalleryIndex: expected non-empty [N, D] features, got shape {tuple(g.shape)}")
        if feat_norm:
            g = l2_normalise(g, axis=1)
        self.features = g
        self.sq_norms = jnp.sum(g * g, axis=1)
        self.feat_norm = bool(feat_norm)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, indices)`` ``[Q, min(k, N)]`` of the nearest gallery rows, nearest first."""
        q = jnp.asarray(queries, jnp.float32)
        if q.ndim != 2 or q.shape[1] != self.features.shape[1]:
            raise ValueError(f"search: queries must be [Q, {self.features.shape[1]}], got {tuple(q.shape)}")
        if k < 1:
            raise ValueError(f"topk must be >= 1, got {k}")
        dist, idx = _nearest(self.features, self.sq_norms, q, min(int(k), len(self)), self.feat_norm)
        return np.asarray(dist), np.asarray(idx)


# -------------------------------------------------------------------------------------------------- results


def rank_queries(
    index: GalleryIndex, gallery: Gallery, queries: extract.Images, k: int
) -> list[list[tuple[int, float]]]:
    """Per query, ``[(gallery index, distance), ...]`` of its top ``k``, the query's own file left out; ``k`` >= 1
    whether or not the queries are in the gallery."""
    if k < 1:
        raise ValueError(f"--topk={k}: expected at least 1 gallery image per query")
    where = {os.path.realpath(p): i for i, p in enumerate(gallery.paths)}
    own = [where.get(os.path.realpath(p), -1) for p in queries.paths]
    dist, idx = index.search(queries.features, k + (1 if max(own, default=-1) >= 0 else 0))
    out = []
    for q in range(len(queries.paths)):
        kept = [(int(j), float(d)) for j, d in zip(idx[q], dist[q]) if int(j) != own[q]]
        out.append(kept[:k])
    return out


def write_results(
    out_dir: str,
    gallery: Gallery,
    queries: extract.Images,
    ranked: list[list[tuple[int, float]]],
    *,
    size: tuple[int, int] = (128, 64),
) -> list[str]:
    """The PNG strip of every query and ``results.json`` (see module doc); returns the PNG paths."""
    os.makedirs(out_dir, exist_ok=True)
    remove_previous_strips(out_dir)
    names = [f"{n:03d}_{os.path.splitext(os.path.basename(q))[0]}.png" for n, q in enumerate(queries.paths)]
    summary = [
        {
            "query": qpath,
            "strip": name,
            "results": [{"file": os.path.relpath(gallery.paths[j], gallery.root), "distance": d} for j, d in results],
        }
        for qpath, name, results in zip(queries.paths, names, ranked)
    ]
    with open(os.path.join(out_dir, "results.json.tmp"), "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(os.path.join(out_dir, "results.json.tmp"), os.path.join(out_dir, "results.json"))
    pngs = []
    for n, (qpath, results) in enumerate(zip(queries.paths, ranked)):
        qpid = int(queries.pids[n])
        colours = []
        for j, _ in results:
            gpid = int(gallery.pids[j])
            known = qpid >= 0 and gpid >= 0
            colours.append(NEUTRAL if not known else visualize.MATCH if gpid == qpid else visualize.MISMATCH)
        labels = ["query"] + [f"{r + 1}: {d:.3g}" for r, (_, d) in enumerate(results)]
        strip = visualize.render_ranked_list(
            extract.read_image(qpath),
            [extract.read_image(gallery.paths[j]) for j, _ in results],
            [c == visualize.MATCH for c in colours],
            size=size,
            labels=labels,
            colours=colours,
        )
        png = os.path.join(out_dir, names[n])
        strip.save(png)
        pngs.append(png)
    return pngs


def remove_previous_strips(out_dir: str) -> list[str]:
    """Removes the strips the ``results.json`` in ``out_dir`` lists (a previous search's); returns them. Only plain
    file names of that folder are removed (an entry without ``"strip"`` names ``NNN_<query stem>.png``)."""
    try:
        with open(os.path.join(out_dir, "results.json")) as f:
            entries = json.load(f)
    except (OSError, ValueError):  # none, or not a search's: nothing is ours to remove
        return []
    removed = []
    for n, e in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(e, dict):
            continue
        name = str(e.get("strip") or f"{n:03d}_{os.path.splitext(os.path.basename(str(e.get('query', ''))))[0]}.png")
        path = os.path.join(out_dir, name)
        if os.path.basename(name) == name and name.endswith(".png") and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def search_to_dir(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    gallery: str,
    query: str,
    out_dir: str,
    *,
    topk: int = 10,
    cache: str = "",
    camid: int = 0,
    parse_names: bool = True,
    batch_size: int = 0,
) -> tuple[Gallery, GalleryIndex, Any, list[str]]:
    """The command without its printing: returns the gallery, its index, ``(model, variables)`` and the PNGs."""
    check_output_path(out_dir, "folder")
    out_real = os.path.realpath(out_dir)
    for flag, spec in (("gallery", gallery), ("query", query)):
        folder = os.path.realpath(spec)
        if os.path.isdir(folder) and (out_real == folder or out_real.startswith(folder + os.sep)):
            raise ValueError(
                f"--out {out_dir!r} is inside --{flag} {spec!r}: its pictures would be read as {flag} images by the "
                "next search; give a folder outside it"
            )
    mv = extract.load_model(config, checkpoint)
    g = gallery_features(
        config,
        checkpoint,
        gallery,
        model_and_variables=mv,
        cache=cache,
        camid=camid,
        parse_names=parse_names,
        batch_size=batch_size,
    )
    index = GalleryIndex(g.features, feat_norm=bool(config.eval.feat_norm))
    _, qpaths = extract.list_images(query)
    q = extract.extract_images(
        *mv, qpaths, config, camid=camid, parse_names=parse_names, batch_size=batch_size, desc="query"
    )
    ranked = rank_queries(index, g, q, topk)
    pngs = write_results(out_dir, g, q, ranked, size=tuple(int(s) for s in config.img_size))
    return g, index, mv, pngs


def benchmark(
    num: int, dim: int = 7680, *, topk: int = 10, batches: Sequence[int] = (1, 16), repeats: int = 20, seed: int = 0
) -> dict[str, float]:
    """Times :meth:`GalleryIndex.search` on a random ``num x dim`` gallery; returns milliseconds per call (median)
    for each query batch size, and, as the baseline in the same run, NumPy's product and ``argpartition``."""
    g = jax.block_until_ready(jax.random.normal(jax.random.PRNGKey(seed), (num, dim), jnp.float32))
    t0 = time.perf_counter()
    index = GalleryIndex(g)
    jax.block_until_ready(index.sq_norms)
    out = {"normalise_ms": (time.perf_counter() - t0) * 1e3}
    del g
    rng = np.random.default_rng(seed)
    for b in batches:
        q = rng.normal(size=(b, dim)).astype(np.float32)
        index.search(q, topk)  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            index.search(q, topk)
            times.append(time.perf_counter() - t0)
        out[f"query_ms_batch{b}"] = float(np.median(times)) * 1e3
    host = np.asarray(index.features)
    q = rng.normal(size=(1, dim)).astype(np.float32)
    times = []
    for _ in range(max(3, repeats // 4)):
        t0 = time.perf_counter()
        d = -2 * (q @ host.T)
        np.argpartition(d, topk, axis=1)[:, :topk]
        times.append(time.perf_counter() - t0)
    out["numpy_query_ms_batch1"] = float(np.median(times)) * 1e3
    return out


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    if f.benchmark:
        res = benchmark(f.benchmark, f.benchmark_dim, topk=f.topk)
        dev = jax.devices()[0]
        print(
            f"gallery {f.benchmark} x {f.benchmark_dim} float32 on {dev.platform} ({dev.device_kind}): "
            + ", ".join(f"{k} {v:.1f}" for k, v in res.items())
        )
        print(
            f"one query: {res['query_ms_batch1']:.1f} ms, {res['numpy_query_ms_batch1'] / res['query_ms_batch1']:.2f}"
            "x NumPy's product + argpartition on the same host"
        )
        return
    for name in ("checkpoint", "gallery", "query", "out"):
        if not getattr(f, name):
            raise ValueError(f"--{name} is required (unless --benchmark)")
    config = cli.config_or_demo(f.config)
    t0 = time.perf_counter()
    g, index, mv, pngs = search_to_dir(
        config,
        f.checkpoint,
        f.gallery,
        f.query,
        f.out,
        topk=f.topk,
        cache=f.cache,
        camid=f.camid,
        parse_names=f.parse_names,
        batch_size=f.batch_size,
    )
    how = "reused from the cache" if g.reused else "extracted and cached"
    print(
        f"{len(pngs)} queries ranked against {len(g.paths)} gallery images (features {how}) in "
        f"{time.perf_counter() - t0:.1f} s; strips and results.json in {f.out}"
    )
    if not f.interactive:
        return
    print("query image path (empty line or end of input to stop):", flush=True)
    for line in sys.stdin:
        path = line.strip()
        if not path:
            break
        try:
            q = extract.extract_images(
                *mv, [path], config, camid=f.camid, parse_names=f.parse_names, batch_size=1, desc="query"
            )
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", flush=True)
            continue
        t0 = time.perf_counter()
        ranked = rank_queries(index, g, q, f.topk)[0]
        ms = (time.perf_counter() - t0) * 1e3
        print(f"{path}: top {len(ranked)} in {ms:.1f} ms", flush=True)
        for r, (j, d) in enumerate(ranked, 1):
            print(f"  {r:3d}  {d:.4g}  {os.path.relpath(g.paths[j], g.root)}", flush=True)


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config of the checkpoint (default: the demo).")
    flags.DEFINE_string("checkpoint", "", "Converted weights folder or training workdir.")
    flags.DEFINE_string("gallery", "", "Folder, image or list file of the images to search in.")
    flags.DEFINE_string("query", "", "Folder, image or list file of the query images.")
    flags.DEFINE_string("out", "", "Folder for the strips and results.json.")
    flags.DEFINE_integer("topk", 10, "Gallery images per query (>= 1).", lower_bound=1)
    flags.DEFINE_string("cache", "", "Gallery features cache file (default: <gallery>/.tmspr_features/<key>.npz).")
    flags.DEFINE_integer("camid", 0, "0-based camera of images whose names are not Market/Duke release names.")
    flags.DEFINE_bool("parse_names", True, "Cameras (and identities) from Market/Duke release names.")
    flags.DEFINE_integer("batch_size", 0, "Images per batch (0 = config.data.test_batch_size).")
    flags.DEFINE_bool("interactive", False, "Then read more query paths from standard input, one per line.")
    flags.DEFINE_integer("benchmark", 0, "Only time a query against a random gallery of this many rows.")
    flags.DEFINE_integer("benchmark_dim", 7680, "Feature width of --benchmark (7680 = ViT-B T-MSPR).")
    cli.run(_main)

r"""Ranking speed: ``evaluate.eval_reid`` against a full NumPy stable sort and TransReID's ``eval_func``, one run.

    python -m tmspr_jax.tools.benchmark_eval [--num_query=2210 --num_gallery=17661 --gallery_ids=1110
        --query_ids=519 --cameras=8] [--repeats=3] [--distances=random,features] [--torchreid_queries=100]
        [--large_query=2000 --large_gallery=100000]

The problem has Occluded-Duke's size by default: 2,210 queries, 17,661 gallery images of 1,110 identities, the
queries showing 519 of them, 8 cameras. ``random`` distances are uniform float32 (every true match anywhere in the
ranking: the worst case for ``eval_reid``, which only looks at row values up to the farthest item of the query's
identity); ``features`` distances put true matches nearer, as a trained model does. Implementations, all timed on the
same matrix, round-robin ``--repeats`` times (medians of the wall time and of the process's CPU time; on a shared
machine the CPU time is the steadier figure):

* ``eval_reid``: this project's, no full sort (``tmspr_jax/evaluate.py``).
* ``NumPy stable sort``: a full ``argsort(kind='stable')`` of every row, then the metrics vectorised over chunks of
  queries (what ``eval_reid`` did before; identical tie order).
* ``TransReID eval_func``: TransReID's algorithm: ``argsort`` (default quicksort) of the whole matrix, a matches matrix,
  then a Python loop over queries with the removal mask, CMC and AP of each.
* ``torchreid-style`` (``--torchreid_queries`` > 0): the same loop with AP's precision computed by a Python list
  comprehension over the whole ranking, as torchreid's Python evaluator does; too slow to run on all queries, so it is
  timed on the first queries and scaled to all of them.

All implementations must agree (CMC and mAP to 1e-6; random float distances have no ties) or the tool stops.
``--large_gallery`` > 0 adds one ``eval_reid`` and one stable-sort run on a ``--large_query`` x ``--large_gallery``
problem (identities scaled with the gallery), with the peak memory each allocates on top of the distance matrix
(``tracemalloc``, which sees NumPy's allocations).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import flags
from tqdm import tqdm

from tmspr_jax import evaluate
from tmspr_jax.tools import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags (defined only when run as a program, so that importing this module defines none)."""
    flags.DEFINE_integer("num_query", 2210, "Queries.")
    flags.DEFINE_integer("num_gallery", 17661, "Gallery images.")
    flags.DEFINE_integer("gallery_ids", 1110, "Identities in the gallery.")
    flags.DEFINE_integer("query_ids", 519, "Identities the queries show (a subset of the gallery's).")
    flags.DEFINE_integer("cameras", 8, "Cameras.")
    flags.DEFINE_integer("max_rank", 50, "CMC length.")
    flags.DEFINE_integer("repeats", 3, "Timed runs of each implementation (round-robin); the median is shown.")
    flags.DEFINE_list("distances", ["random", "features"], "Distance kinds to time: random, features.")
    flags.DEFINE_integer(
        "torchreid_queries", 100, "Queries the torchreid-style loop is timed on (scaled to all); 0 skips it."
    )
    flags.DEFINE_integer("large_query", 2000, "Queries of the large-gallery run.")
    flags.DEFINE_integer("large_gallery", 100000, "Gallery of the large-gallery run; 0 skips it.")
    flags.DEFINE_integer("seed", 0, "Random seed of the problems.")


# ------------------------------------------------------------------------------------------------ the baselines
def stable_sort_eval(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    chunk: int = 1 << 21,
) -> dict[str, Any]:
    """CMC, mAP, mINP from a full stable argsort of every row, vectorised over chunks of queries."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    cmc_sum, ap_sum, inp_sum, num_valid = np.zeros(max_rank), 0.0, 0.0, 0
    rows = max(1, chunk // num_g)
    for s in range(0, num_q, rows):
        order = np.argsort(distmat[s : s + rows], axis=1, kind="stable")
        same_pid = g_pids[order] == q_pids[s : s + rows, None]
        keep = ~(same_pid & (g_camids[order] == q_camids[s : s + rows, None]))
        hits = same_pid & keep
        num_rel = hits.sum(axis=1)
        valid = num_rel > 0
        hits, keep, num_rel = hits[valid], keep[valid], num_rel[valid]
        pos = np.cumsum(keep, axis=1)  # 1-based rank among the kept items
        precision = np.divide(np.cumsum(hits, axis=1), pos, out=np.zeros(hits.shape), where=hits)
        ap_sum += float(np.sum(precision.sum(axis=1) / num_rel))
        first = np.where(hits, pos, num_g + 1).min(axis=1)
        inp_sum += float(np.sum(num_rel / np.where(hits, pos, 0).max(axis=1)))
        cmc_sum += np.sum(first[:, None] <= np.arange(1, max_rank + 1), axis=0)
        num_valid += int(valid.sum())
    return {"cmc": cmc_sum / num_valid, "mAP": ap_sum / num_valid, "mINP": inp_sum / num_valid}


def transreid_eval(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    list_precision: bool = False,
) -> dict[str, Any]:
    """TransReID's eval_func algorithm: one argsort of the whole matrix, then a per-query loop.

    ``list_precision``: AP's precisions by a Python list comprehension over the ranking (torchreid's Python evaluator).
    """
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    ranking = np.argsort(distmat, axis=1)
    matches = (g_pids[ranking] == q_pids[:, None]).astype(np.int32)
    cmcs, aps = [], []
    for q in range(num_q):
        order = ranking[q]
        same_view = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        hits = matches[q][~same_view]
        if not np.any(hits):
            continue
        cmc = hits.cumsum()
        cmc[cmc > 1] = 1
        cmcs.append(cmc[:max_rank])
        found = hits.cumsum()
        if list_precision:
            precision = np.asarray([x / (i + 1.0) for i, x in enumerate(found)])
        else:
            precision = found / np.arange(1, len(found) + 1, dtype=np.float64)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return {"cmc": np.asarray(cmcs, np.float32).sum(axis=0) / len(aps), "mAP": float(np.mean(aps))}


# ------------------------------------------------------------------------------------------------ the problem
def make_problem(
    num_query: int, num_gallery: int, gallery_ids: int, query_ids: int, cameras: int, kind: str, seed: int = 0
) -> tuple[np.ndarray, ...]:
    """``(distmat, q_pids, g_pids, q_camids, g_camids)`` with re-ID-like identities and ``kind`` distances."""
    if kind not in ("random", "features"):
        raise ValueError(f"--distances: unknown kind {kind!r}; expected random or features")
    if not 0 < query_ids <= gallery_ids:
        raise ValueError(f"--query_ids={query_ids}: expected 1..gallery_ids ({gallery_ids})")
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, gallery_ids, num_gallery)
    shown = rng.choice(gallery_ids, query_ids, replace=False)
    q_pids = shown[rng.integers(0, query_ids, num_query)]
    q_camids, g_camids = rng.integers(0, cameras, num_query), rng.integers(0, cameras, num_gallery)
    distmat = rng.random((num_query, num_gallery), dtype=np.float32)
    if kind == "features":
        # true matches mostly nearer than the others, with overlap: hits spread over the first few hundred ranks
        distmat += np.float32(0.9) * (q_pids[:, None] != g_pids[None, :])
    return distmat, q_pids, g_pids, q_camids, g_camids


def _peak_mb(fn: Callable[[], Any]) -> float:
    """Peak memory ``fn`` allocates through Python/NumPy, in MB."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _check_agree(name: str, res: dict, ref: dict) -> None:
    n = min(len(res["cmc"]), len(ref["cmc"]))
    if not (np.allclose(res["cmc"][:n], ref["cmc"][:n], atol=1e-6) and abs(res["mAP"] - ref["mAP"]) < 1e-6):
        raise RuntimeError(f"{name} disagrees with eval_reid: mAP {res['mAP']:.8f} vs {ref['mAP']:.8f}")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(result, wall seconds, CPU seconds of this process)``. Everything timed here is single-threaded NumPy, so the
    CPU time is the work done, whatever else the machine runs; the wall time also counts the waits for a core."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn()
    return res, time.perf_counter() - t0, time.process_time() - c0


def time_problem(kind: str, args: tuple, repeats: int, max_rank: int, torchreid_queries: int) -> list[tuple]:
    """``[(name, median wall seconds, median CPU seconds, note)]`` of every implementation on ``args``, round-robin."""
    impls: dict[str, Callable[[], dict]] = {
        "eval_reid (this project)": lambda: evaluate.eval_reid(*args, max_rank=max_rank),
        "NumPy stable sort (before)": lambda: stable_sort_eval(*args, max_rank=max_rank),
        "TransReID eval_func": lambda: transreid_eval(*args, max_rank=max_rank),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in impls}
    ref = None
    with tqdm(total=repeats * len(impls), desc=f"{kind} distances", leave=False) as bar:
        for _ in range(repeats):
            for name, fn in impls.items():
                res, wall, cpu = _timed(fn)
                times[name].append((wall, cpu))
                ref = res if ref is None else ref
                _check_agree(name, res, ref)
                bar.update(1)
    rows = [
        (name, statistics.median(w for w, _ in t), statistics.median(c for _, c in t), "") for name, t in times.items()
    ]
    nq = min(torchreid_queries, args[0].shape[0])
    if nq > 0:
        sub = (args[0][:nq], args[1][:nq], args[2], args[3][:nq], args[4])
        res, wall, cpu = _timed(lambda: transreid_eval(*sub, max_rank=max_rank, list_precision=True))
        _check_agree("torchreid-style", res, evaluate.eval_reid(*sub, max_rank=max_rank))
        scale = args[0].shape[0] / nq
        rows.append(("torchreid-style", wall * scale, cpu * scale, f"timed on {nq} queries, scaled"))
    return rows


def main() -> None:
    """Prints the timing tables."""
    if FLAGS.repeats < 1:
        raise ValueError(f"--repeats={FLAGS.repeats}: expected >= 1")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; numpy {np.__version__}")
    print(
        f"problem: {FLAGS.num_query} queries x {FLAGS.num_gallery} gallery, {FLAGS.gallery_ids} gallery ids, "
        f"{FLAGS.query_ids} query ids, {FLAGS.cameras} cameras, max_rank {FLAGS.max_rank}; "
        f"median of {FLAGS.repeats} round-robin runs"
    )
    for kind in FLAGS.distances:
        args = make_problem(
            FLAGS.num_query, FLAGS.num_gallery, FLAGS.gallery_ids, FLAGS.query_ids, FLAGS.cameras, kind, FLAGS.seed
        )
        rows = time_problem(kind, args, FLAGS.repeats, FLAGS.max_rank, FLAGS.torchreid_queries)
        ours, base = rows[0], next(r for r in rows if r[0] == "TransReID eval_func")
        print(f"\n{kind} distances")
        print(
            f"{'implementation':<28} {'wall s':>8} {'CPU s':>8} {'/ TransReID (wall, CPU)':>24} "
            f"{'eval_reid speed-up (wall, CPU)':>31}"
        )
        for name, wall, cpu, note in rows:
            print(
                f"{name:<28} {wall:>8.3f} {cpu:>8.3f} {wall / base[1]:>11.3f} {cpu / base[2]:>12.3f} "
                f"{wall / ours[1]:>17.1f}x {cpu / ours[2]:>12.1f}x" + (f"  ({note})" if note else "")
            )
    if FLAGS.large_gallery > 0:
        ng, nq = FLAGS.large_gallery, FLAGS.large_query
        ids = max(1, round(FLAGS.gallery_ids * ng / FLAGS.num_gallery))
        qids = max(1, min(ids, round(FLAGS.query_ids * ng / FLAGS.num_gallery)))
        args = make_problem(nq, ng, ids, qids, FLAGS.cameras, "random", FLAGS.seed)
        print(
            f"\nlarge gallery: {nq} queries x {ng} gallery ({ids} gallery ids, {qids} query ids), random distances; "
            f"distance matrix {args[0].nbytes / 2**20:.0f} MB (not counted below); one run each"
        )
        print(f"{'implementation':<28} {'wall s':>8} {'CPU s':>8} {'peak extra MB':>14}")
        ref = None
        for name, fn in (
            ("eval_reid (this project)", evaluate.eval_reid),
            ("NumPy stable sort (before)", stable_sort_eval),
        ):
            res, wall, cpu = _timed(lambda fn=fn: fn(*args, max_rank=FLAGS.max_rank))
            ref = res if ref is None else ref
            _check_agree(name, res, ref)
            mb = _peak_mb(lambda fn=fn: fn(*args, max_rank=FLAGS.max_rank))
            print(f"{name:<28} {wall:>8.3f} {cpu:>8.3f} {mb:>14.1f}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)

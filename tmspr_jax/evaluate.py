"""Re-ID metrics on the host (docs/reference.md §13): CMC, mAP, mINP and k-reciprocal re-ranking, in NumPy.

Model-free: features come in as arrays (:mod:`tmspr_jax.inference` extracts them with the model).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from tmspr_jax.utils import l2_normalise

# Elements per chunk of the [queries, gallery] work arrays (bounded memory, still fully vectorised per chunk).
_CHUNK_ELEMS = 1 << 21


def pairwise_distances(qf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``||q||^2 + ||g||^2 - 2 q.g`` (no sqrt, as the reference), float32 ``[Nq, Ng]``."""
    qf = np.asarray(qf, np.float32)
    gf = np.asarray(gf, np.float32)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"pairwise_distances: expected [Nq, D] and [Ng, D], got {qf.shape} and {gf.shape}")
    qq = np.sum(qf * qf, axis=1, keepdims=True)
    gg = np.sum(gf * gf, axis=1, keepdims=True).T
    return qq + gg - 2.0 * (qf @ gf.T)


def _check_1d(name: str, x: Any, n: int) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != (n,):
        raise ValueError(f"eval_reid: {name} must have shape ({n},) to match distmat, got {x.shape}")
    return x


def _pid_groups(g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gallery indices grouped by identity: ``(order, pids, starts, counts)``, group ``i`` being
    ``order[starts[i]:starts[i] + counts[i]]`` (ascending gallery index) for identity ``pids[i]``."""
    order = np.argsort(g_pids, kind="stable")
    pids, starts, counts = np.unique(g_pids[order], return_index=True, return_counts=True)
    return order, pids, starts, counts


def _same_pid_pairs(q_pids: np.ndarray, groups: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(row, col)``: every (query, gallery item) pair of the same identity, by query then gallery index."""
    order, pids, starts, counts = groups
    at = np.minimum(np.searchsorted(pids, q_pids), len(pids) - 1)
    found = pids[at] == q_pids
    n = np.where(found, counts[at], 0)
    row = np.repeat(np.arange(len(q_pids)), n)
    first = np.repeat(np.where(found, starts[at], 0) - (np.cumsum(n) - n), n)
    return row, order[first + np.arange(len(row))]


def _stable_positions(block: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """0-based position of ``block[row, col]`` in its row's stable ascending order (what
    ``argsort(kind='stable')`` would give): the entries of the row that are smaller, plus the equal ones at lower
    columns. ``row`` must be non-decreasing. Per row, only the values up to the largest asked-for one count: they are
    sorted (values, no argsort) and searched. With real features the true matches lie near the top, so that is a small
    fraction of the gallery."""
    value = block[row, col]
    less = np.empty(len(row), np.int64)
    equal = np.empty(len(row), np.int64)
    bounds = np.searchsorted(row, np.arange(block.shape[0] + 1))
    rows = np.flatnonzero(np.diff(bounds))
    top = np.maximum.reduceat(value, bounds[rows])
    for r, t in zip(rows, top):
        a, b = bounds[r], bounds[r + 1]
        x = block[r]
        srt = np.sort(x[x <= t])
        less[a:b] = np.searchsorted(srt, value[a:b], "left")
        equal[a:b] = np.searchsorted(srt, value[a:b], "right") - less[a:b]
    tied = np.flatnonzero(equal > 1)
    if tied.size:
        # Exact ties: the equal entries at lower columns, one pass per distinct (row, value).
        key_row, key_value = row[tied], value[tied]
        order = np.lexsort((key_value, key_row))
        tied, key_row, key_value = tied[order], key_row[order], key_value[order]
        new = np.ones(len(tied), bool)
        new[1:] = (key_row[1:] != key_row[:-1]) | (key_value[1:] != key_value[:-1])
        edges = np.append(np.flatnonzero(new), len(tied))
        for a, b in zip(edges[:-1], edges[1:]):
            same = np.flatnonzero(block[key_row[a]] == key_value[a])
            less[tied[a:b]] += np.searchsorted(same, col[tied[a:b]])
    return less


def _chunk_metrics(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    groups: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    g_camids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(valid [n], ap, inp, first_hit)`` of a chunk of queries (the last three for the valid ones only), or None
    when no query of the chunk has a match."""
    n = dist.shape[0]
    # Only the gallery items of the query's identity matter: the true matches and the removed same-camera items.
    row, col = _same_pid_pairs(q_pids, groups)
    removed = g_camids[col] == q_camids[row]
    if np.all(removed):
        return None
    pos = _stable_positions(dist, row, col)
    order = np.lexsort((pos, row))
    row, pos, removed = row[order], pos[order], removed[order]
    # 1-based rank among the kept items: the position minus the removed items ranked before it in the same row.
    n_removed = np.cumsum(removed)
    row_start = np.searchsorted(row, row)
    removed_before = n_removed - removed - (n_removed - removed)[row_start]
    hit = ~removed
    row, rank = row[hit], (pos - removed_before + 1)[hit]
    k = np.arange(1, len(row) + 1) - np.searchsorted(row, row)  # 1-based hit number within its query
    num_rel = np.bincount(row, minlength=n)
    valid = num_rel > 0
    ap = np.bincount(row, weights=k / rank, minlength=n)[valid] / num_rel[valid]
    first_hit = np.zeros(n, np.int64)
    first_hit[row[k == 1]] = rank[k == 1]
    last_hit = np.zeros(n, np.int64)
    last_hit[row[k == num_rel[row]]] = rank[k == num_rel[row]]
    num_rel, first_hit, last_hit = num_rel[valid], first_hit[valid], last_hit[valid]
    return valid, ap, num_rel / last_hit, first_hit


def eval_reid(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    per_query: bool = False,
) -> dict[str, Any]:
    """CMC, mAP and mINP with the reference's protocol (market1501-style eval_func).

    Per query the gallery is ranked by ascending distance; gallery items with the same pid AND the same camid are
    removed; queries with no remaining match are skipped. ``cmc`` = mean over valid queries of the clipped cumulative
    hits (length ``max_rank``, clipped to the gallery size with a warning); AP = mean of the precision at each hit;
    INP = (number of hits) / (rank of the last hit), as torchreid / fast-reid define mINP.

    The ranking uses a STABLE argsort: ties are ordered by gallery index. The reference's default quicksort orders
    ties arbitrarily; stable sorting makes results reproducible and equal to the reference whenever there are no ties.
    No full argsort is done: every metric follows from the ranks of the query identity's gallery items alone, and
    the rank of an item is the number of row entries that are smaller, plus the equal ones at lower gallery index
    (sorted values searched, ties counted exactly). Queries are processed in chunks (bounded memory).

    Returns ``{'cmc': float64 [max_rank], 'mAP': float, 'mINP': float, 'num_valid_queries': int}``; with
    ``per_query`` also ``'per_query': {'index', 'pid', 'ap', 'inp', 'first_hit'}``, one entry per valid query
    (``first_hit`` is the 1-based rank of the first match), in query order.
    Raises ``ValueError`` on inconsistent shapes, non-finite distances, or when no query has a match.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2 or distmat.shape[0] == 0 or distmat.shape[1] == 0:
        raise ValueError(f"eval_reid: distmat must be a non-empty [num_query, num_gallery] matrix, got {distmat.shape}")
    num_q, num_g = distmat.shape
    q_pids = _check_1d("q_pids", q_pids, num_q)
    q_camids = _check_1d("q_camids", q_camids, num_q)
    g_pids = _check_1d("g_pids", g_pids, num_g)
    g_camids = _check_1d("g_camids", g_camids, num_g)
    if not (np.isfinite(distmat.min()) and np.isfinite(distmat.max())):  # NaN propagates; no [Nq, Ng] mask
        raise ValueError("eval_reid: distmat contains NaN or inf (check the features)")
    if int(max_rank) < 1:
        raise ValueError(f"eval_reid: max_rank must be >= 1, got {max_rank}")
    max_rank = int(max_rank)
    if num_g < max_rank:
        warnings.warn(
            f"eval_reid: gallery has only {num_g} items; max_rank {max_rank} clipped to {num_g}", stacklevel=2
        )
        max_rank = num_g

    groups = _pid_groups(g_pids)
    ranks = np.arange(1, max_rank + 1)
    cmc_sum = np.zeros(max_rank, np.float64)
    ap_sum = inp_sum = 0.0
    num_valid = 0
    collected: dict[str, list[np.ndarray]] = {"index": [], "ap": [], "inp": [], "first_hit": []}
    rows = max(1, _CHUNK_ELEMS // num_g)
    for s in range(0, num_q, rows):
        e = min(num_q, s + rows)
        chunk = _chunk_metrics(distmat[s:e], q_pids[s:e], q_camids[s:e], groups, g_camids)
        if chunk is None:
            continue
        valid, ap, inp, first_hit = chunk
        ap_sum += float(np.sum(ap))
        inp_sum += float(np.sum(inp))
        cmc_sum += np.sum(first_hit[:, None] <= ranks[None, :], axis=0)
        num_valid += int(valid.sum())
        if per_query:
            values = {"index": s + np.flatnonzero(valid), "ap": ap, "inp": inp, "first_hit": first_hit}
            for key, value in values.items():
                collected[key].append(value)
    if num_valid == 0:
        raise ValueError("eval_reid: no query identity appears in the gallery (under another camera); nothing to score")
    out = {
        "cmc": cmc_sum / num_valid,
        "mAP": ap_sum / num_valid,
        "mINP": inp_sum / num_valid,
        "num_valid_queries": num_valid,
    }
    if per_query:
        values = {k: np.concatenate(v) for k, v in collected.items()}
        values["first_hit"] = values["first_hit"].astype(np.int64)
        values["pid"] = q_pids[values["index"]]
        out["per_query"] = values
    return out


BOOTSTRAP_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")


def bootstrap_intervals(
    per_query: Mapping[str, np.ndarray], num_samples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of mAP, Rank-1/5/10 and mINP over the test identities.

    Identities, not queries, are drawn with replacement (all of a drawn identity's queries count), because the queries
    of one person are not independent. The interval says how much the figure depends on which people happen to be in
    the test set; it says nothing of run-to-run training noise. ``per_query`` is ``eval_reid(..., per_query=True)``'s.
    """
    if int(num_samples) < 1:
        raise ValueError(f"bootstrap_intervals: num_samples must be >= 1, got {num_samples}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"bootstrap_intervals: level must be in (0, 1), got {level}")
    first_hit = np.asarray(per_query["first_hit"])
    values = np.stack(
        [
            np.asarray(per_query["ap"], np.float64),
            first_hit <= 1,
            first_hit <= 5,
            first_hit <= 10,
            np.asarray(per_query["inp"], np.float64),
        ],
        axis=1,
    ).astype(np.float64)
    _, identity = np.unique(np.asarray(per_query["pid"]), return_inverse=True)
    num_ids = int(identity.max()) + 1
    sums = np.zeros((num_ids, values.shape[1]))
    np.add.at(sums, identity, values)
    counts = np.bincount(identity, minlength=num_ids).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, num_ids, size=(int(num_samples), num_ids))
    stats = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)[:, None]  # [num_samples, metrics]
    tail = (1.0 - float(level)) / 2.0
    lo, hi = np.quantile(stats, [tail, 1.0 - tail], axis=0)
    return {name: [float(lo[i]), float(hi[i])] for i, name in enumerate(BOOTSTRAP_METRICS)}


def _stable_topk(d: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` smallest entries per row, in stable-argsort order (ties by index)."""
    n_rows, n_cols = d.shape
    out = np.empty((n_rows, k), np.int64)
    rows = max(1, _CHUNK_ELEMS // n_cols)
    for s in range(0, n_rows, rows):
        blk = d[s : s + rows]
        if k >= n_cols:
            out[s : s + rows] = np.argsort(blk, axis=1, kind="stable")[:, :k]
            continue
        kth = np.partition(blk, k - 1, axis=1)[:, k - 1 : k]
        lt = blk < kth
        eq = blk == kth
        # All entries below the k-th value plus the lowest-index ties: exactly what a stable full sort keeps.
        sel = lt | (eq & (np.cumsum(eq, axis=1) <= k - lt.sum(axis=1, keepdims=True)))
        idx = np.nonzero(sel)[1].reshape(-1, k)
        o = np.argsort(np.take_along_axis(blk, idx, axis=1), axis=1, kind="stable")
        out[s : s + rows] = np.take_along_axis(idx, o, axis=1)
    return out


def _reciprocal_mask(top: np.ndarray, k: int) -> np.ndarray:
    """``mask[i, j]``: ``top[i, j]`` is among the first ``k`` of ``i`` and ``i`` among the first ``k`` of it."""
    r = top[:, :k]
    n = r.shape[0]
    mask = np.empty(r.shape, bool)
    rows = max(1, _CHUNK_ELEMS // (k * k))
    for s in range(0, n, rows):
        e = min(n, s + rows)
        mask[s:e] = np.any(r[r[s:e]] == np.arange(s, e)[:, None, None], axis=-1)
    return mask


def re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) as the reference's copy computes it.

    Works on the given distances as they are (the reference passes squared Euclidean distances; no squaring here).
    The joint ``[q+g, q+g]`` matrix is divided by its column maxima and transposed; k-reciprocal sets use the first
    ``k1 + 1`` neighbours, expanded by candidates' ``round(k1/2) + 1`` sets that overlap by more than 2/3;
    V holds ``exp(-d)`` weights normalised per row, stored in float16 as in the reference; query expansion averages
    V over the first ``k2`` neighbours; the Jaccard distance is ``1 - m / (2 - m)`` with ``m = sum min(V_i, V_j)``
    accumulated in float16 in the reference's order (the numbers match the reference's, float16 rounding included).
    Returns ``(1 - lambda) * jaccard + lambda * original`` for query x gallery,
    float32 ``[Nq, Ng]``. Neighbour lists use a stable sort (ties by index). Memory is O((Nq + Ng)^2).
    """
    q_g = np.asarray(q_g_dist, np.float32)
    q_q = np.asarray(q_q_dist, np.float32)
    g_g = np.asarray(g_g_dist, np.float32)
    if q_g.ndim != 2:
        raise ValueError(f"re_ranking: q_g_dist must be [Nq, Ng], got {q_g.shape}")
    nq, ng = q_g.shape
    if q_q.shape != (nq, nq) or g_g.shape != (ng, ng):
        raise ValueError(
            f"re_ranking: expected q_q_dist ({nq}, {nq}) and g_g_dist ({ng}, {ng}), got {q_q.shape} and {g_g.shape}"
        )
    if int(k1) < 1 or int(k2) < 1 or not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"re_ranking: need k1 >= 1, k2 >= 1, 0 <= lambda_value <= 1; got {k1}, {k2}, {lambda_value}")
    k1, k2 = int(k1), int(k2)
    n = nq + ng
    dist = np.block([[q_q, q_g], [q_g.T, g_g]])
    if not np.all(np.isfinite(dist)):
        raise ValueError("re_ranking: distances contain NaN or inf")
    col_max = dist.max(axis=0)
    if np.any(col_max <= 0):
        raise ValueError("re_ranking: a column of the joint distance matrix has max <= 0 (all-identical features?)")
    dist = np.ascontiguousarray((dist / col_max).T)

    k_full = min(k1 + 1, n)
    k_half = min(int(np.around(k1 / 2)) + 1, n)
    top = _stable_topk(dist, max(k_full, k_half, min(k2, n)))
    recip = _reciprocal_mask(top, k_full)  # [n, k_full]
    half = _reciprocal_mask(top, k_half)  # [n, k_half]
    r_full, r_half = top[:, :k_full], top[:, :k_half]
    half_size = half.sum(axis=1)

    v = np.zeros((n, n), np.float16)
    rows = max(1, _CHUNK_ELEMS // max(n, k_full * k_half * k_full))
    for s in range(0, n, rows):
        e = min(n, s + rows)
        rf, rm = r_full[s:e], recip[s:e]  # [b, K], own k-reciprocal set
        cand_set = r_half[rf]  # [b, K, Kh]: each candidate's half-size neighbour list
        cand_mask = half[rf]  # [b, K, Kh]: ... restricted to its reciprocal ones
        # |cand_set ∩ own set|: an element counts if it equals a member of the own reciprocal set.
        in_own = np.any((cand_set[..., None] == rf[:, None, None, :]) & rm[:, None, None, :], axis=-1)
        overlap = np.sum(in_own & cand_mask, axis=-1)
        take = rm & (overlap > (2.0 / 3.0) * half_size[rf])  # [b, K]
        member = np.zeros((e - s, n), bool)
        bi, ji = np.nonzero(rm)
        member[bi, rf[bi, ji]] = True
        bi, ji, li = np.nonzero(take[:, :, None] & cand_mask)
        member[bi, cand_set[bi, ji, li]] = True
        w = np.where(member, np.exp(-dist[s:e]), np.float32(0))
        tot = w.sum(axis=1, keepdims=True)
        v[s:e] = np.divide(w, tot, out=np.zeros_like(w), where=tot > 0).astype(np.float16)

    if k2 != 1:
        v_qe = np.empty_like(v)
        kq = min(k2, n)
        rows = max(1, _CHUNK_ELEMS // (kq * n))
        for s in range(0, n, rows):
            e = min(n, s + rows)
            v_qe[s:e] = v[top[s:e, :kq]].mean(axis=1, dtype=np.float32).astype(np.float16)
        v = v_qe

    # Inverted index over gallery rows: for each column k, the gallery rows j with V[j, k] != 0.
    g_rows, g_cols = np.nonzero(v[nq:])
    order = np.argsort(g_cols, kind="stable")
    g_rows, g_cols = g_rows[order], g_cols[order]
    g_vals = v[nq:][g_rows, g_cols]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(g_cols, minlength=n))])
    jaccard = np.empty((nq, ng), np.float16)
    for i in range(nq):
        temp_min = np.zeros(ng, np.float16)
        # Accumulate in float16 in the reference's column order so the result matches it bit for bit
        # (a float64 sum differs by up to ~1e-3). Each step is vectorised over the gallery rows of column k.
        for k in np.flatnonzero(v[i]):
            a, b = indptr[k], indptr[k + 1]
            rows_k = g_rows[a:b]
            temp_min[rows_k] = temp_min[rows_k] + np.minimum(v[i, k], g_vals[a:b])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    return (jaccard * (1 - lambda_value) + dist[:nq, nq:] * lambda_value).astype(np.float32)


def distance_matrix(qf: np.ndarray, gf: np.ndarray, eval_cfg: ml_collections.ConfigDict) -> np.ndarray:
    """Query x gallery distances ``[Nq, Ng]`` as the metrics rank them: rows L2-normalised first (``eval.feat_norm``),
    squared Euclidean, then k-reciprocal re-ranking when ``eval.rerank`` (``eval.k1``, ``eval.k2``,
    ``eval.lambda_value``)."""
    qf, gf = np.asarray(qf, np.float32), np.asarray(gf, np.float32)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"distance_matrix: expected [Nq, D] and [Ng, D] features, got {qf.shape} and {gf.shape}")
    if bool(eval_cfg.feat_norm):
        qf, gf = l2_normalise(qf), l2_normalise(gf)
    dist = pairwise_distances(qf, gf)
    if bool(eval_cfg.rerank):
        dist = re_ranking(
            dist,
            pairwise_distances(qf, qf),
            pairwise_distances(gf, gf),
            k1=int(eval_cfg.k1),
            k2=int(eval_cfg.k2),
            lambda_value=float(eval_cfg.lambda_value),
        )
    return dist


def compute_metrics(
    features: np.ndarray, pids: np.ndarray, camids: np.ndarray, num_query: int, eval_cfg: ml_collections.ConfigDict
) -> dict[str, Any]:
    """Re-ID metrics from stacked query-then-gallery features (the reference's R1_mAP_eval.compute).

    ``eval.feat_norm``: L2-normalise rows first (the reference always does); distances are squared Euclidean;
    ``eval.rerank``: k-reciprocal re-ranking with ``eval.k1``, ``eval.k2``, ``eval.lambda_value``.
    Returns ``mAP``, ``rank1``, ``rank5``, ``rank10``, ``mINP`` (fractions in [0, 1]) and ``cmc`` (list); with
    ``eval.bootstrap_samples > 0`` also ``ci95``: ``{metric: [low, high]}`` from :func:`bootstrap_intervals`.
    """
    features = np.asarray(features, np.float32)
    pids = np.asarray(pids)
    camids = np.asarray(camids)
    if features.ndim != 2:
        raise ValueError(f"compute_metrics: features must be [N, D], got {features.shape}")
    n = features.shape[0]
    if pids.shape != (n,) or camids.shape != (n,):
        raise ValueError(f"compute_metrics: pids {pids.shape} and camids {camids.shape} must be ({n},) like features")
    if not 0 < int(num_query) < n:
        raise ValueError(f"compute_metrics: num_query must be in (0, {n}), got {num_query}")
    nq = int(num_query)
    dist = distance_matrix(features[:nq], features[nq:], eval_cfg)
    max_rank = int(eval_cfg.max_rank)
    samples = int(eval_cfg.bootstrap_samples)
    res = eval_reid(dist, pids[:nq], pids[nq:], camids[:nq], camids[nq:], max_rank=max_rank, per_query=samples > 0)
    cmc = res["cmc"]
    # Past the gallery size every valid query has been matched, so the last value carries on.
    at = lambda r: float(cmc[min(r, len(cmc)) - 1])
    out = {
        "mAP": float(res["mAP"]),
        "rank1": at(1),
        "rank5": at(5),
        "rank10": at(10),
        "mINP": float(res["mINP"]),
        "cmc": [float(c) for c in cmc],
    }
    if samples > 0:
        out["ci95"] = bootstrap_intervals(res["per_query"], samples, level=0.95)
    return out


def summarize(results: Mapping[str, Any]) -> str:
    """One log line of :func:`compute_metrics`' results, with the 95% intervals when they were computed."""
    line = (
        f"mAP {results['mAP']:.1%}  Rank-1 {results['rank1']:.1%}  Rank-5 {results['rank5']:.1%}  "
        f"Rank-10 {results['rank10']:.1%}  mINP {results['mINP']:.1%}"
    )
    ci = results.get("ci95")
    if ci:
        line += (
            f"  (95% intervals over test identities: mAP {ci['mAP'][0]:.1%}-{ci['mAP'][1]:.1%}, "
            f"Rank-1 {ci['rank1'][0]:.1%}-{ci['rank1'][1]:.1%})"
        )
    return line

"""tmspr_jax.evaluate against plain per-query (loop-style) implementations of the reference protocol."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from tmspr_jax import evaluate
from tmspr_jax.config import get_base_config
from tmspr_jax.utils import l2_normalise


# ----------------------------------------------------------------------------------------------- loop oracles
def loop_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """One query at a time, like the reference's eval_func (with a stable sort)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, all_inp = [], [], []
    loop_eval.per_query = []  # (query index, AP, INP, 1-based rank of the first match) of each valid query
    for q in range(num_q):
        order = np.argsort(distmat[q], kind="stable")
        remove = [(g_pids[g] == q_pids[q]) and (g_camids[g] == q_camids[q]) for g in order]
        kept = [g for g, r in zip(order, remove) if not r]
        raw = [1 if g_pids[g] == q_pids[q] else 0 for g in kept]
        if sum(raw) == 0:
            continue
        cmc, run = [], 0
        for x in raw:
            run += x
            cmc.append(min(run, 1))
        cmc = cmc + [1] * max(0, max_rank - len(cmc))
        all_cmc.append(cmc[:max_rank])
        hits, precs, last = 0, [], 0
        for k, x in enumerate(raw, start=1):
            if x:
                hits += 1
                precs.append(hits / k)
                last = k
        all_ap.append(sum(precs) / hits)
        all_inp.append(hits / last)
        loop_eval.per_query.append((q, all_ap[-1], all_inp[-1], raw.index(1) + 1))
    return np.mean(np.array(all_cmc, np.float64), axis=0), float(np.mean(all_ap)), float(np.mean(all_inp)), len(all_ap)


def loop_re_ranking(q_g, q_q, g_g, k1, k2, lam):
    """k-reciprocal re-ranking, one row at a time with Python sets/lists (float16 V and accumulators)."""
    nq = q_g.shape[0]
    d = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0).astype(np.float32)
    n = d.shape[0]
    d = np.transpose(d / np.max(d, axis=0))
    rank = np.argsort(d, axis=1, kind="stable")

    def recip_list(i, k):
        fwd = list(rank[i, : k + 1])
        return [c for c in fwd if i in list(rank[c, : k + 1])]

    V = np.zeros((n, n), np.float16)
    for i in range(n):
        own = recip_list(i, k1)
        expanded = list(own)
        for c in own:
            cand = recip_list(c, int(np.around(k1 / 2)))
            if len(set(cand) & set(own)) > 2 / 3 * len(cand):
                expanded += cand
        idx = np.array(sorted(set(expanded)))
        w = np.exp(-d[i, idx])
        V[i, idx] = w / np.sum(w)
    if k2 != 1:
        Vq = np.zeros_like(V)
        for i in range(n):
            Vq[i] = np.mean(V[rank[i, :k2]], axis=0)
        V = Vq
    jac = np.zeros((nq, n), np.float16)
    for i in range(nq):
        acc = np.zeros(n, np.float16)
        for k in np.nonzero(V[i])[0]:
            for j in np.nonzero(V[:, k])[0]:
                acc[j] = acc[j] + np.minimum(V[i, k], V[j, k])
        jac[i] = 1 - acc / (2 - acc)
    final = jac * (1 - lam) + d[:nq] * lam
    return final[:, nq:]


# ----------------------------------------------------------------------------------------------- eval_reid
def _random_case(rng, nq, ng, n_ids, n_cams, integer=False):
    q_pids = rng.integers(0, n_ids, nq)
    g_pids = rng.integers(0, n_ids, ng)
    q_cams = rng.integers(0, n_cams, nq)
    g_cams = rng.integers(0, n_cams, ng)
    dist = rng.integers(0, 5, (nq, ng)).astype(np.float32) if integer else rng.random((nq, ng)).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("integer", [False, True])
def test_eval_reid_matches_loop(integer, monkeypatch):
    rng = np.random.default_rng(0 if integer else 1)
    monkeypatch.setattr(evaluate, "_CHUNK_ELEMS", 200)  # several query chunks
    for _ in range(4):
        case = _random_case(rng, 23, 40, 6, 3, integer)
        res = evaluate.eval_reid(*case, max_rank=15)
        cmc, ap, inp, nv = loop_eval(*case, max_rank=15)
        np.testing.assert_allclose(res["cmc"], cmc, rtol=1e-12)
        assert res["mAP"] == pytest.approx(ap, rel=1e-12)
        assert res["mINP"] == pytest.approx(inp, rel=1e-12)
        assert res["num_valid_queries"] == nv
        per = evaluate.eval_reid(*case, max_rank=15, per_query=True)["per_query"]
        index, ap_q, inp_q, first = (np.array(c) for c in zip(*loop_eval.per_query))
        np.testing.assert_array_equal(per["index"], index)
        np.testing.assert_array_equal(per["pid"], case[1][index])
        np.testing.assert_allclose(per["ap"], ap_q, rtol=1e-12)
        np.testing.assert_allclose(per["inp"], inp_q, rtol=1e-12)
        np.testing.assert_array_equal(per["first_hit"], first)


def test_eval_reid_skips_queries_and_cmc_properties():
    rng = np.random.default_rng(2)
    dist, q_pids, g_pids, q_cams, g_cams = _random_case(rng, 10, 30, 4, 2)
    # Query 0's identity appears only under its own camera in the gallery -> no valid match -> skipped.
    q_pids[0] = 99
    g_pids[:3] = 99
    g_cams[:3] = q_cams[0]
    res = evaluate.eval_reid(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    _, _, _, nv = loop_eval(dist, q_pids, g_pids, q_cams, g_cams, 20)
    assert res["num_valid_queries"] == nv < 10
    same = evaluate.eval_reid(dist[1:], q_pids[1:], g_pids, q_cams[1:], g_cams, max_rank=20)
    np.testing.assert_allclose(res["cmc"], same["cmc"])
    assert res["mAP"] == same["mAP"]
    cmc = res["cmc"]
    assert cmc.shape == (20,) and np.all(np.diff(cmc) >= 0) and 0 <= cmc[0] and cmc[-1] <= 1
    assert 0 < res["mINP"] <= res["mAP"] <= 1 + 1e-12


def test_eval_reid_perfect_and_worst_rankings():
    g_pids = np.array([0, 0, 1, 1, 2, 2])
    g_cams = np.array([1, 1, 1, 1, 1, 1])
    q_pids = np.array([0, 1, 2])
    q_cams = np.zeros(3, int)
    good = np.where(q_pids[:, None] == g_pids[None], 0.0, 1.0)
    res = evaluate.eval_reid(good, q_pids, g_pids, q_cams, g_cams, max_rank=6)
    assert res["mAP"] == 1.0 and res["mINP"] == 1.0 and np.all(res["cmc"] == 1.0)
    bad = 1.0 - good
    res = evaluate.eval_reid(bad, q_pids, g_pids, q_cams, g_cams, max_rank=6)
    # Hits at ranks 5 and 6: AP = (1/5 + 2/6) / 2, INP = 2/6, rank-4 CMC = 0.
    assert res["mAP"] == pytest.approx((1 / 5 + 2 / 6) / 2)
    assert res["mINP"] == pytest.approx(2 / 6)
    np.testing.assert_array_equal(res["cmc"], [0, 0, 0, 0, 1, 1])


def test_eval_reid_errors_and_clipping():
    rng = np.random.default_rng(3)
    dist, q_pids, g_pids, q_cams, g_cams = _random_case(rng, 5, 8, 2, 2)
    with pytest.warns(UserWarning, match="clipped"):
        res = evaluate.eval_reid(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    assert res["cmc"].shape == (8,)
    with pytest.raises(ValueError, match="no query identity"):
        evaluate.eval_reid(dist, q_pids + 100, g_pids, q_cams, g_cams, max_rank=5)
    with pytest.raises(ValueError, match="g_camids"):
        evaluate.eval_reid(dist, q_pids, g_pids, q_cams, g_cams[:-1], max_rank=5)
    bad = dist.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate.eval_reid(bad, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    bad[0, 0] = -np.inf
    with pytest.raises(ValueError, match="inf"):
        evaluate.eval_reid(bad, q_pids, g_pids, q_cams, g_cams, max_rank=5)


# ------------------------------------------------------------------------------- eval_reid against a full stable sort
def stable_sort_eval(distmat, q_pids, g_pids, q_camids, g_camids):
    """Per valid query (index, AP, INP, first hit) from a full ``argsort(kind='stable')`` of every row, vectorised."""
    order = np.argsort(distmat, axis=1, kind="stable")
    same_pid = g_pids[order] == q_pids[:, None]
    keep = ~(same_pid & (g_camids[order] == q_camids[:, None]))
    hits = same_pid & keep
    num_rel = hits.sum(axis=1)
    valid = num_rel > 0
    hits, keep, num_rel = hits[valid], keep[valid], num_rel[valid]
    pos = np.cumsum(keep, axis=1)
    ap = np.divide(np.cumsum(hits, axis=1), pos, out=np.zeros(hits.shape), where=hits).sum(axis=1) / num_rel
    first = np.where(hits, pos, pos.shape[1] + 1).min(axis=1)
    last = np.where(hits, pos, 0).max(axis=1)
    return np.flatnonzero(valid), ap, num_rel / last, first


def _reid_case(rng, nq, ng, kind):
    """Re-ID-like identities (several gallery images per id, a few query ids absent) and distances of one ``kind``."""
    g_pids = rng.integers(0, ng // 8, ng)
    q_pids = rng.integers(0, ng // 8 + 3, nq)
    q_cams, g_cams = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    if kind == "integer":  # many exact ties
        dist = np.round(rng.random((nq, ng)) * 6).astype(np.float32)
    elif kind == "signed":  # negative values, +0.0 and -0.0 (equal under comparison), duplicates
        dist = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 0.5, 3.0], np.float32), (nq, ng))
        dist += np.where(rng.random((nq, ng)) < 0.5, 0, rng.random((nq, ng))).astype(np.float32)
    elif kind == "extreme":  # a range that overflows float32 differences, and neighbours one ulp apart
        one = np.float32(1.0)
        dist = rng.choice(np.array([-3e38, 3e38, one, np.nextafter(one, np.float32(2)), 1e-30], np.float32), (nq, ng))
    elif kind == "float64":
        dist = rng.random((nq, ng))
    elif kind == "int":
        dist = rng.integers(-3, 4, (nq, ng))
    else:  # features: true matches nearer than the rest, as with a trained model
        dist = (rng.random((nq, ng)) + 0.7 * (q_pids[:, None] != g_pids[None, :])).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("kind", ["integer", "signed", "extreme", "float64", "int", "features"])
def test_eval_reid_equals_a_full_stable_sort(kind, monkeypatch):
    rng = np.random.default_rng(len(kind))
    monkeypatch.setattr(evaluate, "_CHUNK_ELEMS", 5000)  # several query chunks
    case = _reid_case(rng, 37, 400, kind)
    index, ap, inp, first = stable_sort_eval(*case)
    assert 0 < len(index) < 37  # some queries skipped
    res = evaluate.eval_reid(*case, max_rank=20, per_query=True)
    per = res["per_query"]
    np.testing.assert_array_equal(per["index"], index)
    np.testing.assert_array_equal(per["first_hit"], first)  # the same tie order: ranks equal exactly
    np.testing.assert_allclose(per["ap"], ap, rtol=1e-12)
    np.testing.assert_allclose(per["inp"], inp, rtol=1e-12)
    np.testing.assert_allclose(res["cmc"], np.mean(first[:, None] <= np.arange(1, 21), axis=0), rtol=1e-12)
    assert res["mAP"] == pytest.approx(np.mean(ap), rel=1e-12)


def test_stable_positions_equal_the_stable_argsort_with_ties():
    rng = np.random.default_rng(7)
    for values in (3, 50, 10**6):
        block = rng.integers(0, values, (9, 300)).astype(np.float32)
        inverse = np.argsort(np.argsort(block, axis=1, kind="stable"), axis=1, kind="stable")
        row = np.sort(rng.integers(0, 9, 200))
        row = row[row != 4]  # a row with nothing asked
        col = rng.integers(0, 300, len(row))
        np.testing.assert_array_equal(evaluate._stable_positions(block, row, col), inverse[row, col])


# ----------------------------------------------------------------------------------------------- distances
def test_distances_and_normalisation():
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(4, 6)), rng.normal(size=(5, 6))
    d = evaluate.pairwise_distances(q, g)
    np.testing.assert_allclose(d, ((q[:, None] - g[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-5)
    x = l2_normalise(np.concatenate([q, np.zeros((1, 6))]))
    np.testing.assert_allclose(np.linalg.norm(x[:4], axis=1), 1.0, rtol=1e-6)
    assert np.all(x[4] == 0)  # eps keeps the zero row finite


# ----------------------------------------------------------------------------------------------- re-ranking
@pytest.mark.parametrize("k1,k2,lam", [(5, 3, 0.3), (4, 1, 0.5), (20, 6, 0.3)])
def test_re_ranking_matches_loop(k1, k2, lam):
    rng = np.random.default_rng(k1)
    feats = rng.normal(size=(27, 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    q, g = feats[:9], feats[9:]
    d = evaluate.pairwise_distances
    args = (d(q, g), d(q, q), d(g, g))
    ours = evaluate.re_ranking(*args, k1=k1, k2=k2, lambda_value=lam)
    ref = loop_re_ranking(*args, k1, k2, lam)
    assert ours.shape == (9, 18) and ours.dtype == np.float32
    # V is float16 in both; with the reference's accumulation order the results agree far below 1e-3.
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    # Re-ranking changes the order relative to the plain distances (it is not a no-op).
    assert np.any(np.argsort(ours, axis=1) != np.argsort(args[0], axis=1))


def test_stable_topk_equals_stable_argsort_with_ties():
    rng = np.random.default_rng(5)
    d = rng.integers(0, 4, size=(30, 25)).astype(np.float32)
    for k in (1, 3, 7, 25):
        np.testing.assert_array_equal(evaluate._stable_topk(d, k), np.argsort(d, axis=1, kind="stable")[:, :k])


def test_re_ranking_errors():
    with pytest.raises(ValueError, match="g_g_dist"):
        evaluate.re_ranking(np.ones((2, 3)), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="k1"):
        evaluate.re_ranking(np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3)), k1=0)


# ----------------------------------------------------------------------------------------------- compute_metrics
def _eval_cfg(**over):
    """The base config's ``eval`` node, set for these small test sets, with ``over`` on top."""
    c = get_base_config().eval
    c.max_rank, c.k1, c.k2, c.bootstrap_samples = 10, 5, 3, 0
    c.update(over)
    return c


def test_compute_metrics_pipeline():
    rng = np.random.default_rng(6)
    n_ids, d = 6, 16
    centers = rng.normal(size=(n_ids, d)) * 3
    pids = np.concatenate([np.arange(n_ids), np.repeat(np.arange(n_ids), 3)])
    camids = np.concatenate([np.zeros(n_ids, int), np.tile([1, 2, 0], n_ids)])
    feats = (centers[pids] + rng.normal(size=(len(pids), d)) * 0.5) * rng.uniform(0.5, 5, size=(len(pids), 1))
    nq = n_ids
    res = evaluate.compute_metrics(feats, pids, camids, nq, _eval_cfg())
    fn = l2_normalise(feats.astype(np.float32))
    ref = evaluate.eval_reid(
        evaluate.pairwise_distances(fn[:nq], fn[nq:]), pids[:nq], pids[nq:], camids[:nq], camids[nq:], 10
    )
    assert res["mAP"] == pytest.approx(ref["mAP"]) and res["mINP"] == pytest.approx(ref["mINP"])
    assert res["rank1"] == ref["cmc"][0] and res["rank5"] == ref["cmc"][4] and res["rank10"] == ref["cmc"][9]
    assert res["cmc"] == pytest.approx(list(ref["cmc"]))
    assert all(0 <= res[k] <= 1 for k in ("mAP", "rank1", "rank5", "rank10", "mINP"))
    # feat_norm matters (features have random scales).
    raw = evaluate.compute_metrics(feats, pids, camids, nq, _eval_cfg(feat_norm=False))
    raw_ref = evaluate.eval_reid(
        evaluate.pairwise_distances(feats[:nq], feats[nq:]), pids[:nq], pids[nq:], camids[:nq], camids[nq:], 10
    )
    assert raw["mAP"] == pytest.approx(raw_ref["mAP"])
    # Re-ranking path.
    rr = evaluate.compute_metrics(feats, pids, camids, nq, _eval_cfg(rerank=True))
    d = evaluate.pairwise_distances
    rr_dist = evaluate.re_ranking(d(fn[:nq], fn[nq:]), d(fn[:nq], fn[:nq]), d(fn[nq:], fn[nq:]), 5, 3, 0.3)
    rr_ref = evaluate.eval_reid(rr_dist, pids[:nq], pids[nq:], camids[:nq], camids[nq:], 10)
    assert rr["mAP"] == pytest.approx(rr_ref["mAP"])
    with pytest.raises(ValueError, match="num_query"):
        evaluate.compute_metrics(feats, pids, camids, 0, _eval_cfg())
    # A node not built on tmspr_jax.config: the missing key is named, never given a default here.
    with pytest.raises(AttributeError, match="max_rank"):
        evaluate.compute_metrics(
            feats, pids, camids, nq, ml_collections.ConfigDict({"feat_norm": True, "rerank": False})
        )


# ----------------------------------------------------------------------------------------------- bootstrap
def loop_bootstrap(per_query, num_samples, level, seed):
    """One draw at a time: draw identities with replacement, pool all their queries, take percentiles."""
    ids = np.unique(per_query["pid"])
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(num_samples, len(ids)))
    stats = []
    for draw in draws:
        rows = np.concatenate([np.flatnonzero(per_query["pid"] == ids[i]) for i in draw])
        first = per_query["first_hit"][rows]
        stats.append(
            [
                per_query["ap"][rows].mean(),
                np.mean(first <= 1),
                np.mean(first <= 5),
                np.mean(first <= 10),
                per_query["inp"][rows].mean(),
            ]
        )
    tail = (1 - level) / 2
    lo, hi = np.quantile(np.array(stats), [tail, 1 - tail], axis=0)
    return {name: [lo[i], hi[i]] for i, name in enumerate(evaluate.BOOTSTRAP_METRICS)}


def test_bootstrap_intervals_resample_identities_like_a_loop():
    rng = np.random.default_rng(3)
    case = _random_case(rng, 60, 90, 12, 3)
    per = evaluate.eval_reid(*case, per_query=True)["per_query"]
    got = evaluate.bootstrap_intervals(per, num_samples=300, level=0.9, seed=5)
    want = loop_bootstrap(per, 300, 0.9, 5)
    assert set(got) == set(evaluate.BOOTSTRAP_METRICS)
    for name in evaluate.BOOTSTRAP_METRICS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)
    # The same seed gives the same intervals; the point estimates lie inside them.
    assert evaluate.bootstrap_intervals(per, 300, 0.9, 5) == got
    res = evaluate.eval_reid(*case, per_query=True)
    assert got["mAP"][0] <= res["mAP"] <= got["mAP"][1]
    assert got["rank1"][0] <= res["cmc"][0] <= got["rank1"][1]


def test_bootstrap_intervals_width_follows_the_number_of_identities():
    def per_query(num_ids, seed):
        r = np.random.default_rng(seed)
        pid = np.repeat(np.arange(num_ids), 2)
        first = r.choice([1, 2, 8, 30], size=pid.size)
        return {"pid": pid, "first_hit": first, "ap": 1.0 / first, "inp": 1.0 / first}

    def width(num_ids):
        ci = evaluate.bootstrap_intervals(per_query(num_ids, 0), num_samples=500)
        return ci["rank1"][1] - ci["rank1"][0]

    assert width(400) < 0.5 * width(25)  # 16 times the identities: about a quarter of the width
    # Identities that all score the same leave nothing to resample: a zero-width interval at that value.
    same = {"pid": np.arange(10), "first_hit": np.full(10, 3), "ap": np.full(10, 0.25), "inp": np.full(10, 0.5)}
    ci = evaluate.bootstrap_intervals(same, num_samples=50)
    assert ci["mAP"] == pytest.approx([0.25, 0.25]) and ci["rank1"] == [0.0, 0.0] and ci["rank5"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="num_samples"):
        evaluate.bootstrap_intervals(same, num_samples=0)
    with pytest.raises(ValueError, match="level"):
        evaluate.bootstrap_intervals(same, level=1.0)


def test_compute_metrics_reports_intervals_when_asked():
    rng = np.random.default_rng(8)
    pids = np.concatenate([np.arange(20), np.repeat(np.arange(20), 3)])
    camids = np.concatenate([np.zeros(20, int), np.tile([1, 2, 0], 20)])
    feats = rng.normal(size=(20, 8))[pids] + rng.normal(size=(len(pids), 8))
    off = evaluate.compute_metrics(feats, pids, camids, 20, _eval_cfg())
    on = evaluate.compute_metrics(feats, pids, camids, 20, _eval_cfg(bootstrap_samples=200))
    assert "ci95" not in off
    assert {k: v for k, v in on.items() if k != "ci95"} == off  # the figures themselves do not change
    for name in evaluate.BOOTSTRAP_METRICS:
        lo, hi = on["ci95"][name]
        assert 0.0 <= lo <= on[name] <= hi <= 1.0, name
    assert on["ci95"]["mAP"][1] > on["ci95"]["mAP"][0]

    line = evaluate.summarize(on)
    assert line.startswith(f"mAP {on['mAP']:.1%}  Rank-1 {on['rank1']:.1%}  Rank-5 {on['rank5']:.1%}")
    lo, hi = on["ci95"]["rank1"]
    assert f"Rank-1 {lo:.1%}-{hi:.1%}" in line
    assert "intervals" not in evaluate.summarize(off)

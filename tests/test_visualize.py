"""tools/visualize.py: ranked lists under the evaluation protocol, drawn with match frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tmspr_jax import evaluate
from tmspr_jax.config import get_base_config
from tmspr_jax.tools import visualize as vis


def test_ranked_lists_follow_the_evaluation_protocol():
    # query 0: pid 1, camera 0. Gallery 0 is pid 1 in camera 0 (excluded); 1 and 2 tie, the first stays first.
    dist = np.array([[0.0, 0.5, 0.5, 0.2, 0.9], [0.3, 0.1, 0.2, 0.4, 0.0]])
    q_pids, q_cams = np.array([1, 7]), np.array([0, 1])
    g_pids, g_cams = np.array([1, 2, 1, 3, 5]), np.array([0, 1, 1, 1, 2])
    order, matches, first = vis.ranked_lists(dist, q_pids, g_pids, q_cams, g_cams, topk=6)
    np.testing.assert_array_equal(order[0], [3, 1, 2, 4, -1, -1])
    np.testing.assert_array_equal(matches[0], [False, False, True, False, False, False])
    np.testing.assert_array_equal(order[1], [4, 1, 2, 0, 3, -1])
    assert first.tolist() == [3, 0]  # query 1's identity is not in the gallery
    with pytest.raises(ValueError, match="topk must be >= 1"):
        vis.ranked_lists(dist, q_pids, g_pids, q_cams, g_cams, topk=0)


def test_first_match_ranks_give_eval_reids_cmc():
    rng = np.random.default_rng(4)
    nq, ng = 30, 60
    q_pids, g_pids = rng.integers(0, 12, nq), rng.integers(0, 12, ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    dist = rng.integers(0, 6, (nq, ng)).astype(np.float32)  # many ties
    _, matches, first = vis.ranked_lists(dist, q_pids, g_pids, q_cams, g_cams, topk=10)
    res = evaluate.eval_reid(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    valid = first > 0
    for k in range(1, 11):
        assert np.mean((first[valid] >= 1) & (first[valid] <= k)) == pytest.approx(res["cmc"][k - 1])
    np.testing.assert_array_equal(matches[:, 0], first == 1)


def test_rendered_row_has_the_frames_in_rank_order():
    q = np.full((20, 10, 3), 200, np.uint8)
    gallery = [np.full((30, 12, 3), v, np.uint8) for v in (10, 60, 110)]
    img = np.asarray(vis.render_ranked_list(q, gallery, [True, False, True], size=(16, 8), border=2, gap=3))
    cell = 8 + 4
    assert img.shape == (16 + 4, cell * 4 + 6, 3)
    assert tuple(img[0, 0]) == vis.QUERY and tuple(img[5, 5]) == (200, 200, 200)
    for j, (colour, value) in enumerate(zip([vis.MATCH, vis.MISMATCH, vis.MATCH], (10, 60, 110))):
        x = (j + 1) * cell + 6
        assert tuple(img[0, x]) == colour and tuple(img[8, x + 5]) == (value,) * 3
    with pytest.raises(ValueError, match="3 gallery images but 2 match flags"):
        vis.render_ranked_list(q, gallery, [True, False])


def test_hardest_order_and_written_files(tmp_path):
    assert vis.query_order(np.array([1, 4, 0, 2]), "hardest").tolist() == [1, 3, 0, 2]
    assert vis.query_order(np.array([1, 4, 0]), "index").tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="order must be 'index' or 'hardest'"):
        vis.query_order(np.array([1]), "worst")

    rng = np.random.default_rng(0)
    feats = {
        "query_features": rng.normal(size=(3, 4)),
        "gallery_features": rng.normal(size=(6, 4)),
        "query_pids": np.array([0, 1, 2]),
        "gallery_pids": np.array([0, 0, 1, 1, 2, 2]),
        "query_camids": np.zeros(3, np.int64),
        "gallery_camids": np.ones(6, np.int64),
        "query_file_names": np.array(["a.jpg", "b.jpg", "c.jpg"]),
        "gallery_file_names": np.array([f"g{i}.jpg" for i in range(6)]),
    }
    image = lambda i: np.full((16, 8, 3), 30 * i, np.uint8)
    paths = vis.visualize(
        feats, image, image, get_base_config().eval, str(tmp_path), topk=4, num_queries=2, size=(16, 8)
    )
    assert len(paths) == 2
    summary = json.loads((tmp_path / "ranks.json").read_text())
    ranks = [s["first_match_rank"] for s in summary]
    assert ranks == sorted(ranks, reverse=True) and all(len(s["top"]) == 4 for s in summary)
    assert paths[0].endswith(f"000_{summary[0]['query'][:-4]}.png")

"""tools/visualize.py --compare and --part_maps: the pictures read back (size, frame colours, order)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tiny
from tmspr_jax.config import get_base_config
from tmspr_jax.tools import extract
from tmspr_jax.tools import visualize as vis


def _features(rng, feats_q, feats_g):
    return {
        "dataset": "demo_set",
        "query_features": feats_q,
        "gallery_features": feats_g,
        "query_pids": np.array([0, 1, 2]),
        "gallery_pids": np.array([0, 0, 1, 1, 2, 2]),
        "query_camids": np.zeros(3, np.int64),
        "gallery_camids": np.ones(6, np.int64),
        "query_file_names": np.array(["a.jpg", "b.jpg", "c.jpg"]),
        "gallery_file_names": np.array([f"g{i}.jpg" for i in range(6)]),
    }


def test_alignment_and_difference_order():
    rng = np.random.default_rng(0)
    a = _features(rng, rng.normal(size=(3, 4)), rng.normal(size=(6, 4)))
    perm = [2, 0, 1]
    b = dict(
        a,
        query_features=a["query_features"][perm],
        query_pids=a["query_pids"][perm],
        query_camids=a["query_camids"][perm],
        query_file_names=a["query_file_names"][perm],
    )
    got = vis.align_features(a, b)
    np.testing.assert_array_equal(got["query_features"], a["query_features"])
    assert got["query_file_names"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(ValueError, match="query files differ .*first missing: a.jpg"):
        vis.align_features(a, dict(b, query_file_names=np.array(["x.jpg", "b.jpg", "c.jpg"])))
    with pytest.raises(ValueError, match="features of 'other'"):
        vis.align_features(a, dict(b, dataset="other"))

    ap_a, ap_b = np.array([1.0, 0.5, np.nan, 0.2]), np.array([0.9, 0.0, 0.3, 0.7])
    top = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    assert vis.difference_order(ap_a, ap_b, top, top).tolist() == [1, 3, 0, 2]
    # Equal AP differences: fewer shared top-k images first.
    order = vis.difference_order(
        np.array([0.5, 0.5]), np.array([0.0, 0.0]), np.array([[0, 1], [0, 1]]), np.array([[0, 1], [2, 3]])
    )
    assert order.tolist() == [1, 0]


def test_comparison_picture_has_both_lists_with_their_frames(tmp_path):
    rng = np.random.default_rng(1)
    g = np.eye(6, 8)
    good = _features(rng, g[[0, 2, 4]] + 0.01, g)  # each query nearest to its own identity
    bad = _features(rng, g[[0, 3, 5]] + 0.01, g)  # queries 1 and 2 nearest to another identity's image
    bad["query_features"][1] = g[4] + 0.01
    image = lambda i: np.full((16, 8, 3), 40 * i, np.uint8)
    paths = vis.compare(
        good,
        bad,
        image,
        image,
        get_base_config().eval,
        str(tmp_path),
        names=("good", "bad"),
        topk=3,
        num_queries=2,
        size=(16, 8),
    )
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert [s["query"] for s in summary] == ["b.jpg", "c.jpg"]  # the two queries that differ; a.jpg is the same
    assert summary[0]["good"]["first_match_rank"] == 1 and summary[0]["bad"]["first_match_rank"] > 1
    img = np.asarray(Image.open(paths[0]).convert("RGB"))
    cell, row_h = 8 + 8, 16 + 8 + 12
    assert img.shape == (2 * (14 + row_h) + 8, cell * 4 + 12, 3)
    for name, y in (("good", 14), ("bad", 14 + row_h + 8 + 14)):
        assert tuple(img[y, 0]) == vis.QUERY
        for r, gname in enumerate(summary[0][name]["top"]):
            colour = vis.MATCH if int(gname[1]) // 2 == 1 else vis.MISMATCH  # g2, g3 are identity 1
            assert tuple(img[y, (r + 1) * cell + 12 + 1]) == colour, (name, r)


def test_part_map_picture_frames_and_heat():
    images = [np.full((32, 16, 3), 128, np.uint8)] * 2
    att = np.zeros((2, 4, 2, 6), np.float32)
    att[:, :2, :, 1] = 1.0  # the head channel attends to the top half
    att[:, 2:, :, 4] = 1.0
    visible = np.array([[1, 0, 0, 1, 0], [0, 1, 1, 1, 1]], np.float32)
    img = np.asarray(vis.render_part_maps(images, att, visible, size=(32, 16), border=3, gap=4))
    cell_w, cell_h, text = 16 + 6, 32 + 6, 12
    assert img.shape == (text + 2 * (cell_h + text), cell_w * 7 + 8, 3)
    for b in range(2):
        y = text + b * (cell_h + text)
        assert tuple(img[y, 0]) == vis.QUERY and tuple(img[y, cell_w + 8]) == vis.BACKGROUND
        for k in range(5):
            want = vis.VISIBLE if visible[b, k] else vis.INVISIBLE
            assert tuple(img[y, (k + 2) * cell_w + 8]) == want
        head_x = cell_w + 8 + cell_w + 3 + 8
        top, bottom = img[y + 3 + 4, head_x].astype(int), img[y + 3 + 28, head_x].astype(int)
        assert top[0] > bottom[0] + 80 and bottom[2] > top[2]  # red-hot where attended, blue elsewhere
    with pytest.raises(ValueError, match="expected \\[B, gh, gw, 6\\] and \\[B, 5\\]"):
        vis.render_part_maps(images, att, visible[:1])


def test_part_maps_of_the_model_and_command_lines(tool_run, tmp_path):
    cfg, ckpt = tool_run
    query = os.path.join(cfg.data.manual_dir, "query")
    out, flags_ = vis.part_maps_to_file(cfg, ckpt, query, str(tmp_path / "pm.png"), num_images=4)
    model, variables = extract.load_model(cfg, ckpt)
    from tmspr_jax.data import views

    paths = extract.list_images(query)[1][:4]
    x = np.stack([views.eval_view(extract.read_image(p), cfg.img_size, cfg.data.mean, cfg.data.std) for p in paths])
    att, want = vis.part_maps(model, variables, x, extract.image_labels(paths)[1])
    np.testing.assert_array_equal(flags_, want)
    assert att.shape == (4, *model.grid, 6) and np.allclose(att.sum(-1), 1, atol=1e-5)
    img = np.asarray(Image.open(out).convert("RGB"))
    h, w = cfg.img_size
    assert img.shape == (12 + 4 * (h + 6 + 12), (w + 6) * 7 + 8, 3)
    for b in range(4):
        for k in range(5):
            colour = vis.VISIBLE if want[b, k] else vis.INVISIBLE
            assert tuple(img[12 + b * (h + 18), (k + 2) * (w + 6) + 8]) == colour

    # The commands: part maps, and a comparison of a features file with a reordered copy of itself.
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.visualize",
        *tiny.cli_flags(cfg),
        "--part_maps",
        f"--checkpoint={ckpt}",
        f"--images={query}",
        f"--out={tmp_path / 'pm'}",
        "--num_queries=2",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tiny.REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "part maps of 2 images" in r.stdout and (tmp_path / "pm" / "part_maps.png").exists()

    done = extract.extract_to_file(cfg, ckpt, str(tmp_path / "a" / "features.npz"))
    f = extract.load_features(done.path)
    rev = slice(None, None, -1)
    q = (f["query_features"][rev], f["query_pids"][rev], f["query_camids"][rev])
    g = (f["gallery_features"], f["gallery_pids"], f["gallery_camids"])
    other = extract.save_features(
        str(tmp_path / "b.npz"), q, g, f["query_file_names"][rev], f["gallery_file_names"], dataset=f["dataset"]
    )
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.visualize",
        *tiny.cli_flags(cfg)[:4],
        f"--features={done.path}",
        f"--compare={other}",
        f"--out={tmp_path / 'cmp'}",
        "--topk=5",
        "--num_queries=3",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tiny.REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 comparisons (a above b)" in r.stdout
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert all(s["a"]["top"] == s["b"]["top"] for s in summary)  # the same features, in another order

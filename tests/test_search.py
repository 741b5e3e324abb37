"""tools/search.py: ranked gallery per query with the evaluation's distances, a gallery cache keyed on the checkpoint
and the files, strips read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tiny
from tmspr_jax import evaluate
from tmspr_jax.config import get_base_config
from tmspr_jax.tools import extract, search, visualize


def test_index_ranks_as_the_evaluation_distances():
    rng = np.random.default_rng(0)
    g, q = rng.normal(size=(50, 16)), rng.normal(size=(4, 16))
    index = search.GalleryIndex(g)
    dist, idx = index.search(q, 7)
    want = evaluate.distance_matrix(q, g, get_base_config().eval)
    np.testing.assert_array_equal(idx, np.argsort(want, axis=1)[:, :7])
    np.testing.assert_allclose(dist, np.sort(want, axis=1)[:, :7], rtol=1e-4, atol=1e-5)
    assert index.search(q, 500)[1].shape == (4, 50)  # k clipped to the gallery
    raw = search.GalleryIndex(g, feat_norm=False).search(q, 3)[0]
    np.testing.assert_allclose(raw, np.sort(evaluate.pairwise_distances(q, g), axis=1)[:, :3], rtol=1e-4)
    with pytest.raises(ValueError, match=r"queries must be \[Q, 16\]"):
        index.search(q[:, :5], 3)


def test_search_cache_strips_and_json(tool_run, tmp_path):
    cfg, ckpt = tool_run
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    src = os.path.join(cfg.data.manual_dir, "bounding_box_test")
    for name in sorted(os.listdir(src)):
        (gallery / name).write_bytes(open(os.path.join(src, name), "rb").read())
    query = os.path.join(cfg.data.manual_dir, "query")
    out = tmp_path / "out"
    g, _, _, pngs = search.search_to_dir(cfg, ckpt, str(gallery), query, str(out), topk=5)
    assert not g.reused and len(pngs) == 6 and len(g.paths) == 18
    caches = list((gallery / search.CACHE_DIR).glob("*.npz"))
    assert len(caches) == 1

    # The JSON lists the evaluation's ranking of the extracted features.
    results = json.loads((out / "results.json").read_text())
    q = extract.extract_images(*extract.load_model(cfg, ckpt), extract.list_images(query)[1], cfg)
    dist = evaluate.distance_matrix(q.features, g.features, cfg.eval)
    for i, r in enumerate(results):
        assert r["query"] == q.paths[i] and len(r["results"]) == 5
        want = [os.path.basename(g.paths[j]) for j in np.argsort(dist[i], kind="stable")[:5]]
        assert [x["file"] for x in r["results"]] == want
        np.testing.assert_allclose([x["distance"] for x in r["results"]], np.sort(dist[i])[:5], rtol=1e-4, atol=1e-5)

    # The strip read back: its size, the query's grey frame and each result's frame by identity (release names).
    strip = np.asarray(Image.open(pngs[0]).convert("RGB"))
    h, w = cfg.img_size
    cell_w = w + 8
    assert strip.shape == (h + 8 + 12, cell_w * 6 + 12, 3)
    assert tuple(strip[0, 0]) == visualize.QUERY
    qpid = extract.parse_release_name(q.paths[0])[0]
    for r, item in enumerate(results[0]["results"]):
        colour = visualize.MATCH if extract.parse_release_name(item["file"])[0] == qpid else visualize.MISMATCH
        assert tuple(strip[1, (r + 1) * cell_w + 12 + 1]) == colour

    # Unchanged checkpoint and files: the cache is reused; a changed gallery file or checkpoint recomputes.
    g2, *_ = search.search_to_dir(cfg, ckpt, str(gallery), query, str(tmp_path / "out2"), topk=5)
    assert g2.reused and json.loads((tmp_path / "out2" / "results.json").read_text()) == results
    first = gallery / sorted(n for n in os.listdir(gallery) if n.endswith(".jpg"))[0]
    os.utime(first, ns=(os.stat(first).st_atime_ns, os.stat(first).st_mtime_ns + 10**9))
    assert not search.gallery_features(cfg, ckpt, str(gallery)).reused
    assert search.gallery_features(cfg, ckpt, str(gallery)).reused
    key = search.model_key(cfg, ckpt, camid=0, parse_names=True, batch_size=cfg.data.test_batch_size)
    meta = os.path.join(ckpt, "meta.json")
    st = os.stat(meta)
    try:
        os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert search.model_key(cfg, ckpt, camid=0, parse_names=True, batch_size=cfg.data.test_batch_size) != key
    finally:
        os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns))

    # A query taken from the gallery is not its own first result.
    own = search.search_to_dir(cfg, ckpt, str(gallery), str(first), str(tmp_path / "own"), topk=3)[3]
    listed = json.loads((tmp_path / "own" / "results.json").read_text())[0]["results"]
    assert len(own) == 1 and first.name not in [x["file"] for x in listed] and len(listed) == 3


def test_command_line_search_and_benchmark(tool_run, tmp_path):
    cfg, ckpt = tool_run
    gallery = os.path.join(cfg.data.manual_dir, "bounding_box_test")
    query = sorted(os.listdir(os.path.join(cfg.data.manual_dir, "query")))[0]
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.search",
        *tiny.cli_flags(cfg),
        f"--checkpoint={ckpt}",
        f"--gallery={gallery}",
        f"--query={os.path.join(cfg.data.manual_dir, 'query', query)}",
        f"--out={tmp_path / 'o'}",
        "--topk=4",
        f"--cache={tmp_path / 'c.npz'}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tiny.REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 queries ranked against 18 gallery images (features extracted and cached)" in r.stdout
    listed = json.loads((tmp_path / "o" / "results.json").read_text())[0]["results"]
    assert (tmp_path / "c.npz").exists() and len(listed) == 4
    r = subprocess.run(
        [sys.executable, "-m", "tmspr_jax.tools.search", "--benchmark=2000", "--benchmark_dim=64"],
        capture_output=True,
        text=True,
        cwd=tiny.REPO,
        timeout=300,
    )
    assert r.returncode == 0 and "gallery 2000 x 64 float32" in r.stdout and "one query:" in r.stdout, r.stderr[-2000:]
    r = subprocess.run(
        cmd[:-5] + [f"--gallery={tmp_path / 'none'}", "--query=x.jpg", "--out=o"],
        capture_output=True,
        text=True,
        cwd=tiny.REPO,
        timeout=300,
    )
    assert r.returncode == 1 and "error: --images" in r.stderr.strip().splitlines()[-1]


def test_topk_below_one_is_refused_whether_or_not_the_queries_are_in_the_gallery(tmp_path):
    feats = np.eye(3, 4, dtype=np.float32)
    index = search.GalleryIndex(feats)
    paths = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    gallery = search.Gallery(feats, np.arange(3), np.zeros(3, np.int64), paths, str(tmp_path), False)
    for query_paths in (paths[:1], [str(tmp_path / "elsewhere.jpg")]):
        queries = extract.Images(feats[:1], np.zeros(1, np.int64), np.zeros(1, np.int64), query_paths)
        with pytest.raises(ValueError, match=r"--topk=0: expected at least 1"):
            search.rank_queries(index, gallery, queries, 0)
    out = subprocess.run(
        [sys.executable, "-m", "tmspr_jax.tools.search", "--topk=0", "--benchmark=8"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1 and len(errors) == 1 and "--topk=0" in errors[0], out.stderr

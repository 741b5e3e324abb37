"""tools/search.py's output folder: a search into a used --out removes the previous search's strips (those its
results.json lists) and nothing else; --out of the wrong kind is refused before any work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tmspr_jax.config import demo_config
from tmspr_jax.tools import extract, search


def _images(folder, names):
    os.makedirs(folder, exist_ok=True)
    for i, n in enumerate(names):
        Image.fromarray(np.full((16, 8, 3), 40 * i, np.uint8)).save(os.path.join(folder, n))
    return [os.path.join(folder, n) for n in names]


def _search(out, tmp_path, queries):
    paths = _images(tmp_path / "gallery", ["g0.jpg", "g1.jpg"])
    gallery = search.Gallery(np.zeros((2, 4)), np.full(2, -1), np.zeros(2), paths, str(tmp_path / "gallery"), False)
    qpaths = _images(tmp_path / "query", queries)
    q = extract.Images(np.zeros((len(qpaths), 4)), np.full(len(qpaths), -1), np.zeros(len(qpaths)), qpaths)
    return search.write_results(str(out), gallery, q, [[(0, 0.5), (1, 0.7)]] * len(qpaths), size=(16, 8))


def test_a_used_out_keeps_only_the_new_searchs_strips(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.png").write_bytes(b"the user's own file")
    first = _search(out, tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    assert [os.path.basename(p) for p in first] == ["000_a.png", "001_b.png", "002_c.png"]
    second = _search(out, tmp_path, ["z.jpg"])
    assert sorted(os.listdir(out)) == ["000_z.png", "notes.png", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert [r["strip"] for r in results] == [os.path.basename(p) for p in second] == ["000_z.png"]


def test_a_results_json_without_strip_names_still_names_its_strips(tmp_path):
    out = tmp_path / "out"
    _search(out, tmp_path, ["a.jpg", "b.jpg"])
    results = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "strip"} for r in results]))
    assert sorted(os.path.basename(p) for p in search.remove_previous_strips(str(out))) == ["000_a.png", "001_b.png"]


def test_out_of_the_wrong_kind_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; expected a folder"):  # the checkpoint is never looked for
        search.search_to_dir(
            demo_config(), str(tmp_path / "none"), str(tmp_path), str(tmp_path), str(tmp_path / "file")
        )


@pytest.mark.parametrize("where", ["gallery", "gallery/sub", "query"])
def test_out_inside_the_gallery_or_query_folder_is_refused(tmp_path, where):
    _images(tmp_path / "gallery", ["g0.jpg"])
    _images(tmp_path / "query", ["q0.jpg"])
    with pytest.raises(ValueError, match=f"is inside --{where.split('/')[0]} "):
        search.search_to_dir(
            demo_config(),
            str(tmp_path / "none"),
            str(tmp_path / "gallery"),
            str(tmp_path / "query"),
            str(tmp_path / where),
        )

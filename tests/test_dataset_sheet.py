"""tools/dataset_sheet.py: one tile per identity, read back from the JPEG (size, frames, each identity's colour)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tiny
from tmspr_jax.tools import dataset_sheet as ds

PIDS = (1, 2, 5, 7, 11, 60, 61)


def _colour(pid: int) -> tuple[int, int, int]:
    return (37 * pid % 200 + 30, 91 * pid % 200 + 30, 53 * pid % 200 + 30)


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """A Partial-REID release whose images are one flat colour per identity (2 per identity, 2 in the query)."""
    root = tmp_path_factory.mktemp("partial")
    for sub in ("partial_body_images", "whole_body_images"):
        (root / "Partial_REID" / sub).mkdir(parents=True)
        for pid in PIDS:
            for n in (1, 2):
                shade = 0 if n == 1 else 40  # the first image is the identity's colour, the second darker
                img = np.clip(np.full((40, 20, 3), _colour(pid)) - shade, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / "Partial_REID" / sub / f"{pid:03d}_{n:02d}.jpg", quality=95)
    return root


def test_render_sheet_grid_and_errors():
    assert ds.auto_columns(60, (128, 64)) == 13 and ds.auto_columns(1, (128, 64)) == 1
    assert ds.first_per_identity([5, 3, 5, 3, 9])[0].tolist() == [3, 5, 9]
    assert ds.first_per_identity([5, 3, 5, 3, 9])[1].tolist() == [1, 0, 4]
    img = np.asarray(ds.render_sheet([np.zeros((8, 4, 3), np.uint8)] * 5, "t", tile=(20, 10), columns=2, border=2))
    assert img.shape == (16 + 3 * 24, max(2 * 14, 6 + 4), 3)
    with pytest.raises(ValueError, match="no images"):
        ds.render_sheet([], "t")


def test_sheet_has_one_tile_per_identity(partial, tmp_path):
    out, stats = ds.sheet_to_file(
        "partial_reid",
        "query",
        str(tmp_path / "tfds"),
        str(tmp_path / "s.jpg"),
        manual_dir=str(partial),
        tile=(40, 20),
        columns=3,
    )
    assert stats == {"ids": 7, "images": 14, "cameras": 1}
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    cell_w, cell_h = 20 + 4, 40 + 4 + 12
    assert img.shape == (
        16 + math.ceil(7 / 3) * cell_h,
        max(3 * cell_w, 6 * len("partial_reid query: 7 identities, 14 images, 1 cameras") + 4),
        3,
    )
    for i, pid in enumerate(PIDS):
        x, y = (i % 3) * cell_w, 16 + (i // 3) * cell_h
        assert np.abs(img[y + 22, x + 12] - _colour(pid)).max() < 12, pid  # the identity's first image, once each
        assert np.abs(img[y, x + 12] - ds.FRAME).max() < 30  # its frame
    assert np.abs(img[16 + 2 * cell_h + 22, 1 * cell_w + 12] - 255).max() < 12  # no tile after the 7th

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tmspr_jax.tools.dataset_sheet",
            "--dataset=partial_reid",
            "--split=gallery",
            f"--out={tmp_path / 'g.jpg'}",
            f"--data_dir={tmp_path / 'tfds'}",
            "--tile=40,20",
            "--max_ids=4",
        ],
        capture_output=True,
        text=True,
        cwd=tiny.REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "partial_reid gallery: 7 identities, 14 images, 1 cameras; 4 tiles written" in r.stdout
    assert Image.open(tmp_path / "g.jpg").size[1] == 16 + 56  # 4 tiles in one row
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tmspr_jax.tools.dataset_sheet",
            "--dataset=occluded_duke",
            f"--out={tmp_path / 'x.jpg'}",
            f"--data_dir={tmp_path / 'none'}",
        ],
        capture_output=True,
        text=True,
        cwd=tiny.REPO,
        timeout=300,
    )
    assert r.returncode == 1 and "error: Dataset 'occluded_duke' is not prepared" in r.stderr, r.stderr[-2000:]

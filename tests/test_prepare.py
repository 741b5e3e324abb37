"""The prepare CLI: table and --json statistics from a real build, run as a subprocess; bad input exits cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fixtures

REPO = Path(__file__).resolve().parents[1]


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tmspr_jax.tools.prepare", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_prepare_json_counts_market_then_partial(tmp_path):
    market = fixtures.make_market1501(tmp_path / "market")
    out = run_prepare(
        "--dataset",
        "market1501",
        "--manual_dir",
        str(market.manual_dir),
        "--data_dir",
        str(tmp_path / "tfds"),
        "--json",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats == {s: market.stats(s) for s in ("train", "query", "gallery")}
    assert "subset   | # ids | # images | # cameras" in out.stdout
    assert "Dropped junk images" in out.stdout and "'train': 1" in out.stdout

    # A test-only dataset: train is null.
    partial = fixtures.make_partial_reid(tmp_path / "partial")
    out = run_prepare(
        "--dataset",
        "partial_reid",
        "--manual_dir",
        str(partial.manual_dir),
        "--data_dir",
        str(tmp_path / "tfds"),
        "--json",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats == {"train": None, "query": partial.stats("query"), "gallery": partial.stats("gallery")}


def test_prepare_bad_input_exits_with_path(tmp_path):
    fixtures.make_partial_reid(tmp_path / "raw")
    bad = tmp_path / "raw" / "Partial_REID" / "partial_body_images" / "001_03.jpg"
    bad.write_bytes(b"broken")
    out = run_prepare(
        "--dataset", "partial_reid", "--manual_dir", str(tmp_path / "raw"), "--data_dir", str(tmp_path / "tfds")
    )
    assert out.returncode != 0
    assert str(bad) in out.stderr and "Traceback" not in out.stderr

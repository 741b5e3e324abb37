"""tools/benchmark_eval.py: its baselines compute the same metrics as eval_reid; a small run prints every row."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from tmspr_jax import evaluate
from tmspr_jax.tools import benchmark_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_defines_no_flags():
    assert "large_gallery" not in flags.FLAGS and "torchreid_queries" not in flags.FLAGS


@pytest.mark.parametrize("kind", ["random", "features"])
def test_baselines_agree_with_eval_reid(kind):
    args = benchmark_eval.make_problem(40, 300, 30, 12, 4, kind, seed=1)
    ours = evaluate.eval_reid(*args, max_rank=20)
    for res in (
        benchmark_eval.stable_sort_eval(*args, max_rank=20, chunk=1000),
        benchmark_eval.transreid_eval(*args, max_rank=20),
        benchmark_eval.transreid_eval(*args, max_rank=20, list_precision=True),
    ):
        np.testing.assert_allclose(res["cmc"], ours["cmc"], atol=1e-6)
        assert res["mAP"] == pytest.approx(ours["mAP"], rel=1e-9)
    assert benchmark_eval.stable_sort_eval(*args, max_rank=20)["mINP"] == pytest.approx(ours["mINP"], rel=1e-9)
    # the "features" problem ranks true matches first far more often than chance
    assert (ours["mAP"] > 0.5) == (kind == "features")


def test_small_run_prints_every_implementation():
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.benchmark_eval",
        "--num_query=60",
        "--num_gallery=500",
        "--gallery_ids=40",
        "--query_ids=20",
        "--repeats=1",
        "--torchreid_queries=5",
        "--large_query=20",
        "--large_gallery=2000",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("eval_reid (this project)", "NumPy stable sort (before)", "TransReID eval_func", "torchreid-style"):
        lines = [line for line in r.stdout.splitlines() if line.startswith(name)]
        assert len(lines) == (3 if name.startswith(("eval_reid", "NumPy")) else 2), r.stdout
        for line in lines:
            assert all(float(v) > 0 for v in re.findall(r"\d+\.\d+", line)), line
    assert "peak extra MB" in r.stdout


def test_bad_flag_is_one_line():
    cmd = [sys.executable, "-m", "tmspr_jax.tools.benchmark_eval", "--distances=sorted", "--large_gallery=0"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "error: --distances: unknown kind 'sorted'" in r.stderr

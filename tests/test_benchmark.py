"""tools/benchmark.py: importable without defining flags; a tiny run times both sides of a model that agrees."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_defines_no_flags():
    from tmspr_jax.tools import benchmark

    assert "skip_torch" not in flags.FLAGS and "iters" not in flags.FLAGS
    assert callable(benchmark.define_flags)


def test_tiny_run_prints_both_sides_and_their_agreement():
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.benchmark",
        "--depth=2",
        "--embed_dim=32",
        "--num_heads=2",
        "--img_size=64x32",
        "--batch=2",
        "--iters=1",
        "--warmup=0",
        "--num_classes=5",
        "--num_cameras=2",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rel = float(re.search(r"max \|JAX - PyTorch\| / max \|PyTorch\| = (\S+)", r.stdout).group(1))
    assert rel < 1e-4, r.stdout
    for row in ("eval (test feature)", "train step (fwd+bwd+SGD)"):
        line = next(line for line in r.stdout.splitlines() if line.startswith(row))
        assert len(re.findall(r"\d+\.\d+", line)) == 5, line  # JAX ms, img/s, PyTorch ms, img/s, ratio

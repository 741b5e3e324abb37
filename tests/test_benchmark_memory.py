"""tmspr_jax.tools.benchmark_memory: the saved-residual measure, each memory mode's budget, the bound against the
reference's graph at ViT-B and the command. Traced only (no XLA program runs), so the figures are the same on every
machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from tmspr_jax.config import get_base_config
from tmspr_jax.tools import benchmark_memory as bm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2**20


def _vit_like(**model):
    """ViT-B's per-block proportions (head width 64, 256x128 images, stride 11: 243 tokens) at width 192, depth 4."""
    cfg = get_base_config()
    cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads = 192, 4, 3
    return bm.with_model(cfg, **model)


def test_saved_residuals_counts_what_autodiff_keeps_and_not_the_arguments():
    a = jnp.ones((8, 16), jnp.float32)
    # the product's backward needs only the arguments themselves: nothing is counted
    assert bm.saved_residuals(lambda x, y: jnp.sum(x * y), a, a) == []
    # exp keeps its output, once, though two terms use it
    res = bm.saved_residuals(lambda x: jnp.sum(jnp.exp(x)) + jnp.sum(2.0 * jnp.exp(x) ** 2), a)
    assert sum(r.nbytes for r in res) >= a.nbytes
    assert all(r.shape == (8, 16) for r in res)
    half = bm.saved_residuals(lambda x: jnp.sum(jnp.exp(x.astype(jnp.bfloat16))), a)
    assert [(r.dtype, r.nbytes) for r in half] == [("bfloat16", a.nbytes // 2)]


def test_slope_separates_per_sample_from_fixed():
    kept = bm.slope(lambda b: 100 + 7 * b)
    assert (kept.per_sample, kept.fixed, kept.at(32)) == (7, 100, 100 + 7 * 32)


# What each memory mode may keep per 4-view sample of the ViT-like model above (measured 67 / 24 / 5.0 MiB in float32
# and 41 / 14 / 4.3 MiB in bfloat16; about 25% headroom, so that a change that doubles a mode's memory fails).
BUDGETS_MIB = {
    ("none", "float32"): 85,
    ("dots", "float32"): 30,
    ("block", "float32"): 6.5,
    ("none", "bfloat16"): 52,
    ("dots", "bfloat16"): 18,
    ("block", "bfloat16"): 5.5,
}


@pytest.mark.parametrize("mode, dtype", list(BUDGETS_MIB))
def test_each_memory_mode_keeps_under_its_budget(mode, dtype):
    kept = bm.jax_kept(_vit_like(remat=mode, dtype=dtype), num_classes=50, num_cameras=4)
    assert kept.per_sample / MIB < BUDGETS_MIB[mode, dtype]


def test_the_modes_order_and_bfloat16_keeps_less():
    kept = {
        (m, d): bm.jax_kept(_vit_like(remat=m, dtype=d), 50, 4).per_sample
        for m in ("none", "dots", "block")
        for d in ("float32", "bfloat16")
    }
    for d in ("float32", "bfloat16"):
        assert kept["none", d] > 2 * kept["dots", d] and kept["dots", d] > 3 * kept["block", d]
    for m in ("none", "dots"):
        assert kept[m, "bfloat16"] < 0.7 * kept[m, "float32"]


@pytest.mark.slow
def test_vit_b_keeps_at_most_0_4_of_the_reference_and_fits_16_gb():
    """The paper's model (configs/occ_duke.py's geometry) against the PyTorch oracle's graph, in float32 and bfloat16
    autocast: the default mode keeps at most 0.4x the reference's bytes per sample, whole-block rematerialisation
    at most 50 MiB, and the paper's batch of 32 fits a 16 GB card by the estimate."""
    pytest.importorskip("torch")
    cfg = get_base_config()
    assert cfg.model.remat == "dots"
    report = bm.measure(cfg, ["float32", "bfloat16"], ["none", "dots", "block"], 32, 702, 8)
    rows = {(r["mode"], r["dtype"]): r for r in report["rows"]}
    for dtype in ("float32", "bfloat16"):
        assert rows["dots", dtype]["ratio"] <= 0.4
        assert rows["dots", dtype]["estimate_gib"] < 16 * 1e9 / 2**30
        assert rows["block", dtype]["per_sample_mib"] <= 50
        assert rows["none", dtype]["ratio"] > 1.0  # the measure sees what 'none' keeps beyond the reference
    # the reference's own figures: float32 about 790 MiB per sample, autocast about 440 MiB
    assert 700 < rows["dots", "float32"]["reference_per_sample_mib"] < 900
    assert 380 < rows["dots", "bfloat16"]["reference_per_sample_mib"] < 520


def test_command_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "memory.json"
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.benchmark_memory",
        "--config=configs/demo.py",
        "--skip_torch",
        "--modes=none,dots",
        "--dtypes=float32",
        "--batch=16",
        f"--out={out}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| `dots` | float32 |" in r.stdout and "estimate at batch 16" in r.stdout
    report = json.loads(out.read_text())
    rows = {r["mode"]: r for r in report["rows"]}
    assert rows["none"]["per_sample_mib"] > rows["dots"]["per_sample_mib"] > 0
    assert rows["dots"]["reference_per_sample_mib"] is None
    s = report["state_mib"]
    want = rows["dots"]["fixed_mib"] + 16 * rows["dots"]["per_sample_mib"]
    want += 2 * s["params"] + s["batch_stats"] + s["optimizer"] + 16 * s["batch_per_sample"]
    assert abs(rows["dots"]["estimate_gib"] * 1024 - want) < 1e-6 * want


def test_command_refuses_an_unknown_mode():
    cmd = [sys.executable, "-m", "tmspr_jax.tools.benchmark_memory", "--skip_torch", "--modes=dots,all"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode != 0
    assert "'all' is not a memory mode" in r.stderr
    assert "Traceback" not in r.stderr

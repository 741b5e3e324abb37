"""tools/benchmark_gpu.py: the whole command on the CPU with a tiny model writes a complete, sane JSON and table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from absl import flags

from tmspr_jax.tools import benchmark_gpu, benchmark_gpu_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_defines_no_flags():
    assert "tiny" not in flags.FLAGS and "data_workers" not in flags.FLAGS


@pytest.mark.parametrize(
    "kind,name,bf16",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
        ("NVIDIA H200", "H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA L4", "L4", 121.0),
        ("NVIDIA L40S", "L40S", 362.1),
        ("Tesla V100-SXM2-16GB", "V100", None),
        ("TPU v4", "TPU v4", 275.0),
    ],
)
def test_peak_table_matches_device_kinds(kind, name, bf16):
    assert benchmark_gpu.peak_tflops(kind)[:2] == (name, bf16)


def test_peak_unknown_and_utilisation():
    assert benchmark_gpu.peak_tflops("cpu") is None
    assert benchmark_gpu.utilisation(1e12, 0.01, None) is None
    assert benchmark_gpu.utilisation(None, 0.01, 989.4) is None
    assert benchmark_gpu.utilisation(5e12, 0.01, 1000.0) == pytest.approx(0.5)


def test_goals_read_the_figures():
    res = {
        "settings": {"tiny": False},
        "train": {"bfloat16": {"mfu": 0.55}},
        "ratios": {"train_bfloat16": 2.5},
        "eval": {},
    }
    assert list(benchmark_gpu_report.goals(res).values()) == [True, False, None]
    assert set(benchmark_gpu_report.goals(dict(res, settings={"tiny": True})).values()) == {None}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_run_on_cpu_writes_every_field(tmp_path):
    out, table, prof = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "trace"
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.benchmark_gpu",
        "--tiny",
        "--dtypes=bfloat16",
        "--data_workers=0",
        "--throughput_batch=16",
        f"--out={out}",
        f"--table={table}",
        f"--profile={prof}",
    ]
    # XLA's LLVM optimisation level 0: the same program, compiled in about half the time (compilation dominates here)
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip())
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["errors"] == {} and res["settings"]["tiny"] is True and _positive(res["wall_s"])
    # every measurement in a process of its own (its own peak device memory), none in the parent
    pids = [res[k]["pid"] for k in ("memory", "matmul_bf16", "torch", "data")]
    pids += [res[k]["bfloat16"]["pid"] for k in ("train", "eval", "throughput")]
    assert len(set(pids)) == len(pids) == 7
    mem = res["memory"]
    assert mem["mode"] == "dots" and _positive(mem["bfloat16"]["kept_per_sample_mib"])
    est = mem["bfloat16"]["estimate_gib"]
    assert est["8"] < est["16"] < est["64"]  # the training batch, the throughput batch and a candidate
    thr = res["throughput"]["bfloat16"]
    assert thr["batch"] == 16 and _positive(thr["samples_per_s"]) and res["settings"]["train_batch"] == 8
    assert res["device"]["platform"] == "cpu" and res["device"]["peak_tflops"] is None
    assert _positive(res["matmul_bf16"]["tflops"]) and res["matmul_bf16"]["fraction_of_peak"] is None
    train, ev = res["train"]["bfloat16"], res["eval"]["bfloat16"]
    for key in ("compile_s", "step_s", "samples_per_s", "flops_per_step", "tflops", "xla_bytes"):
        assert _positive(train[key]), (key, train)
    for key in ("compile_s", "batch_s", "images_per_s", "flops_per_batch", "tflops", "xla_bytes"):
        assert _positive(ev[key]), (key, ev)
    assert train["samples_per_s"] == pytest.approx(res["settings"]["train_batch"] / train["step_s"])
    # No peak is known for a CPU, and the CPU reports no device memory statistics.
    assert train["mfu"] is None and ev["mfu"] is None and train["peak_bytes_in_use"] is None
    assert train["profile_error"] is None and ev["profile_error"] is None
    assert train["attention"] == ev["attention"] == "xla" and train["memory_mode"] == "dots"
    assert math.isfinite(train["loss"]) and train["loss"] > 0 and ev["feature_dim"] == 10 * 32
    torch_res = res["torch"]
    assert _positive(torch_res["train"]["samples_per_s"]) and _positive(torch_res["eval"]["images_per_s"])
    assert torch_res["amp_dtype"] is None  # no autocast on a CPU
    torch_rate = torch_res["train"]["samples_per_s"]
    assert res["ratios"]["train_bfloat16"] == pytest.approx(train["samples_per_s"] / torch_rate)
    assert res["ratios"]["eval_bfloat16"] == pytest.approx(ev["images_per_s"] / torch_res["eval"]["images_per_s"])
    assert res["data"]["workers"] == 0 and _positive(res["data"]["samples_per_s"])
    assert len(res["goals"]) == 3 and set(res["goals"].values()) == {None}  # goals are for ViT-B on a GPU
    # the trace for TensorBoard's profile plugin
    assert any(name.endswith(".xplane.pb") for _, _, files in os.walk(prof) for name in files)
    md = table.read_text()
    assert "| training step, batch 8 x 4 views: samples/s |" in md and "| JAX bfloat16 | PyTorch float32 |" in md
    assert "| training step, batch 16 (throughput): samples/s, device peak GiB |" in md
    assert "| kept for the backward pass per sample, MiB (memory mode 'dots') |" in md
    assert md in r.stdout


def test_bad_flag_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "tmspr_jax.tools.benchmark_gpu", "--train_batch=10", f"--out={tmp_path / 'b.json'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "error: --train_batch=10: expected a positive multiple of 4" in r.stderr


def test_throughput_batch_is_the_largest_that_fits():
    s = {"train_batch": 32, "throughput_batch": -1}
    gib = 2**30
    memory = {"bfloat16": {"estimate_gib": {"32": 8.0, "64": 14.0, "128": 26.0, "256": 50.0}}}
    assert benchmark_gpu.throughput_batch(s, memory, "bfloat16", 80 * gib) == 256
    assert benchmark_gpu.throughput_batch(s, memory, "bfloat16", 40 * gib) == 128  # 50 > 0.85 * 40
    assert benchmark_gpu.throughput_batch(s, memory, "bfloat16", 16 * gib) == 0  # 14 > 0.85 * 16: none fits
    assert benchmark_gpu.throughput_batch(s, memory, "bfloat16", None) == 0  # no memory figure (a CPU)
    assert benchmark_gpu.throughput_batch(dict(s, throughput_batch=96), memory, "bfloat16", None) == 96

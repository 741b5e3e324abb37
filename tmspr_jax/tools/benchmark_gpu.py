r"""One command for a GPU (or TPU): training and test-feature speed, FLOP utilisation, memory, the PyTorch oracle with
automatic mixed precision side by side, and the input pipeline, written to one JSON and a markdown table.

    python -m tmspr_jax.tools.benchmark_gpu [--out=benchmark_gpu.json] [--table=benchmark_gpu.md] [--profile=DIR]
        [--tiny] [--dtypes=float32,bfloat16] [--train_batch=32] [--throughput_batch=-1] [--eval_batch=256]
        [--steps=20] [--skip_torch] [--data_workers=-1]

At the base config (ViT-B/16, 256x128, stride 11, Occluded-Duke's 702 classes and 8 cameras; the config's memory mode
``model.remat``, 'dots' by default) it measures:

* what the training step keeps for its backward pass (``tools.benchmark_memory``: bytes per sample, and the estimate
  at each batch of parameters, gradients, optimiser state and kept bytes), per compute dtype;
* the real training step at the paper's batch (``--train_batch``, 32 samples of 4 views, P x 4 identities):
  ``train.make_train_step`` (the full T-MSPR loss), the reference's optimiser (``optim.make_optimizer``), the state
  donated, per compute dtype: step time, samples/s, XLA's FLOP count of the compiled step (``cost_analysis``), the
  model FLOP utilisation against the device's peak (a table by ``device_kind``; float32 against the TF32 tensor-core
  peak, which XLA's default matmul precision uses on Ampere and newer), XLA's memory plan, the device's peak bytes in
  use and the attention implementation (``models.vit.attention_implementation``: cuDNN's fused kernel for 16-bit on
  NVIDIA GPUs, else XLA);
* for throughput only, the training step at a larger batch (``--throughput_batch``; -1: the largest of 64, 128, 256
  whose memory estimate fits 85% of the device's memory; 0: none) in bfloat16;
* the test feature (``TMSPR.extract``) at ``--eval_batch`` images: images/s and the same figures;
* a bfloat16 matmul's measured rate, as a sanity check of the peak table;
* the PyTorch oracle (``tmspr_jax.oracles.tmspr``, same weights) with ``torch.autocast``: float16 and a GradScaler on
  CUDA, as the reference trains (float32 on a CPU). Its training step uses the reference's loss formulas
  (``tmspr_jax.oracles.losses``) and SGD; its test feature runs the reference's four-view graph;
* the input pipeline (``tools/benchmark_data``'s in-memory JPEG split, four views, parsing targets) with
  ``--data_workers`` processes (-1 = the host's cores less one).

Each measurement runs in a process of its own, so the device's peak bytes in use (which only grow within a process)
and PyTorch's allocator belong to that measurement alone. ``--profile=DIR`` writes a ``jax.profiler`` trace of a few
bfloat16 (else float32) training steps and test batches (``tensorboard --logdir DIR``, profile plugin). ``--tiny``
runs the same code on a tiny model and small batches (CPU tests). Each timing runs ``--warmup`` untimed steps then
``--steps`` timed ones back to back (dispatch overlaps, as in training). FLOPs are XLA's cost analysis of the
compiled program, which does not count custom calls (such as a fused cuDNN attention kernel): where attention runs
fused, the FLOP counts and utilisations are lower bounds.

Most of the time goes into compiling; each stage prints its duration. The JSON and the table are rewritten after every
stage, so a run cut short keeps what it measured, and a failed stage is recorded under ``errors`` (exit status 1)
without losing the others.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from tmspr_jax import optim
from tmspr_jax.config import get_base_config
from tmspr_jax.models.attention import attention_implementation
from tmspr_jax.models.vit import compute_dtype
from tmspr_jax.tools import benchmark_memory, cli
from tmspr_jax.tools.benchmark_gpu_report import goals, markdown_table, write_report
from tmspr_jax.tools.timing import back_to_back, time_calls
from tmspr_jax.train import TrainState, make_train_step

FLAGS = flags.FLAGS

# Dense peak FLOP/s (no sparsity) by device kind, in TFLOP/s: (bfloat16, float32 matmuls at XLA's default precision =
# TF32 tensor cores where the chip has them, else plain FP32). Matched on jax.devices()[0].device_kind, lower case, in
# this order (the first pattern whose words all occur wins). None = no such tensor cores.
PEAK_TFLOPS: tuple[tuple[tuple[str, ...], str, float | None, float], ...] = (
    (("h200", "nvl"), "H200 NVL", 835.5, 417.5),
    (("h200",), "H200", 989.4, 494.7),
    (("h100", "pcie"), "H100 PCIe", 756.5, 378.0),
    (("h100", "nvl"), "H100 NVL", 835.5, 417.5),
    (("h100",), "H100 SXM", 989.4, 494.7),
    (("b200",), "B200", 2250.0, 1100.0),
    (("a100",), "A100", 312.0, 156.0),
    (("l40s",), "L40S", 362.1, 183.0),
    (("l40",), "L40", 181.0, 90.5),
    (("l4",), "L4", 121.0, 60.0),
    (("v100",), "V100", None, 15.7),
    (("t4",), "T4", None, 8.1),
    (("tpu", "v6"), "TPU v6e", 918.0, 918.0),
    (("tpu", "v5p"), "TPU v5p", 459.0, 459.0),
    (("tpu", "v5"), "TPU v5e", 197.0, 197.0),
    (("tpu", "v4"), "TPU v4", 275.0, 275.0),
)


def define_flags() -> None:
    """The command line's flags (defined only when run as a program, so that importing this module defines none)."""
    flags.DEFINE_string("out", "benchmark_gpu.json", "JSON written with every figure.")
    flags.DEFINE_string("table", None, "Markdown table written here too (default: --out with .md).")
    flags.DEFINE_string("profile", None, "Folder for a jax.profiler trace of a few training steps and test batches.")
    flags.DEFINE_bool("tiny", False, "A tiny model and small batches (runs in a minute on a CPU; for tests).")
    flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes of the JAX model.")
    flags.DEFINE_integer(
        "train_batch", 32, "Samples (of 4 views) per training step, a multiple of 4 (the paper's IMS_PER_BATCH: 32)."
    )
    flags.DEFINE_integer(
        "throughput_batch",
        -1,
        "A larger training batch, timed for throughput only in bfloat16 (-1: the largest of 64, 128, 256 whose memory "
        "estimate fits 85%% of the device; 0: none).",
    )
    flags.DEFINE_integer("eval_batch", 256, "Images per test-feature batch.")
    flags.DEFINE_integer("steps", 20, "Timed steps / batches per measurement.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps / batches before timing (after compilation).")
    flags.DEFINE_integer("num_classes", 702, "Classifier width (Occluded-Duke: 702).")
    flags.DEFINE_integer("num_cameras", 8, "Camera-embedding rows (Occluded-Duke: 8).")
    flags.DEFINE_integer("matmul_n", 8192, "Size of the square bfloat16 matmul timed as a sanity check.")
    flags.DEFINE_bool("skip_torch", False, "Leave out the PyTorch oracle.")
    flags.DEFINE_integer(
        "data_workers",
        -1,
        "Input-pipeline worker processes (-1: the host's cores less one, at most 32; -2: leave the pipeline out).",
    )
    flags.DEFINE_integer("data_batches", 10, "Timed input-pipeline batches.")
    flags.DEFINE_string("stage", None, "Internal: run this one measurement and write it to --stage_out.")
    flags.DEFINE_string("stage_out", None, "Internal: where --stage writes its result.")


# ------------------------------------------------------------------------------------------------ helpers
def peak_tflops(device_kind: str) -> tuple[str, float | None, float | None] | None:
    """``(name, bfloat16, float32)`` dense peak TFLOP/s of a device kind, or None when it is not in the table."""
    kind = device_kind.lower()
    for words, name, bf16, f32 in PEAK_TFLOPS:
        if all(w in kind for w in words):
            return name, bf16, f32
    return None


def utilisation(flops: float | None, seconds: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over the peak (TFLOP/s), or None when either is unknown."""
    if not flops or not peak or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12)


def _compiled_figures(compiled: Any) -> dict[str, Any]:
    """XLA's FLOP count and memory plan (bytes: arguments + outputs + temporaries - aliased) of a compiled program."""
    out: dict[str, Any] = {"flops": None, "xla_bytes": None}
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        out["flops"] = float(ca["flops"]) if ca and ca.get("flops", 0) > 0 else None
    except Exception:
        pass
    try:
        m = compiled.memory_analysis()
        out["xla_bytes"] = int(
            m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        )
    except Exception:
        pass
    return out


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _settings() -> dict[str, Any]:
    s = {
        "train_batch": FLAGS.train_batch,
        "throughput_batch": FLAGS.throughput_batch,
        "eval_batch": FLAGS.eval_batch,
        "steps": FLAGS.steps,
        "warmup": FLAGS.warmup,
        "num_classes": FLAGS.num_classes,
        "num_cameras": FLAGS.num_cameras,
        "matmul_n": FLAGS.matmul_n,
        "data_batches": FLAGS.data_batches,
        "data_images": 3000,
        "tiny": bool(FLAGS.tiny),
    }
    if FLAGS.tiny:
        s.update(
            train_batch=8,
            throughput_batch=min(FLAGS.throughput_batch, 16),
            eval_batch=8,
            steps=2,
            warmup=1,
            num_classes=5,
            num_cameras=2,
            matmul_n=128,
            data_batches=2,
            data_images=120,
        )
    if s["train_batch"] < 4 or s["train_batch"] % 4:
        raise ValueError(f"--train_batch={s['train_batch']}: expected a positive multiple of 4 (P identities x 4)")
    if s["throughput_batch"] < -1 or (s["throughput_batch"] > 0 and s["throughput_batch"] % 4):
        raise ValueError(f"--throughput_batch={s['throughput_batch']}: expected -1, 0 or a positive multiple of 4")
    if min(s["eval_batch"], s["steps"], s["matmul_n"]) < 1 or s["warmup"] < 0:
        raise ValueError("--eval_batch, --steps and --matmul_n must be >= 1 and --warmup >= 0")
    for d in FLAGS.dtypes:
        if d not in ("float32", "bfloat16"):
            raise ValueError(f"--dtypes: unknown dtype {d!r}; expected float32 or bfloat16")
    return s


def _config(tiny: bool) -> Any:
    cfg = get_base_config()
    if tiny:
        cfg.model.depth, cfg.model.embed_dim, cfg.model.num_heads = 2, 32, 2
        cfg.img_size = (64, 32)
    return cfg


def _inputs(cfg: Any, s: dict, seed: int = 0) -> dict[str, np.ndarray]:
    from tmspr_jax.models import patch_grid

    rs = np.random.RandomState(seed)
    b, (h, w) = s["train_batch"], cfg.img_size
    gh, gw = patch_grid(tuple(cfg.img_size), cfg.model.patch_size, tuple(cfg.model.stride))
    parsing = rs.rand(b, gh, gw, 6).astype(np.float32)
    return {
        "views": rs.randn(b, 4, h, w, 3).astype(np.float32),
        "camids": rs.randint(0, s["num_cameras"], b).astype(np.int32),
        "pids": np.repeat(rs.choice(s["num_classes"], b // 4, replace=b // 4 > s["num_classes"]), 4).astype(np.int32),
        "parsing": parsing / parsing.sum(-1, keepdims=True),
        "parsing_weight": np.ones(b, np.float32),
        "images": rs.randn(s["eval_batch"], h, w, 3).astype(np.float32),
        "eval_camids": rs.randint(0, s["num_cameras"], s["eval_batch"]).astype(np.int32),
    }


# ------------------------------------------------------------------------------------------------ JAX measurements
def measure_matmul(n: int, steps: int, peak_bf16: float | None) -> dict[str, Any]:
    """TFLOP/s of an ``n x n`` bfloat16 matmul (float32 accumulation), back to back."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    sec = back_to_back(lambda: f(a, a), 2, max(steps, 10))
    tflops = 2 * n**3 / sec / 1e12
    return {"n": n, "tflops": tflops, "fraction_of_peak": tflops / peak_bf16 if peak_bf16 else None}


def _profile(profile_dir: str | None, fn: Callable[[], Any], calls: int) -> str | None:
    """A ``jax.profiler`` trace of ``calls`` calls of ``fn`` into ``profile_dir``; the error text if tracing failed
    (e.g. no CUPTI), so the timings already taken are kept."""
    if not profile_dir:
        return None
    try:
        with jax.profiler.trace(profile_dir):
            for _ in range(calls):
                jax.block_until_ready(fn())
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def measure_train(
    cfg: Any, dtype: str, s: dict, inputs: dict, variables: dict, peak: float | None, profile_dir: str | None = None
) -> dict[str, Any]:
    """The real training step at ``dtype``: compile time, step time, samples/s, FLOPs, utilisation, memory.

    ``variables``: float32 ``init_variables`` output (parameters stay float32 at every compute dtype); copied, since
    the step donates its state."""
    from tmspr_jax.models import build_model

    cfg = cfg.copy_and_resolve_references()
    cfg.model.dtype = dtype
    model = build_model(cfg.model, cfg.img_size, s["num_classes"], s["num_cameras"])
    variables = jax.tree_util.tree_map(jnp.copy, variables)
    tx = optim.make_optimizer(cfg.optim, variables["params"], int(cfg.train.epochs))
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
    )
    batch = {k: jnp.asarray(inputs[k]) for k in ("views", "camids", "pids", "parsing", "parsing_weight")}
    rng = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    compiled = jax.jit(make_train_step(model, tx, cfg.loss), donate_argnums=(0,)).lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch, rng)
        return metrics

    sec = back_to_back(step, s["warmup"], s["steps"])
    metrics = jax.device_get(step())
    if not bool(metrics["finite"]):
        raise RuntimeError(f"the {dtype} training step gave a non-finite loss {metrics['loss']}; timing discarded")
    profile_error = _profile(profile_dir, step, 3)
    fig = _compiled_figures(compiled)
    return {
        "compile_s": compile_s,
        "step_s": sec,
        "samples_per_s": s["train_batch"] / sec,
        "flops_per_step": fig["flops"],
        "tflops": fig["flops"] / sec / 1e12 if fig["flops"] else None,
        "mfu": utilisation(fig["flops"], sec, peak),
        "xla_bytes": fig["xla_bytes"],
        "peak_bytes_in_use": _peak_bytes(),
        "loss": float(metrics["loss"]),
        "profile_error": profile_error,
    }


def measure_eval(
    cfg: Any, dtype: str, s: dict, inputs: dict, variables: dict, peak: float | None, profile_dir: str | None = None
) -> dict[str, Any]:
    """The test feature (``TMSPR.extract``) at ``dtype``: images/s, FLOPs, utilisation, memory."""
    from tmspr_jax.models import TMSPR, build_model

    cfg = cfg.copy_and_resolve_references()
    cfg.model.dtype = dtype
    model = build_model(cfg.model, cfg.img_size, s["num_classes"], s["num_cameras"])
    images, camids = jnp.asarray(inputs["images"]), jnp.asarray(inputs["eval_camids"])
    t0 = time.perf_counter()
    compiled = (
        jax.jit(lambda v, x, c: model.apply(v, x, c, method=TMSPR.extract)).lower(variables, images, camids).compile()
    )
    compile_s = time.perf_counter() - t0
    sec = back_to_back(lambda: compiled(variables, images, camids), s["warmup"], s["steps"])
    feat = np.asarray(compiled(variables, images, camids), np.float32)
    if not np.all(np.isfinite(feat)):
        raise RuntimeError(f"the {dtype} test feature is not finite; timing discarded")
    profile_error = _profile(profile_dir, lambda: compiled(variables, images, camids), 2)
    fig = _compiled_figures(compiled)
    return {
        "compile_s": compile_s,
        "batch_s": sec,
        "images_per_s": s["eval_batch"] / sec,
        "flops_per_batch": fig["flops"],
        "tflops": fig["flops"] / sec / 1e12 if fig["flops"] else None,
        "mfu": utilisation(fig["flops"], sec, peak),
        "xla_bytes": fig["xla_bytes"],
        "peak_bytes_in_use": _peak_bytes(),
        "feature_dim": int(feat.shape[1]),
        "profile_error": profile_error,
    }


# ------------------------------------------------------------------------------------------------ the oracle
def measure_torch(cfg: Any, s: dict, inputs: dict, variables: dict) -> dict[str, Any]:
    """The PyTorch oracle with autocast: training step (reference loss, SGD) and the four-view test feature, with
    the JAX model's weights. Its memory goes back to the device afterwards."""
    import gc

    import torch

    out = _measure_torch(cfg, s, inputs, variables)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def _measure_torch(cfg: Any, s: dict, inputs: dict, variables: dict) -> dict[str, Any]:
    import torch

    from convert_weights.mapping import variables_to_reference
    from tmspr_jax.oracles.losses import reference_total_loss
    from tmspr_jax.oracles.tmspr import build_torch_model, load_numpy_state

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    if s["tiny"] and not cuda:
        torch.set_num_threads(1)  # a tiny model on a busy CPU: thread hand-offs would cost more than the work
    # The reference's AMP: float16 with a GradScaler on CUDA. On a CPU (tests) plain float32: bfloat16 autocast there
    # is emulated on most CPUs and would time the emulation.
    amp_dtype = torch.float16 if cuda else None
    model = build_torch_model(cfg.model, cfg.img_size, s["num_classes"], s["num_cameras"])
    load_numpy_state(model, variables_to_reference(jax.tree_util.tree_map(np.array, variables)))
    model.to(dev)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(dev)
    views = [nchw(inputs["views"][:, v]) for v in range(4)]
    cams = torch.from_numpy(inputs["camids"].astype(np.int64)).to(dev)
    pids = torch.from_numpy(inputs["pids"].astype(np.int64)).to(dev)
    parsing = torch.from_numpy(inputs["parsing"]).to(dev)
    images = nchw(inputs["images"])
    eval_cams = torch.from_numpy(inputs["eval_camids"].astype(np.int64)).to(dev)
    o = cfg.optim
    opt = torch.optim.SGD(
        model.parameters(), lr=float(o.base_lr), momentum=float(o.momentum), weight_decay=float(o.weight_decay)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    sync = (lambda _: torch.cuda.synchronize()) if cuda else (lambda _: None)

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=cuda):
            scores, feats = model(*views, cams)
            loss, _ = reference_total_loss(scores, feats, pids, parsing)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    def eval_step():
        model.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype, enabled=cuda):
            return model.extract(images, eval_cams)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train_s = float(np.median(time_calls(train_step, sync, s["warmup"], s["steps"])))
    eval_s = float(np.median(time_calls(eval_step, sync, s["warmup"], s["steps"])))
    out = {
        "device": torch.cuda.get_device_name(dev) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "torch_version": torch.__version__,
        "amp_dtype": "float16" if cuda else None,
        "train": {"step_s": train_s, "samples_per_s": s["train_batch"] / train_s},
        "eval": {"batch_s": eval_s, "images_per_s": s["eval_batch"] / eval_s},
        "peak_bytes_allocated": int(torch.cuda.max_memory_allocated()) if cuda else None,
    }
    return out


# ------------------------------------------------------------------------------------------------ input pipeline
def measure_data(cfg: Any, s: dict, workers: int) -> dict[str, Any]:
    """Samples/s of the training input pipeline (decode, four views, parsing targets, PK batches) with ``workers``."""
    from tmspr_jax.data.parsing import ParsingTargets
    from tmspr_jax.models import patch_grid
    from tmspr_jax.tools.benchmark_data import InMemorySplit, measure

    cfg = cfg.copy_and_resolve_references()
    cfg.data.batch_size = s["train_batch"]
    cfg.data.num_instances = 4
    # enough identities for the worker start-up batches and the timed ones (10 images per identity)
    split = InMemorySplit(max(s["data_images"], 12 * s["train_batch"] * (4 + 2 * workers + s["data_batches"]) // 10))
    gh, gw = patch_grid(tuple(cfg.img_size), cfg.model.patch_size, tuple(cfg.model.stride))
    targets = ParsingTargets(
        targets=np.zeros((len(split), gh, gw, 6), np.float32), weights=np.ones(len(split), np.float32), num_missing=0
    )
    rate = measure(split, targets, cfg, workers, s["data_batches"])
    return {
        "workers": workers,
        "host_cores": os.cpu_count(),
        "samples_per_s": rate,
        "per_worker": rate / workers if workers else None,
    }


THROUGHPUT_BATCHES = (64, 128, 256)  # the larger training batches tried for throughput (--throughput_batch=-1)
DEVICE_FRACTION = 0.85  # of the device's memory that a throughput batch's estimate may use


def memory_figures(cfg: Any, s: dict, dtypes: list[str]) -> dict[str, Any]:
    """``tools.benchmark_memory`` for the config's memory mode: kept bytes per sample and the estimate (GiB) at the
    training batch and at each throughput candidate, per dtype (JAX only; the reference's figures are the README's)."""
    state = benchmark_memory.state_bytes(cfg, s["num_classes"], s["num_cameras"])
    resident = 2 * state["params"] + state["batch_stats"] + state["optimizer"]
    out: dict[str, Any] = {"mode": str(cfg.model.remat), "state_mib": {k: v / 2**20 for k, v in state.items()}}
    for d in dtypes:
        kept = benchmark_memory.jax_kept(benchmark_memory.with_model(cfg, dtype=d), s["num_classes"], s["num_cameras"])
        batches = sorted({s["train_batch"], *THROUGHPUT_BATCHES, max(s["throughput_batch"], 0)} - {0})
        out[d] = {
            "kept_per_sample_mib": kept.per_sample / 2**20,
            "kept_fixed_mib": kept.fixed / 2**20,
            "estimate_gib": {str(b): (kept.at(b) + resident + b * state["batch_per_sample"]) / 2**30 for b in batches},
        }
    return out


def device_memory_bytes() -> int | None:
    """The device's memory that JAX may use (``bytes_limit``), or None where the device does not say (a CPU)."""
    stats = jax.devices()[0].memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def throughput_batch(s: dict, memory: dict[str, Any], dtype: str, device_bytes: int | None) -> int:
    """The larger batch timed for throughput: ``--throughput_batch`` if given, else the largest candidate whose
    estimate fits ``DEVICE_FRACTION`` of the device; 0 when none is larger than the training batch or it is unknown."""
    if s["throughput_batch"] >= 0:
        return s["throughput_batch"]
    if not device_bytes or dtype not in memory:
        return 0
    fits = [
        b
        for b in THROUGHPUT_BATCHES
        if b > s["train_batch"] and memory[dtype]["estimate_gib"][str(b)] * 2**30 <= DEVICE_FRACTION * device_bytes
    ]
    return max(fits, default=0)


def run_stage(name: str, s: dict) -> Any:
    """One measurement, in this process: ``torch``, ``matmul``, ``memory``, ``data``, ``eval:<dtype>``,
    ``train:<dtype>`` or ``train:<dtype>:<batch>``."""
    cfg = _config(FLAGS.tiny)
    kind = getattr(jax.devices()[0], "device_kind", jax.devices()[0].platform)
    peak = peak_tflops(kind)
    what, _, rest = name.partition(":")
    if what == "memory":
        return memory_figures(cfg, s, list(FLAGS.dtypes))
    if what == "data":
        workers = min(32, max(0, (os.cpu_count() or 1) - 1)) if FLAGS.data_workers == -1 else FLAGS.data_workers
        return measure_data(cfg, s, workers)
    if what == "matmul":
        return measure_matmul(s["matmul_n"], s["steps"], peak[1] if peak else None)
    dtype, _, batch = rest.partition(":")
    if batch:
        s = dict(s, train_batch=int(batch))
    inputs = _inputs(cfg, s)
    from tmspr_jax.models import build_model, init_variables

    # The same float32 weights in every process (same seed).
    variables = init_variables(
        build_model(cfg.model, cfg.img_size, s["num_classes"], s["num_cameras"]), jax.random.key(0)
    )
    if what == "torch":
        return measure_torch(cfg, s, inputs, jax.device_get(variables))
    p = (peak[1] if dtype == "bfloat16" else peak[2]) if peak else None
    profiled = "bfloat16" if "bfloat16" in FLAGS.dtypes else FLAGS.dtypes[0]
    prof = os.path.join(FLAGS.profile, what) if FLAGS.profile and dtype == profiled and not batch else None
    measure = measure_eval if what == "eval" else measure_train
    res = measure(cfg, dtype, s, inputs, variables, p, prof)
    head_dim = int(cfg.model.embed_dim) // int(cfg.model.num_heads)
    res["attention"] = attention_implementation(
        str(cfg.model.attention), jax.default_backend(), compute_dtype(dtype), head_dim, False
    )
    res["memory_mode"] = str(cfg.model.remat)
    if batch:
        res["batch"] = int(batch)
    return res


def _stage_in_subprocess(name: str) -> Any:
    """``run_stage(name)`` in a fresh Python process (same flags), so that its device memory is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "stage.json")
        argv = [a for a in sys.argv[1:] if not a.startswith(("--stage=", "--stage_out="))]
        cmd = [sys.executable, "-m", "tmspr_jax.tools.benchmark_gpu", *argv, f"--stage={name}", f"--stage_out={result}"]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0 or not os.path.exists(result):
            tail = [line for line in r.stdout.strip().splitlines() if line.strip()][-1:] or ["no output"]
            raise RuntimeError(f"exit status {r.returncode}: {tail[0][-500:]}")
        with open(result) as f:
            return json.load(f)


def _stage_main(s: dict) -> None:
    """The child process of one stage: run it and write its result (with the process id that measured it)."""
    if not FLAGS.stage_out:
        raise ValueError("--stage needs --stage_out")
    res = dict(run_stage(FLAGS.stage, s), pid=os.getpid())
    with open(FLAGS.stage_out, "w") as f:
        json.dump(res, f)


def _update_ratios(res: dict[str, Any]) -> None:
    if not res["torch"]:
        return
    tr, ev = res["torch"]["train"]["samples_per_s"], res["torch"]["eval"]["images_per_s"]
    for d in FLAGS.dtypes:
        if d in res["train"]:
            res["ratios"][f"train_{d}"] = res["train"][d]["samples_per_s"] / tr
        if d in res["eval"]:
            res["ratios"][f"eval_{d}"] = res["eval"][d]["images_per_s"] / ev


def main() -> None:
    """Runs every measurement, each in its own process, rewriting the JSON and the table after each; then prints the
    table."""
    s = _settings()
    if FLAGS.stage:
        _stage_main(s)
        return
    out = FLAGS.out
    table = FLAGS.table or os.path.splitext(out)[0] + ".md"
    for path in (out, table):
        if os.path.isdir(path):
            raise ValueError(f"{path}: is a folder; expected a file name")
    cfg = _config(FLAGS.tiny)
    m = cfg.model
    d0 = jax.devices()[0]
    kind = getattr(d0, "device_kind", d0.platform)
    peak = peak_tflops(kind)
    t_start = time.perf_counter()
    res: dict[str, Any] = {
        "device": {
            "platform": d0.platform,
            "device_kind": kind,
            "device_count": jax.device_count(),
            "device_memory_bytes": device_memory_bytes(),
            "jax_version": jax.__version__,
            "matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
            "host": platform.processor() or platform.machine(),
            "host_cores": os.cpu_count(),
            "peak_name": peak[0] if peak else None,
            "peak_tflops": {"bfloat16": peak[1], "float32": peak[2]} if peak else None,
        },
        "model": f"ViT depth {m.depth}, width {m.embed_dim}, heads {m.num_heads}, {cfg.img_size[0]}x{cfg.img_size[1]}, "
        f"stride {tuple(m.stride)}, {s['num_classes']} classes, memory mode '{m.remat}'",
        "settings": dict(s, dtypes=list(FLAGS.dtypes)),
        "memory": None,
        "matmul_bf16": None,
        "train": {},
        "throughput": {},
        "eval": {},
        "torch": None,
        "ratios": {},
        "data": None,
        "profile_dir": FLAGS.profile,
        "wall_s": None,
        "errors": {},
    }
    print(f"device: {kind} ({d0.platform}) x{jax.device_count()}; peak table: {peak[0] if peak else 'unknown'}")

    def put(key: str, sub: str | None = None) -> Callable[[Any], None]:
        return (lambda v: res.update({key: v})) if sub is None else (lambda v: res[key].update({sub: v}))

    stages: list[tuple[str, str, Callable[[Any], None]]] = [("memory estimate", "memory", put("memory"))]
    if not FLAGS.skip_torch:
        stages.append(("PyTorch oracle (AMP)", "torch", put("torch")))
    stages.append(("bfloat16 matmul", "matmul", put("matmul_bf16")))
    stages += [(f"test feature {d}", f"eval:{d}", put("eval", d)) for d in FLAGS.dtypes]
    stages += [(f"training step {d}", f"train:{d}", put("train", d)) for d in FLAGS.dtypes]
    if FLAGS.data_workers != -2:
        stages.append(("input pipeline", "data", put("data")))
    queue = list(stages)
    while queue:
        label, stage, store = queue.pop(0)
        t0 = time.perf_counter()
        try:
            store(_stage_in_subprocess(stage))
            print(f"{label}: done in {time.perf_counter() - t0:.1f} s", flush=True)
        except Exception as e:
            res["errors"][label] = f"{type(e).__name__}: {e}"
            print(f"{label}: FAILED after {time.perf_counter() - t0:.1f} s: {res['errors'][label]}", flush=True)
        if stage == "memory" and res["memory"] and "bfloat16" in FLAGS.dtypes:
            b = throughput_batch(s, res["memory"], "bfloat16", res["device"]["device_memory_bytes"])
            if b > s["train_batch"]:
                at = next((k for k, st in enumerate(queue) if st[1] == "data"), len(queue))  # before the pipeline
                throughput = (f"training step bfloat16, batch {b} (throughput)", f"train:bfloat16:{b}")
                queue.insert(at, (*throughput, put("throughput", "bfloat16")))
        _update_ratios(res)
        res["wall_s"] = time.perf_counter() - t_start
        res["goals"] = goals(res)
        write_report(res, out, table)
    print()
    print(markdown_table(res), end="")
    print(f"\nwritten: {out}, {table}" + (f", trace in {FLAGS.profile}" if FLAGS.profile else ""))
    if res["errors"]:
        failed = "; ".join(f"{k}: {v}" for k, v in res["errors"].items())
        print(f"{len(res['errors'])} measurement(s) failed: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # Before the JAX backend starts (at the first device query): allocate as needed, so the device's peak bytes in use
    # mean something and the PyTorch oracle can run in the same process.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    define_flags()
    cli.run(main)

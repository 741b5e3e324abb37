r"""Training memory: what the backward pass keeps per training sample, the port against the reference's graph.

    python -m tmspr_jax.tools.benchmark_memory [--config=configs/occ_duke.py] [--batch=32]
        [--dtypes=float32,bfloat16] [--modes=none,dots,block] [--skip_torch] [--out=memory.json]

* JAX: the residuals autodiff saves for the backward pass of the real training loss (``model.apply`` and
  ``losses.total_loss``, as the training step differentiates it), read from the jaxpr of ``jax.vjp``: every saved
  array that is not an argument (parameters, batch statistics and the batch are not counted), once.
* PyTorch: the oracle of the same config (the reference's graph: four backbone passes, b1 over every token, b2 over
  each JPM group, part and the recovered parts) and the oracle's loss, with ``torch.autograd.graph.saved_tensors_hooks``
  around forward and loss: every saved tensor's storage once, the parameters' storages not counted. float32, and
  bfloat16 under ``torch.autocast`` (the reference trains under fp16 autocast on a GPU: the same two bytes).
* Per sample: both are measured at two batch sizes and the difference divided by the samples between them, so what
  does not grow with the batch (casts of the weights to bfloat16, ...) is reported apart, as ``fixed``.
* Estimate at ``--batch``: ``fixed + batch x per sample`` plus the batch itself, the parameters, their gradients and
  the optimiser's state (the config's optimiser; the reference's SGD keeps one momentum buffer). It leaves out XLA's
  and PyTorch's temporaries, which come and go within the step.

Each memory mode (``model.remat``, ``models.vit.REMAT_MODES``) and compute dtype is one row; the PyTorch figures do
not depend on the mode. The measure traces and runs no XLA program, so it is the same on every device; XLA's own
buffer plan (``compiled.memory_analysis()``) is not used because on the CPU it does not reflect rematerialisation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from jax.extend.core import Literal
from ml_collections import config_flags

from tmspr_jax import losses, optim
from tmspr_jax.models import build_model, init_variables
from tmspr_jax.models.tmspr import NUM_VIEWS
from tmspr_jax.models.vit import REMAT_MODES
from tmspr_jax.tools import cli

FLAGS = flags.FLAGS
MIB, GIB = 2.0**20, 2.0**30
SMALL_BATCH = 2  # the two batch sizes of the per-sample slope (the triplet loss needs two samples)
LARGE_BATCH = 4


def define_flags() -> None:
    """The command line's flags (defined only when run as a program, so that importing this module defines none)."""
    config_flags.DEFINE_config_file("config", None, "Config to measure (default: the base config, ViT-B/16).")
    flags.DEFINE_integer("batch", 32, "Samples per training step for the estimate (the paper's IMS_PER_BATCH: 32).")
    flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes (model.dtype) to measure.")
    flags.DEFINE_list("modes", list(REMAT_MODES), f"Memory modes (model.remat) to measure, of {REMAT_MODES}.")
    flags.DEFINE_integer("num_classes", 702, "Classifier width (Occluded-Duke: 702).")
    flags.DEFINE_integer("num_cameras", 8, "Camera-embedding rows (Occluded-Duke: 8).")
    flags.DEFINE_bool("skip_torch", False, "Measure the JAX port only (no PyTorch needed).")
    flags.DEFINE_string("out", None, "Also write the figures as JSON to this file.")


# ---------------------------------------------------------------------------------------------------------- JAX


@dataclasses.dataclass(frozen=True)
class Residual:
    """One array the backward pass keeps."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int


def saved_residuals(fn: Callable[..., jax.Array], *args: Any) -> list[Residual]:
    """The arrays ``jax.vjp(fn, *args)`` keeps for the backward pass, arguments excluded, each once (traced only)."""
    closed, out_shape = jax.make_jaxpr(lambda *a: jax.vjp(fn, *a), return_shape=True)(*args)
    jaxpr = closed.jaxpr
    n_res = len(jax.tree.leaves(out_shape[1]))  # the vjp function's leaves are the residuals
    arguments = set(jaxpr.invars)
    seen, out = set(), []
    for v in jaxpr.outvars[len(jaxpr.outvars) - n_res :]:
        if isinstance(v, Literal) or v in arguments or v in seen:
            continue
        seen.add(v)
        shape, dtype = tuple(v.aval.shape), v.aval.dtype  # a PRNG key's dtype is JAX's own, with an itemsize
        out.append(Residual(shape, str(dtype), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize))
    return out


def with_model(cfg: ml_collections.ConfigDict, **model: Any) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` with ``config.model`` keys replaced."""
    cfg = cfg.copy_and_resolve_references()
    for k, v in model.items():
        cfg.model[k] = v
    return cfg


def training_batch(model: Any, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The arrays of one training batch, as shapes (what ``data.pipeline`` gives the training step)."""
    h, w = model.img_size
    gh, gw = model.grid
    f32 = jnp.float32
    return {
        "views": jax.ShapeDtypeStruct((batch, NUM_VIEWS, h, w, 3), f32),
        "camids": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "pids": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "parsing": jax.ShapeDtypeStruct((batch, gh, gw, 6), f32),
        "parsing_weight": jax.ShapeDtypeStruct((batch,), f32),
    }


def training_loss(model: Any, loss_cfg: ml_collections.ConfigDict) -> Callable[..., jax.Array]:
    """``(params, batch_stats, batch) -> loss``: the function the training step differentiates."""

    def loss(params: Any, batch_stats: Any, batch: dict[str, jax.Array]) -> jax.Array:
        outputs, _ = model.apply(
            {"params": params, "batch_stats": batch_stats},
            batch["views"],
            batch["camids"],
            train=True,
            rngs={"drop_path": jax.random.key(0)},
            mutable=["batch_stats"],
        )
        value, _ = losses.total_loss(outputs, batch["pids"], batch["parsing"], batch["parsing_weight"], loss_cfg)
        return value

    return loss


def jax_kept_bytes(cfg: ml_collections.ConfigDict, batch: int, num_classes: int, num_cameras: int) -> int:
    """Bytes the backward pass of the training loss keeps at ``batch`` samples (no arguments counted)."""
    model = build_model(cfg.model, cfg.img_size, num_classes, num_cameras)
    variables = jax.eval_shape(lambda r: init_variables(model, r), jax.random.key(0))
    res = saved_residuals(
        training_loss(model, cfg.loss), variables["params"], variables["batch_stats"], training_batch(model, batch)
    )
    return sum(r.nbytes for r in res)


@dataclasses.dataclass(frozen=True)
class Kept:
    """Bytes kept for the backward pass: ``fixed + per_sample x batch``."""

    per_sample: float
    fixed: float

    def at(self, batch: int) -> float:
        return self.fixed + self.per_sample * batch


def slope(measure: Callable[[int], int], small: int = SMALL_BATCH, large: int = LARGE_BATCH) -> Kept:
    """``measure(batch)`` at two batch sizes as a line."""
    a, b = measure(small), measure(large)
    per_sample = (b - a) / (large - small)
    return Kept(per_sample, a - per_sample * small)


def jax_kept(cfg: ml_collections.ConfigDict, num_classes: int, num_cameras: int) -> Kept:
    """What the port keeps per training sample and apart from the batch, for ``cfg``'s dtype and memory mode."""
    return slope(lambda b: jax_kept_bytes(cfg, b, num_classes, num_cameras))


def state_bytes(cfg: ml_collections.ConfigDict, num_classes: int, num_cameras: int) -> dict[str, int]:
    """Bytes of the parameters (their gradients are as many), batch statistics and the optimiser's state."""
    model = build_model(cfg.model, cfg.img_size, num_classes, num_cameras)
    variables = jax.eval_shape(lambda r: init_variables(model, r), jax.random.key(0))
    nbytes = lambda tree: sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
    tx = optim.make_optimizer(cfg.optim, variables["params"], int(cfg.train.epochs))
    return {
        "params": nbytes(variables["params"]),
        "batch_stats": nbytes(variables["batch_stats"]),
        "optimizer": nbytes(jax.eval_shape(tx.init, variables["params"])),
        "batch_per_sample": nbytes(training_batch(model, 1)),
    }


# ---------------------------------------------------------------------------------------------------------- PyTorch


def torch_kept_bytes(cfg: ml_collections.ConfigDict, batch: int, dtype: str, num_classes: int, num_cameras: int) -> int:
    """Bytes the oracle's graph saves for the backward pass of its loss at ``batch`` samples (parameters not counted),
    in float32 or under bfloat16 autocast."""
    import torch

    from tmspr_jax.oracles.losses import reference_total_loss, reference_triplet
    from tmspr_jax.oracles.tmspr import TorchTMSPR, build_torch_model

    torch.manual_seed(0)
    model = build_torch_model(cfg.model, cfg.img_size, num_classes, num_cameras).train()
    h, w = cfg.img_size
    gh, gw = model.grid
    views = [torch.randn(batch, 3, h, w) for _ in range(NUM_VIEWS)]
    cams = torch.randint(0, max(num_cameras, 1), (batch,))
    pids = torch.arange(batch) % 2  # every row has as many positives (itself included) as negatives
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != "float32")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        if isinstance(model, TorchTMSPR):
            scores, feats = model(*views, cams)
            loss, _ = reference_total_loss(scores, feats, pids, torch.rand(batch, gh, gw, 6))
        else:  # TransReID: ID and triplet terms
            scores, feats = model(views[0], cams)
            ce = torch.nn.functional.cross_entropy
            loss = sum(ce(s.float(), pids) for s in scores) + sum(reference_triplet(f.float(), pids) for f in feats)
    del loss, scores, feats
    return sum(kept.values())


def torch_kept(cfg: ml_collections.ConfigDict, dtype: str, num_classes: int, num_cameras: int) -> Kept:
    """What the reference's graph keeps per training sample and apart from the batch."""
    return slope(lambda b: torch_kept_bytes(cfg, b, dtype, num_classes, num_cameras))


# ---------------------------------------------------------------------------------------------------------- report


def measure(
    cfg: ml_collections.ConfigDict,
    dtypes: Sequence[str],
    modes: Sequence[str],
    batch: int,
    num_classes: int,
    num_cameras: int,
    with_torch: bool = True,
) -> dict[str, Any]:
    """Every row of the report: per dtype and memory mode, the port's and the reference's bytes and the estimates."""
    for m in modes:
        if m not in REMAT_MODES:
            raise ValueError(f"--modes: {m!r} is not a memory mode; expected some of {REMAT_MODES}")
    state = state_bytes(cfg, num_classes, num_cameras)
    resident = 2 * state["params"] + state["batch_stats"] + state["optimizer"] + batch * state["batch_per_sample"]
    # the reference's SGD: parameters, gradients and one momentum buffer, all float32
    torch_resident = 3 * state["params"] + state["batch_stats"] + batch * state["batch_per_sample"]
    rows = []
    for dtype in dtypes:
        ref = torch_kept(cfg, dtype, num_classes, num_cameras) if with_torch else None
        for mode in modes:
            ours = jax_kept(with_model(cfg, dtype=dtype, remat=mode), num_classes, num_cameras)
            rows.append(
                {
                    "dtype": dtype,
                    "mode": mode,
                    "per_sample_mib": ours.per_sample / MIB,
                    "fixed_mib": ours.fixed / MIB,
                    "reference_per_sample_mib": None if ref is None else ref.per_sample / MIB,
                    "ratio": None if ref is None else ours.per_sample / ref.per_sample,
                    "estimate_gib": (ours.at(batch) + resident) / GIB,
                    "reference_estimate_gib": None if ref is None else (ref.at(batch) + torch_resident) / GIB,
                }
            )
    return {
        "model": {k: cfg.model[k] for k in ("depth", "embed_dim", "num_heads", "stride")},
        "img_size": list(cfg.img_size),
        "batch": batch,
        "state_mib": {k: v / MIB for k, v in state.items()},
        "rows": rows,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The report as the README's table."""
    b = report["batch"]
    fmt = lambda v, spec, unit="": "–" if v is None else f"{v:{spec}}{unit}"
    lines = [
        f"| memory mode | dtype | kept per sample (port) | reference | ratio | fixed | estimate at batch {b} "
        f"(port / reference) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| `{r['mode']}` | {r['dtype']} | {fmt(r['per_sample_mib'], ',.0f', ' MiB')} | "
            f"{fmt(r['reference_per_sample_mib'], ',.0f', ' MiB')} | {fmt(r['ratio'], '.2f', 'x')} | "
            f"{fmt(r['fixed_mib'], ',.0f', ' MiB')} | {fmt(r['estimate_gib'], '.1f', ' GiB')} / "
            f"{fmt(r['reference_estimate_gib'], '.1f', ' GiB')} |"
        )
    return "\n".join(lines)


def main() -> None:
    from tmspr_jax.config import get_base_config

    cfg = FLAGS.config if FLAGS.config is not None else get_base_config()
    if FLAGS.batch < 1:
        raise app.UsageError(f"--batch={FLAGS.batch}: expected a positive number of samples")
    if FLAGS.out and os.path.isdir(FLAGS.out):
        raise app.UsageError(f"--out={FLAGS.out}: is a folder; expected a file name for the JSON report")
    report = measure(
        cfg, FLAGS.dtypes, FLAGS.modes, FLAGS.batch, FLAGS.num_classes, FLAGS.num_cameras, not FLAGS.skip_torch
    )
    m = report["model"]
    print(
        f"model: depth {m['depth']}, embed_dim {m['embed_dim']}, heads {m['num_heads']}, stride {m['stride']}, "
        f"img {report['img_size'][0]}x{report['img_size'][1]}; parameters {report['state_mib']['params']:,.0f} MiB"
    )
    print(markdown_table(report))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"written to {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)  # flags parsed by tools.cli: a bad flag or config value is one line, no traceback

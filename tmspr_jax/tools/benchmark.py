r"""Model speed: the JAX port against the PyTorch oracle, same weights, same batch, same machine, one run.

    python -m tmspr_jax.tools.benchmark [--config=configs/occ_duke.py] [--depth=12 --embed_dim=768 --num_heads=12]
        [--batch=32] [--img_size=256x128] [--dtype=float32|bfloat16] [--iters=10 --warmup=2] [--modes=eval,train]

* eval: images/s of the test feature. JAX: ``TMSPR.extract`` under ``jax.jit`` (view 1 only, stacked branches).
  PyTorch: the oracle computes what the reference computes, the full 4-view graph on 4 copies of the batch.
* train: ms per step of forward + backward + SGD(momentum 0.9) update on a ``[B, 4, H, W, 3]`` batch. The loss is the
  sum of the cross-entropies of the 15 logits on both sides (every branch, BNNeck and classifier is in its graph;
  the reference's triplet/segmentation/recovery terms are small additions on top). Stochastic depth as configured.

Both models hold the same random weights (the JAX ones copied into the oracle); the eval features of the two are
compared and the relative difference printed, so a timing is never of a broken model. Each measurement runs
``--warmup`` untimed iterations (compilation, allocator warm-up) then ``--iters`` timed ones and reports the median.
"""

from __future__ import annotations

import functools
import platform
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from tmspr_jax import hostmem
from tmspr_jax.config import get_base_config
from tmspr_jax.tools import cli
from tmspr_jax.tools.timing import time_calls

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags (defined only when run as a program, so that importing this module defines none)."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config whose model/img_size to use (default: the base config, i.e. ViT-B/16 at 256x128, stride 11).",
    )
    flags.DEFINE_integer("depth", None, "Override model.depth.")
    flags.DEFINE_integer("embed_dim", None, "Override model.embed_dim.")
    flags.DEFINE_integer("num_heads", None, "Override model.num_heads.")
    flags.DEFINE_string("img_size", None, "Override img_size as HxW, e.g. 256x128.")
    flags.DEFINE_integer("batch", 32, "Batch size (images per eval batch, samples per training step).")
    flags.DEFINE_enum(
        "dtype",
        "float32",
        ["float32", "bfloat16"],
        "Compute dtype (JAX: model.dtype; PyTorch: autocast to the same dtype).",
    )
    flags.DEFINE_integer("num_classes", 702, "Classifier width (Occluded-Duke: 702).")
    flags.DEFINE_integer("num_cameras", 8, "Camera-embedding rows (Occluded-Duke: 8).")
    flags.DEFINE_integer("iters", 10, "Timed iterations per measurement.")
    flags.DEFINE_integer("warmup", 2, "Untimed iterations before timing.")
    flags.DEFINE_list("modes", ["eval", "train"], "What to time: eval, train.")
    flags.DEFINE_bool("skip_torch", False, "Time the JAX port only (no PyTorch needed).")
    flags.DEFINE_float("lr", 1e-3, "SGD learning rate of the timed training step.")


def _config() -> Any:
    cfg = FLAGS.config if FLAGS.config is not None else get_base_config()
    cfg = cfg.copy_and_resolve_references()  # overrides below change existing keys only
    if FLAGS.depth is not None:
        cfg.model.depth = FLAGS.depth
    if FLAGS.embed_dim is not None:
        cfg.model.embed_dim = FLAGS.embed_dim
    if FLAGS.num_heads is not None:
        cfg.model.num_heads = FLAGS.num_heads
    if FLAGS.img_size is not None:
        try:
            h, w = (int(v) for v in FLAGS.img_size.lower().split("x"))
        except ValueError:
            raise app.UsageError(f"--img_size={FLAGS.img_size!r}: expected HxW, e.g. 256x128") from None
        cfg.img_size = (h, w)
    cfg.model.dtype = FLAGS.dtype
    return cfg


def _jax_device() -> str:
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    return f"{d.platform}: {kind} x{jax.device_count()}" + (
        f" ({platform.processor() or platform.machine()})" if d.platform == "cpu" else ""
    )


def _jax_eval(model, variables, images, camids) -> Callable[[], jax.Array]:
    from tmspr_jax.models import TMSPR

    fn = jax.jit(lambda v, x, c: model.apply(v, x, c, method=TMSPR.extract))
    return lambda: fn(variables, images, camids)


def _jax_train(model, variables, views, camids, pids, lr: float) -> Callable[[], Any]:
    tx = optax.sgd(lr, momentum=0.9)

    def loss_fn(params, batch_stats, rng):
        out, mut = model.apply(
            {"params": params, "batch_stats": batch_stats},
            views,
            camids,
            train=True,
            mutable=["batch_stats"],
            rngs={"drop_path": rng},
        )
        loss = sum(optax.softmax_cross_entropy_with_integer_labels(lg, pids).mean() for lg in out.all_logits())
        return loss, mut["batch_stats"]

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, rng):
        params, batch_stats, opt_state = state
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    params = variables["params"]
    # private copies: the state is donated and updated in place step after step
    holder = {
        "state": jax.tree_util.tree_map(jnp.array, (params, variables["batch_stats"], tx.init(params))),
        "rng": jax.random.key(0),
    }

    def run():
        holder["rng"], r = jax.random.split(holder["rng"])
        holder["state"], loss = step(holder["state"], r)
        return loss

    return run


def _torch_parts(cfg, variables, images_np, views_np, camids_np, pids_np, dtype: str):
    import torch

    from convert_weights.mapping import variables_to_reference
    from tmspr_jax.oracles.tmspr import build_torch_model, load_numpy_state

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_torch_model(cfg.model, cfg.img_size, FLAGS.num_classes, FLAGS.num_cameras)
    load_numpy_state(model, variables_to_reference(jax.tree_util.tree_map(np.asarray, variables)))
    model.to(dev)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(dev)
    images = nchw(images_np)
    views = [nchw(views_np[:, v]) for v in range(4)]
    cams = torch.from_numpy(camids_np.astype(np.int64)).to(dev)
    pids = torch.from_numpy(pids_np.astype(np.int64)).to(dev)
    amp = dtype != "float32"
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp)
    sync = (lambda r: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda r: None)
    cpu = f"cpu ({platform.processor() or platform.machine()})"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu

    def eval_fn():
        model.eval()
        with torch.no_grad(), autocast():
            return model.extract(images, cams)

    opt = torch.optim.SGD(model.parameters(), lr=FLAGS.lr, momentum=0.9)
    ce = torch.nn.functional.cross_entropy

    def train_fn():
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            scores, _ = model(*views, cams)
            loss = sum(ce(s.float(), pids) for s in scores)
        loss.backward()
        opt.step()
        return loss

    return eval_fn, train_fn, sync, name, f"torch {torch.__version__}"


def main() -> None:
    from tmspr_jax.models import build_model, init_variables

    cfg = _config()
    b, (h, w) = FLAGS.batch, cfg.img_size
    model = build_model(cfg.model, cfg.img_size, FLAGS.num_classes, FLAGS.num_cameras)
    variables = init_variables(model, jax.random.key(0))
    rs = np.random.RandomState(0)
    views_np = rs.randn(b, 4, h, w, 3).astype(np.float32)
    images_np = views_np[:, 0].copy()
    camids_np = rs.randint(0, FLAGS.num_cameras, b).astype(np.int32)
    pids_np = rs.randint(0, FLAGS.num_classes, b).astype(np.int32)
    m = cfg.model
    print(
        f"model: depth {m.depth}, embed_dim {m.embed_dim}, heads {m.num_heads}, img {h}x{w}, stride "
        f"{tuple(model.stride)}, grid {model.grid[0]}x{model.grid[1]}, classes {FLAGS.num_classes}, batch {b}, "
        f"dtype {FLAGS.dtype}, drop_path {m.drop_path}, memory mode {m.remat!r}"
    )
    print(f"JAX device: {_jax_device()} (jax {jax.__version__})")
    print(f"host memory: freed memory {'kept in the process' if hostmem.retained() else 'returned (glibc defaults)'}")

    images, camids = jnp.asarray(images_np), jnp.asarray(camids_np)
    views, pids = jnp.asarray(views_np), jnp.asarray(pids_np)
    jax_sync = lambda r: jax.block_until_ready(r)
    torch_fns = None
    if not FLAGS.skip_torch:
        torch_fns = _torch_parts(cfg, variables, images_np, views_np, camids_np, pids_np, FLAGS.dtype)
        print(f"PyTorch device: {torch_fns[3]} ({torch_fns[4]})")

    rows = []
    if "eval" in FLAGS.modes:
        jfn = _jax_eval(model, variables, images, camids)
        feat_j = np.asarray(jfn(), np.float32)
        jt = statistics.median(time_calls(jfn, jax_sync, FLAGS.warmup, FLAGS.iters))
        tt = None
        if torch_fns:
            feat_t = torch_fns[0]().float().cpu().numpy()
            rel = np.abs(feat_j - feat_t).max() / max(np.abs(feat_t).max(), 1e-12)
            print(f"eval feature check: max |JAX - PyTorch| / max |PyTorch| = {rel:.2e}")
            tt = statistics.median(time_calls(torch_fns[0], torch_fns[2], FLAGS.warmup, FLAGS.iters))
        rows.append(("eval (test feature)", jt, tt))
    if "train" in FLAGS.modes:
        jfn = _jax_train(model, variables, views, camids, pids, FLAGS.lr)
        jt = statistics.median(time_calls(jfn, jax_sync, FLAGS.warmup, FLAGS.iters))
        tt = statistics.median(time_calls(torch_fns[1], torch_fns[2], FLAGS.warmup, FLAGS.iters)) if torch_fns else None
        rows.append(("train step (fwd+bwd+SGD)", jt, tt))

    print()
    print(
        f"{'measurement':<26} {'JAX ms':>10} {'JAX img/s':>10} {'PyTorch ms':>11} {'PyTorch img/s':>14} "
        f"{'JAX/PyTorch speed':>18}"
    )
    for name, jt, tt in rows:
        t_ms = f"{tt * 1e3:11.1f}" if tt else f"{'-':>11}"
        t_ips = f"{b / tt:14.1f}" if tt else f"{'-':>14}"
        ratio = f"{tt / jt:17.2f}x" if tt else f"{'-':>18}"
        print(f"{name:<26} {jt * 1e3:10.1f} {b / jt:10.1f} {t_ms} {t_ips} {ratio}")
    print(
        f"(median of {FLAGS.iters} timed iterations after {FLAGS.warmup} warm-up; img/s = batch / time; "
        "JAX/PyTorch speed = PyTorch time / JAX time)"
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)  # flags parsed by tools.cli: a bad flag or config value is one line, no traceback

r"""Human-parser speed: the Flax SCHP network against the PyTorch oracle, same weights, same batch, same machine, one
run.

    python -m tmspr_jax.tools.benchmark_parser [--parser=weights/schp_lip] [--input_size=473] [--batch=8]
        [--dtype=float32|bfloat16] [--iters=5 --warmup=1] [--tiny]

Times what runs on the device for each batch of ``uint8`` BGR inputs already warped to the input size: normalisation,
the network and the align-corners upsampling of the fusion logits to the input size (JAX: the parser's ``jax.jit``
program over every visible device, ``Parser.logits``; PyTorch: the oracle in ``torch.no_grad``, on CUDA when
available). SCHP's OpenCV warps run on the host in both pipelines and are not timed. Without ``--parser`` both sides get
the same random ResNet-101 weights (``--tiny``: the tests' small network). The fusion logits of both sides are
compared and the relative difference printed, so a timing is never of a broken model. Each side runs ``--warmup``
untimed batches (compilation) then ``--iters`` timed ones; the median is reported.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from tmspr_jax.tools import cli

TINY = dict(layers=(1, 1, 1, 1), stem=(8, 8, 16), planes=(4, 8, 16, 32), psp=16, decoder=(16, 8, 16), edge=8, fusion=16)


def _median_seconds(fn: Callable[[], None], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _oracle_from_folder(folder: str):
    """The oracle with the folder's weights (the converter's mapping, inverted)."""
    import torch

    from tmspr_jax.oracles import schp as oracle
    from tmspr_jax.parser.network import torch_key_to_path
    from tmspr_jax.parser.weights import load_parser

    arch, variables, _ = load_parser(folder)
    model = oracle.ResNet(**arch.to_dict())
    leaf = {
        "weight": ("params", None),
        "bias": ("params", "bias"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
    }
    state = {}
    for key, ref in model.state_dict().items():
        *mods, name = torch_key_to_path(key)
        coll, flax_name = leaf[name]
        flax_name = flax_name or ("kernel" if ref.ndim == 4 else "scale")
        node = variables[coll]
        for m in mods:
            node = node[m]
        v = np.asarray(node[flax_name])
        state[key] = torch.from_numpy(np.ascontiguousarray(v.transpose(3, 2, 0, 1) if v.ndim == 4 else v))
    model.load_state_dict(state)
    return model.eval()


def benchmark(
    parser_dir: str | None,
    *,
    input_size: int,
    batch: int,
    dtype: str,
    iters: int,
    warmup: int,
    tiny: bool,
    skip_torch: bool = False,
) -> dict[str, float]:
    """Runs both sides and returns ``{'jax_img_s', 'torch_img_s', 'ratio', 'rel_diff'}`` (torch ones NaN if
    skipped)."""
    import jax
    import torch
    import torch.nn.functional as F

    from convert_weights.schp import convert_state
    from tmspr_jax.oracles import schp as oracle
    from tmspr_jax.parser.runner import Parser
    from tmspr_jax.parser.weights import save_parser

    with tempfile.TemporaryDirectory() as tmp:
        if parser_dir is None:
            model = oracle.randomize_(oracle.ResNet(**(TINY if tiny else {})), seed=0)
            variables, meta, _ = convert_state({k: v.numpy() for k, v in model.state_dict().items()}, "random")
            parser_dir = os.path.join(tmp, "parser")
            save_parser(parser_dir, variables, meta)
        else:
            model = _oracle_from_folder(parser_dir)
        n_dev = jax.device_count()
        per_device = max(1, batch // n_dev)
        parser = Parser(parser_dir, dtype=dtype, batch_size=per_device, input_size=(input_size, input_size))
    b = parser.batch_size
    x = np.random.RandomState(0).randint(0, 256, (b, input_size, input_size, 3)).astype(np.uint8)
    jax_out = np.asarray(parser.logits(x))
    t_jax = _median_seconds(lambda: parser.logits(x).block_until_ready(), iters, warmup)
    result = {"jax_img_s": b / t_jax, "batch": b, "devices": n_dev}
    if skip_torch:
        return {**result, "torch_img_s": float("nan"), "ratio": float("nan"), "rel_diff": float("nan")}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    mean = torch.tensor(oracle.BGR_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(oracle.BGR_STD, device=device).view(1, 3, 1, 1)
    xt = torch.from_numpy(x).to(device)

    def torch_step() -> torch.Tensor:
        with torch.no_grad():
            inp = (xt.permute(0, 3, 1, 2).float().div(255) - mean) / std
            out = model(inp)[0][-1]
            out = F.interpolate(out, size=(input_size, input_size), mode="bilinear", align_corners=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    torch_out = torch_step().permute(0, 2, 3, 1).cpu().numpy()
    t_torch = _median_seconds(torch_step, iters, warmup)
    rel = float(np.abs(jax_out - torch_out).max() / np.abs(torch_out).max())
    return {**result, "torch_img_s": b / t_torch, "ratio": t_torch / t_jax, "rel_diff": rel, "torch_device": device}


def _main() -> None:
    import jax
    from absl import flags

    f = flags.FLAGS
    r = benchmark(
        f.parser,
        input_size=f.input_size,
        batch=f.batch,
        dtype=f.dtype,
        iters=f.iters,
        warmup=f.warmup,
        tiny=f.tiny,
        skip_torch=f.skip_torch,
    )
    net = "tiny" if f.tiny else ("ResNet-101 (random weights)" if f.parser is None else f.parser)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; JAX devices: "
        f"{r['devices']} x {jax.devices()[0].device_kind}; torch: {r.get('torch_device', 'skipped')}"
    )
    print(
        f"network: {net}; input {f.input_size}x{f.input_size}; batch {r['batch']}; dtype {f.dtype}; "
        f"median of {f.iters} after {f.warmup} warm-up"
    )
    print(f"max |JAX - PyTorch| / max |PyTorch| = {r['rel_diff']:.2e}")
    print(
        f"parser (device part)  JAX {r['jax_img_s']:.2f} img/s  PyTorch {r['torch_img_s']:.2f} img/s  "
        f"JAX/PyTorch speed {r['ratio']:.2f}x"
    )


def define_flags() -> None:
    """The command line's flags (defined only when run as a program)."""
    from absl import flags

    flags.DEFINE_string("parser", None, "Converted parser folder (default: random ResNet-101 weights).")
    flags.DEFINE_integer("input_size", 473, "Square network input size (SCHP LIP: 473).")
    flags.DEFINE_integer("batch", 8, "Images per batch (all devices together).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "JAX convolution dtype (PyTorch: float32).")
    flags.DEFINE_integer("iters", 5, "Timed batches per side.")
    flags.DEFINE_integer("warmup", 1, "Untimed batches per side (compilation).")
    flags.DEFINE_bool("tiny", False, "Without --parser: the tests' small network instead of ResNet-101.")
    flags.DEFINE_bool("skip_torch", False, "Time the JAX side only.")


if __name__ == "__main__":
    define_flags()
    cli.run(_main)

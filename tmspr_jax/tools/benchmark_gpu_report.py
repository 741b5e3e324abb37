"""``tools.benchmark_gpu``'s report: the markdown table of its result dict (what the README quotes), the speed goals
read from the figures, and the JSON and table files."""

from __future__ import annotations

import json
import os
from typing import Any


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def markdown_table(res: dict[str, Any]) -> str:
    """The README table of a result dict (as written to the JSON)."""
    dev, dtypes = res["device"], res["settings"]["dtypes"]
    torch_res = res.get("torch") or {}
    torch_head = f"PyTorch AMP ({torch_res['amp_dtype']})" if torch_res.get("amp_dtype") else "PyTorch float32"
    head = [f"JAX {d}" for d in dtypes] + ([torch_head] if torch_res else [])
    lines = [
        f"Device: {dev['device_kind']} ({dev['platform']}), jax {dev['jax_version']}"
        + (f", torch {torch_res['torch_version']}" if torch_res else "")
        + f"; model {res['model']}.",
        "",
        "| measurement | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    tb, eb = res["settings"]["train_batch"], res["settings"]["eval_batch"]

    def row(name: str, values: list[str], torch_value: str | None = None) -> None:
        cells = values + ([torch_value or "-"] if torch_res else [])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    tr, ev = res["train"], res["eval"]
    row(
        f"training step, batch {tb} x 4 views: samples/s",
        [_fmt(tr.get(d, {}).get("samples_per_s"), ".1f") for d in dtypes],
        _fmt(torch_res.get("train", {}).get("samples_per_s"), ".1f"),
    )
    row(
        "training step: ms",
        [_fmt(tr.get(d, {}).get("step_s"), ".1f", 1e3) for d in dtypes],
        _fmt(torch_res.get("train", {}).get("step_s"), ".1f", 1e3),
    )
    row("training step: model FLOP utilisation", [_fmt(tr.get(d, {}).get("mfu"), ".1%") for d in dtypes])
    row("training step: attention implementation", [str(tr.get(d, {}).get("attention", "-")) for d in dtypes])
    mem = res.get("memory") or {}
    row(
        f"kept for the backward pass per sample, MiB (memory mode '{mem.get('mode', '-')}')",
        [_fmt(mem.get(d, {}).get("kept_per_sample_mib"), ",.0f") for d in dtypes],
    )
    row(
        f"memory estimate at batch {tb}, GiB",
        [_fmt(mem.get(d, {}).get("estimate_gib", {}).get(str(tb)), ".1f") for d in dtypes],
    )
    row(
        "training step: device peak memory, GiB",
        [_fmt(tr.get(d, {}).get("peak_bytes_in_use"), ".2f", 2**-30) for d in dtypes],
        _fmt(torch_res.get("peak_bytes_allocated"), ".2f", 2**-30),
    )
    for d, t in (res.get("throughput") or {}).items():
        row(
            f"training step, batch {t['batch']} (throughput): samples/s, device peak GiB",
            [
                f"{_fmt(t.get('samples_per_s'), '.1f')}, {_fmt(t.get('peak_bytes_in_use'), '.2f', 2**-30)}"
                if x == d
                else "-"
                for x in dtypes
            ],
        )
    row(
        f"test feature, batch {eb}: images/s",
        [_fmt(ev.get(d, {}).get("images_per_s"), ".1f") for d in dtypes],
        _fmt(torch_res.get("eval", {}).get("images_per_s"), ".1f"),
    )
    row("test feature: model FLOP utilisation", [_fmt(ev.get(d, {}).get("mfu"), ".1%") for d in dtypes])
    ratios = res.get("ratios", {})
    if ratios:
        row(
            "speed against PyTorch (train / test)",
            [f"{_fmt(ratios.get(f'train_{d}'), '.2f')}x / {_fmt(ratios.get(f'eval_{d}'), '.2f')}x" for d in dtypes],
        )
    lines.append("")
    mm = res.get("matmul_bf16")
    if mm:
        lines.append(
            f"bfloat16 matmul {mm['n']}x{mm['n']}: {mm['tflops']:.3g} TFLOP/s"
            + (
                f" ({mm['fraction_of_peak']:.0%} of the {dev['peak_name']} peak)"
                if mm["fraction_of_peak"]
                else " (no peak known for this device)"
            )
        )
    for name, met in (res.get("goals") or {}).items():
        lines.append(f"Goal {name}: {'met' if met else 'not met' if met is not None else 'not measured'}.")
    data = res.get("data")
    if data:
        lines.append(
            f"Input pipeline: {data['samples_per_s']:.0f} samples/s with {data['workers']} worker processes "
            f"on {data['host_cores']} host cores."
        )
    return "\n".join(lines) + "\n"


GOALS = (
    ("training bfloat16: model FLOP utilisation >= 50%", ("train", "bfloat16", "mfu"), 0.5),
    ("training bfloat16: >= 3x the PyTorch oracle with AMP", ("ratios", "train_bfloat16"), 3.0),
    ("test feature bfloat16: >= 6,000 images/s", ("eval", "bfloat16", "images_per_s"), 6000.0),
)


def goals(res: dict[str, Any]) -> dict[str, bool | None]:
    """Each speed goal (for ViT-B on an H100-class GPU) met (True/False), or None where its figure is missing (no
    peak known, no oracle) or the model is the tiny one."""
    out = {}
    for name, path, least in GOALS:
        if res["settings"].get("tiny"):
            out[name] = None
            continue
        v: Any = res
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        out[name] = None if v is None else bool(v >= least)
    return out


def write_report(res: dict[str, Any], out: str, table: str) -> None:
    """The result dict to ``out`` (JSON) and its table to ``table`` (markdown)."""
    for path in (out, table):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    with open(table, "w") as f:
        f.write(markdown_table(res))

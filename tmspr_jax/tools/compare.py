r"""The PyTorch baseline and the JAX port side by side: same weights, same images, same batches.

    python -m tmspr_jax.tools.compare --torch_checkpoint SRC.pth --config=configs/occ_duke.py \
        [--max_images=N] [--out=compare.json] [--device=auto|cpu|cuda]

``SRC`` is a trained T-MSPR or TransReID (JPM) checkpoint as the reference saves it (``.pth``, optionally wrapped in
``state_dict``/``model`` and with a ``module.`` prefix) or the same tensors as ``.safetensors``. It is read once; the
reference's unused modules are dropped (``convert_weights.tmspr.strip_unused``), the result is loaded strictly into
the PyTorch oracle (``tmspr_jax.oracles.tmspr.TorchTMSPR``) and converted strictly for the JAX model
(``convert_weights.mapping.reference_to_variables``). A TransReID checkpoint gets T-MSPR's extra heads initialised as
the reference initialises them (the same tensors on both sides).

Both run over the config's test dataset (``data.test``): query then gallery, ``data.test_batch_size`` images per batch
and a smaller last batch, the very same batches on both sides, so the batch-wise min-max of the part attention
(``model.part_norm='batch'``) sees the same images. The oracle computes the eval feature as the reference does: the
full four-view graph on four copies of the image, in float32 (TF32 off on CUDA). The JAX port computes only what the
feature needs (``TMSPR.extract``) under ``jax_default_matmul_precision='highest'`` (TF32 off on GPU as well).

Printed (and written to ``--out`` as JSON): per-slice feature differences (``'before'``: global, jpm1..4, part1..5;
``'after'``: global, jpm1..4 after their BNNecks) as max |a-b| and max |a-b| / max |b| (b = PyTorch); both sides'
mAP / Rank-1/5/10 / mINP and their differences; and the model time of each side (device inputs to device features,
after a warm-up, JIT compilation and data loading excluded) as images/s, with the device names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from tmspr_jax.experiment import eval_model_config
from tmspr_jax.tools import cli
from tmspr_jax.utils import USER_ERRORS, check_output_path, error_message, jsonable

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config of the model and the test dataset (data.test).", lock_config=True
)
_CKPT = flags.DEFINE_string("torch_checkpoint", None, "Trained T-MSPR / TransReID checkpoint (.pth or .safetensors).")
_MAX_IMAGES = flags.DEFINE_integer(
    "max_images", 0, "Use only the first N query and the first N gallery images (a quick check); 0 = all."
)
_OUT = flags.DEFINE_string("out", "", "Also write the results as JSON to this file.")
_DEVICE = flags.DEFINE_enum("device", "auto", ["auto", "cpu", "cuda"], "PyTorch device (auto: cuda when available).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the T-MSPR heads initialised for a TransReID checkpoint.")

#: Metrics compared (fractions in [0, 1], as ``evaluate.compute_metrics`` returns them).
METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")
PRECISION_NOTE = (
    "JAX: jax_default_matmul_precision='highest' (no TF32/bf16 passes in matmuls and convolutions); "
    "PyTorch: float32, TF32 disabled for matmuls and cuDNN convolutions"
)


class CompareError(ValueError):
    """A user error (file, keys, dataset, device); the message names what is wrong and what was expected."""


# ------------------------------------------------------------------------------------------------------ features


def feature_slices(embed_dim: int, neck_feat: str) -> list[tuple[str, int, int]]:
    """``(name, start, stop)`` of every ``embed_dim``-wide slice of the eval feature (docs/reference.md §13.1)."""
    if neck_feat == "before":
        names = ["global"] + [f"jpm{k}" for k in range(1, 5)] + [f"part{k}" for k in range(1, 6)]
    elif neck_feat == "after":
        names = ["global_bn"] + [f"jpm{k}_bn" for k in range(1, 5)]
    else:
        raise CompareError(f"config.model.neck_feat={neck_feat!r}, expected 'before' or 'after'")
    return [(n, i * embed_dim, (i + 1) * embed_dim) for i, n in enumerate(names)]


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    max_abs = float(np.max(np.abs(a64 - b64)))
    scale = float(np.max(np.abs(b64)))
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)}


def slice_differences(
    jax_feats: np.ndarray, torch_feats: np.ndarray, slices: list[tuple[str, int, int]]
) -> dict[str, dict[str, float]]:
    """Per slice: ``max_abs`` = max|a-b| and ``max_rel`` = max|a-b| / max|b| over all images (a JAX, b PyTorch)."""
    if jax_feats.shape != torch_feats.shape:
        raise ValueError(f"feature shapes differ: JAX {jax_feats.shape} vs PyTorch {torch_feats.shape}")
    width = slices[-1][2]
    if jax_feats.ndim != 2 or jax_feats.shape[1] != width:
        raise ValueError(f"features have shape {jax_feats.shape}, expected [N, {width}] ({len(slices)} slices)")
    return {name: _diff(jax_feats[:, lo:hi], torch_feats[:, lo:hi]) for name, lo, hi in slices}


# ------------------------------------------------------------------------------------------------------ loading


@dataclasses.dataclass
class LoadedModels:
    """One checkpoint, loaded on both sides."""

    jax_model: Any
    variables: dict
    torch_model: Any
    torch_device: Any
    kind: str  # 'tmspr' or 'transreid'
    report: Any  # convert_weights.tmspr.ConversionReport
    filled_counters: list[str]


def _torch_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CompareError(
            "--device=cuda but PyTorch sees no CUDA device (torch.cuda.is_available() is False); use --device=cpu"
        )
    return torch.device(name)


def load_models(path: str, config: ml_collections.ConfigDict, device: str = "auto", seed: int = 0) -> LoadedModels:
    """Reads ``path`` once and loads it strictly into the PyTorch oracle and into the JAX model of ``config``.

    Raises :class:`CompareError` (missing file, unreadable file, wrong keys or shapes, grid mismatch) with the
    converter's message, which names the keys.
    """
    import torch  # noqa: F401  (fail here, before any work, when the [torch] extra is missing)

    from convert_weights.mapping import MappingError, reference_to_variables
    from convert_weights.readers import CheckpointError, read_checkpoint
    from convert_weights.tmspr import tmspr_to_reference
    from tmspr_jax.oracles.tmspr import build_torch_model, load_numpy_state

    if not os.path.isfile(path):
        raise CompareError(f"--torch_checkpoint {path!r}: no such file")
    img_size = tuple(int(s) for s in config.img_size)
    try:
        state = read_checkpoint(path)
        # strips the unused modules, checks counts and the grid, builds the JAX model for the checkpoint's counts
        # the JAX side computes the test features in eval.dtype (float32 by default), as the trainer's evaluation
        model_cfg = eval_model_config(config)
        ref, report, kind, model = tmspr_to_reference(state, model_cfg, img_size, jax.random.key(seed), source=path)
        variables, _ = reference_to_variables(ref, model, source=path)
    except (CheckpointError, MappingError, FileNotFoundError) as e:
        raise CompareError(str(e)) from None

    dev = _torch_device(device)
    oracle = build_torch_model(config.model, img_size, model.num_classes, model.num_cameras)
    want = oracle.state_dict()
    # BatchNorm's step counters are not used in eval; some exports drop them. Every other key must be present.
    filled = sorted(k for k in want if k.endswith(".num_batches_tracked") and k not in ref)
    torch_state = {
        k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating) else v for k, v in ref.items()
    }
    torch_state.update({k: np.zeros((), np.int64) for k in filled})
    try:
        load_numpy_state(oracle, torch_state)
    except RuntimeError as e:
        raise CompareError(f"{path!r}: cannot be loaded strictly into the PyTorch oracle: {e}") from None
    oracle.to(dev).eval()
    return LoadedModels(model, variables, oracle, dev, kind, report, filled)


# ------------------------------------------------------------------------------------------------------ data


class _FirstRecords:
    """The first ``n`` records of a split (``--max_images``); what ``pipeline.eval_batches`` needs of a split."""

    def __init__(self, split: Any, n: int):
        self._split = split
        self._n = min(int(n), len(split))
        self.pids = np.asarray(split.pids)[: self._n]
        self.camids = np.asarray(split.camids)[: self._n]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        if not 0 <= int(index) < self._n:
            raise IndexError(f"index {index} out of range for the first {self._n} records")
        return self._split[int(index)]


def open_test_splits(config: ml_collections.ConfigDict, max_images: int = 0) -> tuple[Any, Any]:
    """Query and gallery of ``config.data.test`` (built from ``data.manual_dir`` on first use), capped at
    ``max_images`` records each when > 0."""
    from tmspr_jax.data import sources
    from tmspr_jax.datagen import ensure

    d = config.data
    if max_images < 0:
        raise CompareError(f"--max_images={max_images}: expected >= 0 (0 = all images)")
    if d.synthetic and d.manual_dir:
        ensure.ensure_synthetic_dataset(d.manual_dir, d.synthetic_options.to_dict())
    try:
        splits = [
            sources.open_split(d.test, s, d.data_dir, manual_dir=d.manual_dir or None) for s in ("query", "gallery")
        ]
    except (FileNotFoundError, ValueError) as e:
        raise CompareError(str(e)) from None
    for s in splits:
        if len(s) == 0:
            raise CompareError(f"dataset {d.test!r} split {s.split!r} under {d.data_dir} is empty")
    if max_images:
        splits = [_FirstRecords(s, max_images) for s in splits]
    return splits[0], splits[1]


def _check_cameras(splits: tuple[Any, Any], model: Any, dataset: str) -> None:
    rows = int(model.num_cameras)
    if rows <= 1:
        return  # no camera embedding
    top = max(int(np.max(s.camids)) for s in splits)
    if top >= rows:
        raise CompareError(
            f"dataset {dataset!r} has camera ids up to {top}, but the checkpoint's camera embedding "
            f"base.sie_embed has {rows} rows; compare on the dataset the checkpoint was trained for, "
            "or a checkpoint trained without SIE with --config.model.sie_camera=False"
        )


# ------------------------------------------------------------------------------------------------------ running


@dataclasses.dataclass
class _Timer:
    seconds: float = 0.0
    images: int = 0


def _jax_device_name() -> str:
    # benchmark.py has the same helper, but importing it would register its absl flags ('config') a second time.
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    cpu = f" ({platform.processor() or platform.machine()})" if d.platform == "cpu" else ""
    return f"{d.platform}: {kind} x{jax.device_count()}{cpu}"


def _torch_device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def fp32_precision() -> Iterator[None]:
    """Full float32 matmuls/convolutions on both sides for the duration (restored afterwards).

    JAX: ``jax_default_matmul_precision='highest'`` (part of the jit cache key, so it applies to what is compiled
    inside); PyTorch: TF32 off for matmuls and cuDNN convolutions. Without it GPU TF32 would spoil float32 parity.
    """
    import torch

    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def _run_split(
    loaded: LoadedModels,
    split: Any,
    config: ml_collections.ConfigDict,
    mesh,
    extract_fn: Callable,
    variables: Any,
    timers: dict[str, _Timer],
    progress: Callable[[int], None] | None,
):
    """Both models over the same batches of one split; returns (jax (feats, pids, camids), torch feats)."""
    import torch

    from tmspr_jax import inference
    from tmspr_jax.data import pipeline

    dev = loaded.torch_device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    torch_feats: list[np.ndarray] = []

    def with_torch(batches: Iterator[Mapping[str, np.ndarray]]):
        # the oracle sees exactly the valid rows of the batch the JAX model gets next
        for batch in batches:
            keep = np.asarray(batch["valid"], bool)
            images = torch.from_numpy(np.ascontiguousarray(batch["images"][keep].transpose(0, 3, 1, 2))).to(dev)
            cams = torch.from_numpy(np.asarray(batch["camids"])[keep].astype(np.int64)).to(dev)
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                out = loaded.torch_model.extract(images, cams)
            sync()
            timers["torch"].seconds += time.perf_counter() - t0
            timers["torch"].images += int(keep.sum())
            torch_feats.append(out.float().cpu().numpy())
            yield batch

    def timed_extract(v, images, camids, valid):
        t0 = time.perf_counter()
        out = jax.block_until_ready(extract_fn(v, images, camids, valid))
        timers["jax"].seconds += time.perf_counter() - t0
        timers["jax"].images += int(np.asarray(jax.device_get(valid)).sum())
        return out

    batches = pipeline.eval_batches(config, split, pad_to=mesh.devices.size)
    jax_out = inference.extract_features(timed_extract, variables, with_torch(batches), mesh, progress=progress)
    return jax_out, np.concatenate(torch_feats)


def _warm_up(
    loaded: LoadedModels,
    config: ml_collections.ConfigDict,
    splits: tuple[Any, Any],
    mesh,
    extract_fn: Callable,
    variables: Any,
) -> float:
    """Compiles the JAX function for every batch size the splits will give and runs the oracle once; returns the
    JAX compile time in seconds."""
    import torch

    from tmspr_jax import sharding
    from tmspr_jax.data import pipeline

    h, w = (int(s) for s in config.img_size)
    sizes = sorted(
        {
            len(rows)
            for s in splits
            for rows in pipeline.eval_layout(len(s), int(config.data.test_batch_size), pad_to=mesh.devices.size)
        }
    )
    t0 = time.perf_counter()
    for b in sizes:
        arrays = sharding.shard_batch(
            {"images": np.zeros((b, h, w, 3), np.float32), "camids": np.zeros(b, np.int32), "valid": np.ones(b, bool)},
            mesh,
        )
        jax.block_until_ready(extract_fn(variables, arrays["images"], arrays["camids"], arrays["valid"]))
    compile_s = time.perf_counter() - t0
    b = min(sizes[-1], 8)
    with torch.no_grad():
        loaded.torch_model.extract(
            torch.zeros(b, 3, h, w, device=loaded.torch_device),
            torch.zeros(b, dtype=torch.int64, device=loaded.torch_device),
        )
    return compile_s


def _metrics(query: tuple, gallery: tuple, eval_cfg) -> dict[str, float]:
    from tmspr_jax import inference

    res = inference.evaluate_features(query, gallery, eval_cfg)
    return {k: float(res[k]) for k in METRICS}


def run_compare(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    *,
    max_images: int = 0,
    device: str = "auto",
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Runs the comparison and returns the results (the JSON written by ``--out``).

    Keys: ``checkpoint``, ``kind``, ``dataset``, ``num_query``, ``num_gallery``, ``test_batch_size``, ``neck_feat``,
    ``jax_dtype``, ``precision``, ``slices`` (name -> ``max_abs``, ``max_rel``), ``overall`` (same over the whole
    feature), ``metrics`` (``jax``, ``torch``, ``diff`` = JAX - PyTorch; fractions), ``timing`` (``jax`` / ``torch``:
    ``device``, ``seconds``, ``images``, ``images_per_s``; ``jax_compile_s``; ``jax_speedup`` = PyTorch time / JAX
    time), ``converter`` (what the conversion dropped, initialised or filled).
    """
    import torch
    from tqdm import tqdm

    from tmspr_jax import inference, sharding

    if jax.process_count() != 1:
        raise CompareError(
            "the comparison runs in a single process (the oracle needs whole batches); "
            f"got jax.process_count()={jax.process_count()}"
        )
    loaded = load_models(checkpoint, config, device, seed)
    splits = open_test_splits(config, max_images)
    _check_cameras(splits, loaded.jax_model, config.data.test)

    mesh = sharding.make_data_mesh()
    extract_fn = inference.make_extract_fn(loaded.jax_model)
    timers = {"jax": _Timer(), "torch": _Timer()}
    total = sum(len(s) for s in splits)
    bar = tqdm(total=total, desc="compare", unit="img", disable=not show_progress, mininterval=2.0, leave=False)
    with fp32_precision(), jax.set_mesh(mesh):
        variables = sharding.replicate(loaded.variables, mesh)
        compile_s = _warm_up(loaded, config, splits, mesh, extract_fn, variables)
        results = [_run_split(loaded, s, config, mesh, extract_fn, variables, timers, bar.update) for s in splits]
    bar.close()
    (jq, tq), (jg, tg) = results
    jax_feats, torch_feats = np.concatenate([jq[0], jg[0]]), np.concatenate([tq, tg])

    slices = feature_slices(int(loaded.jax_model.embed_dim), str(config.model.neck_feat))
    per_slice = slice_differences(jax_feats, torch_feats, slices)
    m_jax = _metrics(jq, jg, config.eval)
    m_torch = _metrics((tq, jq[1], jq[2]), (tg, jg[1], jg[2]), config.eval)

    def timing(t: _Timer, dev: str) -> dict[str, Any]:
        return {
            "device": dev,
            "seconds": t.seconds,
            "images": t.images,
            "images_per_s": t.images / t.seconds if t.seconds > 0 else math.inf,
        }

    return {
        "checkpoint": os.path.abspath(checkpoint),
        "kind": loaded.kind,
        "dataset": str(config.data.test),
        "num_query": len(splits[0]),
        "num_gallery": len(splits[1]),
        "test_batch_size": int(config.data.test_batch_size),
        "neck_feat": str(config.model.neck_feat),
        "part_norm": str(config.model.part_norm),
        "jax_dtype": str(config.eval.dtype),
        "precision": PRECISION_NOTE,
        "slices": per_slice,
        "overall": _diff(jax_feats, torch_feats),
        "metrics": {"jax": m_jax, "torch": m_torch, "diff": {k: m_jax[k] - m_torch[k] for k in METRICS}},
        "timing": {
            "jax": timing(timers["jax"], f"{_jax_device_name()} (jax {jax.__version__})"),
            "torch": timing(timers["torch"], f"{_torch_device_name(loaded.torch_device)} (torch {torch.__version__})"),
            "jax_compile_s": compile_s,
            "jax_speedup": timers["torch"].seconds / timers["jax"].seconds if timers["jax"].seconds > 0 else math.inf,
        },
        "converter": {
            "skipped": sorted(loaded.report.skipped),
            "initialised": sorted(loaded.report.initialised),
            "filled_counters": loaded.filled_counters,
        },
    }


# ------------------------------------------------------------------------------------------------------ output


def format_report(r: Mapping[str, Any]) -> str:
    """The results as a readable text table."""
    lines = [
        f"checkpoint: {r['checkpoint']} ({r['kind']})",
        f"data: {r['dataset']}, {r['num_query']} query + {r['num_gallery']} gallery images, "
        f"test_batch_size {r['test_batch_size']}, part_norm {r['part_norm']}, neck_feat {r['neck_feat']}, "
        f"JAX dtype {r['jax_dtype']}",
        f"precision: {r['precision']}",
        f"converter: {len(r['converter']['skipped'])} unused reference tensors dropped, "
        f"{len(r['converter']['initialised'])} tensors initialised (absent from the checkpoint), "
        f"{len(r['converter']['filled_counters'])} BatchNorm counters filled",
        "",
        "feature differences (a = JAX, b = PyTorch; rel = max|a-b| / max|b|)",
        f"  {'slice':<10} {'max abs':>12} {'max rel':>12}",
    ]
    for name, d in [*r["slices"].items(), ("all", r["overall"])]:
        lines.append(f"  {name:<10} {d['max_abs']:12.3e} {d['max_rel']:12.3e}")
    m = r["metrics"]
    lines += ["", f"  {'metric':<10} {'JAX':>10} {'PyTorch':>10} {'JAX-PyTorch':>12}"]
    for k in METRICS:
        lines.append(f"  {k:<10} {m['jax'][k]:10.2%} {m['torch'][k]:10.2%} {m['diff'][k] * 100:+11.4f}pt")
    t = r["timing"]
    lines += ["", f"  {'model':<8} {'images':>7} {'seconds':>9} {'images/s':>10}  device"]
    for side, label in (("jax", "JAX"), ("torch", "PyTorch")):
        s = t[side]
        lines.append(f"  {label:<8} {s['images']:7d} {s['seconds']:9.2f} {s['images_per_s']:10.1f}  {s['device']}")
    lines.append(
        f"  JAX speed-up: {t['jax_speedup']:.2f}x (PyTorch time / JAX time; model time only, after warm-up; "
        f"JAX compile {t['jax_compile_s']:.1f}s not counted; PyTorch runs the reference's full 4-view graph)"
    )
    return "\n".join(lines)


def write_json(path: str, results: Mapping[str, Any]) -> None:
    """Writes ``results`` as indented JSON (creating the parent folder)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(jsonable(results), f, indent=1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (the model and the test dataset)")
    if not _CKPT.value:
        raise app.UsageError("--torch_checkpoint is required")
    try:
        import torch  # noqa: F401
    except ImportError:
        print(
            "compare: error: PyTorch is not installed; install the [torch] extra (pip install 'tmspr_jax[torch]')",
            file=sys.stderr,
        )
        sys.exit(1)
    logging.set_verbosity(logging.WARNING)
    try:
        if _OUT.value:
            check_output_path(_OUT.value, "file")  # before the checkpoint is read
        results = run_compare(
            _CONFIG.value,
            _CKPT.value,
            max_images=_MAX_IMAGES.value,
            device=_DEVICE.value,
            seed=_SEED.value,
            show_progress=sys.stderr.isatty(),
        )
    except USER_ERRORS as e:  # CompareError, CorruptImageError, a bad config value: one line
        print(f"compare: error: {error_message(e)}", file=sys.stderr)
        sys.exit(1)
    print(format_report(results))
    if _OUT.value:
        write_json(_OUT.value, results)
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)

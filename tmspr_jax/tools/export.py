"""A checkpoint's test-feature function as one serialized StableHLO program (``jax.export``), weights included.

    python -m tmspr_jax.tools.export --config=configs/occ_duke.py --checkpoint=DIR --out=tmspr.jax_exported \
        [--platforms=cpu,cuda] [--batch=0]

``--checkpoint`` is a converted weights folder (with ``meta.json``: no dataset needed) or a training workdir (the
config's training split is opened for its identity and camera counts). The program maps

* ``images`` float32 ``[b, H, W, 3]``, normalised as the evaluation transform does (resize to ``img_size``, then
  ``(x/255 - mean)/std``), and
* ``camids`` int32 ``[b]`` (0-based cameras; any value when the model has no camera embedding)

to the evaluation feature float32 ``[b, D]``. A program cannot raise, so a camera id outside the camera table
(``0 <= camid < num_cameras`` in ``<out>.json``) gives a row of NaN instead of the silently clamped row that indexing
would read; such rows take no part in the batch's part normalisation (``eval.flip`` included; L2-normalise it before
ranking, as the evaluation does). ``--batch=0`` exports a symbolic batch size: one file serves every batch of 1 or more
(a batch of none is refused by the program's shape check: JAX's symbolic sizes are at least 1). With
``model.part_norm='batch'`` (the reference's default) a feature depends on the rest of its batch, as in the reference.
Anywhere JAX runs, without this package::

    exported = jax.export.deserialize(open("tmspr.jax_exported", "rb").read())
    features = exported.call(images, camids)

``<out>.json`` records what a caller needs: ``img_size``, ``mean``, ``std``, ``feature_dim``, ``flip``, ``platforms``.

``--format=onnx`` writes the same function as an ONNX model (jax2onnx; ``pip install -e '.[onnx]'``) with inputs
``images`` ``[batch, H, W, 3]`` and ``camids`` ``[batch]`` and output ``features``, the batch axis dynamic unless
``--batch`` fixes it; outside JAX::

    import onnxruntime
    program = onnxruntime.InferenceSession("tmspr.onnx")
    features = program.run(None, {"images": images, "camids": camids})[0]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from tmspr_jax import inference
from tmspr_jax.tools import cli
from tmspr_jax.utils import check_output_path

FORMATS = ("stablehlo", "onnx")


def export_features_fn(
    model: Any,
    variables: Any,
    img_size: Sequence[int],
    *,
    flip: bool = False,
    batch: int = 0,
    platforms: Sequence[str] | None = None,
) -> jax.export.Exported:
    """``jax.export`` of ``(images [b,H,W,3], camids [b]) -> features [b, D]`` with ``variables`` as constants.

    ``batch=0`` makes ``b`` symbolic; ``platforms`` (e.g. ``('cpu', 'cuda')``) defaults to the current backend.
    """
    if batch < 0:
        raise ValueError(f"batch must be >= 0 (0 = any batch size), got {batch}")
    features = feature_function(model, variables, flip=flip)
    b = jax.export.symbolic_shape("b")[0] if batch == 0 else int(batch)
    h, w = int(img_size[0]), int(img_size[1])
    args = (jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32))
    return jax.export.export(jax.jit(features), platforms=tuple(platforms) if platforms else None)(*args)


def feature_function(model: Any, variables: Any, *, flip: bool = False) -> Any:
    """``(images, camids) -> features`` with ``variables`` as constants, the function both formats export."""
    extract = inference.make_extract_fn(model, flip=flip)
    variables = jax.tree.map(jnp.asarray, variables)
    num_cameras = camera_table_size(model)

    def features(images: jax.Array, camids: jax.Array) -> jax.Array:
        if num_cameras:
            valid = (camids >= 0) & (camids < num_cameras)
            out = extract(variables, images, jnp.clip(camids, 0, num_cameras - 1), valid)
            return jnp.where(valid[:, None], out, jnp.nan)
        return extract(variables, images, camids, jnp.ones(images.shape[:1], bool))

    return features


def _import_onnx() -> tuple[Any, Any]:
    try:
        import jax2onnx
        import onnx
    except ImportError as e:
        raise ValueError(
            f"--format=onnx needs jax2onnx and onnx ({e}); install them with pip install -e '.[onnx]'"
        ) from e
    return jax2onnx, onnx


def export_onnx(model: Any, variables: Any, img_size: Sequence[int], *, flip: bool = False, batch: int = 0) -> Any:
    """The feature function as an ONNX ``ModelProto`` (jax2onnx), weights included: inputs ``images`` float32
    ``[batch, H, W, 3]`` and ``camids`` int32 ``[batch]``, output ``features`` float32 ``[batch, D]``; ``batch=0``
    leaves the batch axis dynamic."""
    if batch < 0:
        raise ValueError(f"batch must be >= 0 (0 = any batch size), got {batch}")
    jax2onnx, _ = _import_onnx()
    # jax2onnx sizes the per-branch slices of a stacked batch (out[k*b:(k+1)*b]) as 0 rows when b is symbolic; the
    # unstacked branches compute the same features from the same parameters.
    if getattr(model, "stack_branches", False):
        model = model.clone(stack_branches=False)
    features = feature_function(model, variables, flip=flip)
    b = "batch" if batch == 0 else int(batch)
    h, w = int(img_size[0]), int(img_size[1])
    args = [jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32)]
    return jax2onnx.to_onnx(
        features, args, model_name="tmspr_features", input_names=["images", "camids"], output_names=["features"]
    )


def camera_table_size(model: Any) -> int:
    """How many camera ids the model's camera embedding takes (0: it takes none, any id is accepted)."""
    cams = int(getattr(model, "num_cameras", 0))
    return cams if cams > 1 else 0


def _model_and_variables(
    config: ml_collections.ConfigDict, checkpoint: str, step: int | None = None
) -> tuple[Any, Any]:
    from tmspr_jax import experiment, weights
    from tmspr_jax.models import build_model

    path = os.path.abspath(os.path.expanduser(checkpoint))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--checkpoint {path!r} is not a folder (a converted weights folder or a workdir)")
    if weights.is_weights_folder(path):  # converted weights: their meta gives the head sizes
        with open(os.path.join(path, weights.META_FILE)) as f:
            meta = json.load(f)
        for key in ("num_classes", "num_cameras"):
            if key not in meta:
                raise ValueError(
                    f"{path}/{weights.META_FILE} has no {key!r}; re-convert the weights with convert_weights"
                )
        model_cfg = experiment.eval_model_config(config)  # the test features' compute dtype, as the trainer's
        model = build_model(model_cfg, tuple(config.img_size), int(meta["num_classes"]), int(meta["num_cameras"]))
        weights.check_model_size(meta, model, os.path.join(path, weights.META_FILE))  # before reading the arrays
        variables, _ = weights.load_variables(path)
        return model, variables
    exp = experiment.setup_experiment(config)
    return exp.eval_model, experiment.load_checkpoint_variables(path, exp, step=step)


def export_to_file(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    out: str,
    *,
    batch: int = 0,
    platforms: Sequence[str] | None = None,
    step: int | None = None,
    format: str = "stablehlo",
) -> str:
    """Exports ``checkpoint``'s feature function to ``out`` and its description to ``out + '.json'``; ``step``
    picks a training workdir's checkpoint (default: the best by mAP, else the latest); ``format`` is
    ``'stablehlo'`` (``jax.export``) or ``'onnx'``."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    check_output_path(out, "file")  # both before the checkpoint is read
    check_output_path(out + ".json", "file", flag="--out's description")
    if format == "onnx":
        _import_onnx()  # a missing extra is reported before the checkpoint is read
    model, variables = _model_and_variables(config, checkpoint, step)
    flip = bool(config.eval.flip)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if format == "onnx":
        proto = export_onnx(model, variables, config.img_size, flip=flip, batch=batch)
        _import_onnx()[1].save_model(proto, out)
        feature_dim = int(proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value)
        platforms_done = ["onnx"]
    else:
        exported = export_features_fn(model, variables, config.img_size, flip=flip, batch=batch, platforms=platforms)
        with open(out, "wb") as f:
            f.write(exported.serialize())
        feature_dim = int(exported.out_avals[0].shape[-1])
        platforms_done = list(exported.platforms)
    info = {
        "format": format,
        "img_size": [int(s) for s in config.img_size],
        "mean": [float(v) for v in config.data.mean],
        "std": [float(v) for v in config.data.std],
        "feature_dim": feature_dim,
        "flip": flip,
        "neck_feat": str(config.model.neck_feat),
        "part_norm": str(config.model.part_norm),
        "part_pool": str(config.model.part_pool),
        "batch": batch or "any",
        "num_cameras": camera_table_size(model),  # camids outside [0, num_cameras) give NaN rows; 0 = any id
        "platforms": platforms_done,
        "checkpoint": os.path.abspath(checkpoint),
    }
    with open(out + ".json", "w") as f:
        json.dump(info, f, indent=1)
    return out


def load_exported(path: str) -> jax.export.Exported:
    """Reads a file written by :func:`export_to_file` (``exported.call(images, camids)`` runs it)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no exported model at {path!r} (write one with python -m tmspr_jax.tools.export)")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception as e:  # flatbuffers / version errors come in several types
        raise ValueError(f"{path}: not a jax.export serialization ({type(e).__name__}: {e})") from e


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    config = cli.config_or_demo(f.config)
    platforms = [p for p in f.platforms.split(",") if p] if f.platforms else None
    path = export_to_file(
        config,
        f.checkpoint,
        f.out,
        batch=f.batch,
        platforms=platforms,
        step=f.step if f.step >= 0 else None,
        format=f.format,
    )
    with open(path + ".json") as fh:  # the description, not the (possibly large) program
        info = json.load(fh)
    shape = (info["batch"], *info["img_size"], 3)
    print(
        f"exported {config.data.test} features ({info['feature_dim']}-d) for images {shape} on "
        f"{', '.join(info['platforms'])} to {path} ({os.path.getsize(path) / 2**20:.1f} MiB)"
    )


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config of the checkpoint (default: the demo).")
    flags.DEFINE_string("checkpoint", None, "Converted weights folder or training workdir.")
    flags.DEFINE_string("out", None, "Output file (the description goes to <out>.json).")
    flags.DEFINE_integer("batch", 0, "Batch size of the program; 0 = symbolic (any batch of 1 or more).")
    flags.DEFINE_integer("step", -1, "Step of a training workdir to export; -1 = the best by mAP, else the latest.")
    flags.DEFINE_string("platforms", "", "Comma-separated: cpu, cuda, rocm, tpu (default: the current backend).")
    flags.DEFINE_enum("format", "stablehlo", list(FORMATS), "stablehlo: jax.export; onnx: jax2onnx (extra [onnx]).")
    cli.run(_main, required=["checkpoint", "out"])

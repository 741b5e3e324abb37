"""Opening a run: config -> data splits, model and mesh; its variables (initial, pretrained or from a checkpoint); the
test features and metrics; the records a run leaves in its workdir (``metrics.jsonl``, TensorBoard, ``results.json``,
``eval_results/``).

``python -m tmspr_jax.main`` (``--mode=eval``, the untrained baseline), the trainer (:mod:`tmspr_jax.train`) and the
tools (extract, export) share it; nothing here trains.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from tmspr_jax import checkpoints, config_check, evaluate, inference, sharding, weights
from tmspr_jax.data import pipeline, sources
from tmspr_jax.models import build_model, init_variables, vit
from tmspr_jax.utils import jsonable

# ---------------------------------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Experiment:
    """What training and evaluation share: the model (and its test-feature twin), the data splits, the mesh."""

    config: ml_collections.ConfigDict
    model: Any
    eval_model: Any  # the same parameters computing in eval.dtype (float32: the reference evaluates without autocast)
    mesh: jax.sharding.Mesh
    train_split: Any
    query_split: Any
    gallery_split: Any
    num_classes: int
    num_cameras: int
    grid: tuple[int, int]


def check_classifier_matches_loss(config: ml_collections.ConfigDict) -> None:
    """The margin ID losses read cosine similarities; the reference's softmax reads linear scores."""
    id_loss, classifier = config.loss.id_loss, config.model.classifier
    wanted = "linear" if id_loss == "softmax" else "cosine"
    if classifier != wanted:
        raise ValueError(
            f"config.loss.id_loss={id_loss!r} needs config.model.classifier={wanted!r}, got {classifier!r}"
        )


def eval_model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.model`` with the test features' compute dtype (``eval.dtype``) in place of the training one."""
    m = config.model.copy_and_resolve_references()
    m.dtype = config.eval.dtype
    return m


def setup_experiment(config: ml_collections.ConfigDict) -> Experiment:
    """Opens the dataset splits named by the config and builds the model for them."""
    d = config.data
    manual = d.manual_dir or None
    train_split = sources.open_split(d.train, "train", d.data_dir, manual_dir=manual)
    query_split = sources.open_split(d.test, "query", d.data_dir, manual_dir=manual)
    gallery_split = sources.open_split(d.test, "gallery", d.data_dir, manual_dir=manual)
    num_classes = int(train_split.num_classes)
    num_cameras = int(train_split.num_cameras) if config.model.sie_camera else 0
    test_cams = int(max(query_split.camids.max(initial=0), gallery_split.camids.max(initial=0))) + 1
    if config.model.sie_camera and num_cameras > 1 and test_cams > num_cameras:
        raise ValueError(
            f"The test split '{d.test}' has camera ids up to {test_cams - 1} but the SIE camera table learnt on "
            f"'{d.train}' has {num_cameras} rows; set --config.model.sie_camera=False or train on matching cameras."
        )
    model = build_model(config.model, tuple(config.img_size), num_classes, num_cameras)
    eval_model = build_model(eval_model_config(config), tuple(config.img_size), num_classes, num_cameras)
    mesh = sharding.make_data_mesh()
    grid = vit.patch_grid(tuple(config.img_size), config.model.patch_size, tuple(config.model.stride))
    return Experiment(
        config, model, eval_model, mesh, train_split, query_split, gallery_split, num_classes, num_cameras, grid
    )


# ---------------------------------------------------------------------------------------------------- variables

# ``(path, model_cfg, img_size, num_classes, num_cameras, rng) -> variables``: how ``config.model.pretrained`` (a
# PyTorch / JAX checkpoint file or a converted folder) becomes the model's variables. Reading PyTorch layouts is the
# converter's job and the library never imports it: ``python -m tmspr_jax.main`` passes
# ``convert_weights.convert.load_pretrained``.
PretrainedLoader = Callable[[str, Any, tuple[int, int], int, int, jax.Array], dict]


def initial_variables(exp: Experiment, rng: jax.Array, load_pretrained: PretrainedLoader | None = None) -> dict:
    """Random init, then the ImageNet ViT (``model.pretrained``, read by ``load_pretrained``) or a full checkpoint
    (``init_checkpoint``) on top."""
    cfg = exp.config
    if cfg.init_checkpoint:
        return load_checkpoint_variables(cfg.init_checkpoint, exp, step=_init_step(cfg))
    if cfg.model.pretrained:
        if load_pretrained is None:
            raise ValueError(
                f"config.model.pretrained={cfg.model.pretrained!r} needs a weights loader: train with "
                "python -m tmspr_jax.main, or pass load_pretrained=convert_weights.convert.load_pretrained"
            )
        return load_pretrained(
            cfg.model.pretrained, cfg.model, tuple(cfg.img_size), exp.num_classes, exp.num_cameras, rng
        )
    return init_variables(exp.model, rng)


def _init_step(config: ml_collections.ConfigDict) -> int | None:
    """``config.init_step``: a workdir's step to load; -1 = the best by mAP, else the latest."""
    return config.init_step if config.init_step >= 0 else None


def load_checkpoint_variables(path: str, exp: Experiment, step: int | None = None) -> dict:
    """Variables from a converted weights folder (``meta.json``) or a training workdir / its ``checkpoints`` folder.

    The model size is compared with the config's before any array is read. In a workdir: ``step`` when given (>= 0),
    else the best checkpoint by mAP, else the latest; a damaged one falls back to the newest intact one.
    """
    return load_checkpoint(path, exp, step)[0]


def load_checkpoint(path: str, exp: Experiment, step: int | None = None) -> tuple[dict, int | None]:
    """:func:`load_checkpoint_variables` and the step it restored (None for a converted weights folder)."""
    path = os.path.abspath(os.path.expanduser(path))
    if weights.is_weights_folder(path):
        if step is not None and step >= 0:
            raise ValueError(
                f"{path}: a converted weights folder holds one set of weights; a step ({step}) applies "
                "to training workdirs only."
            )
        meta_file = os.path.join(path, weights.META_FILE)
        with open(meta_file) as f:
            weights.check_model_size(json.load(f), exp.model, meta_file)
        variables, _ = weights.load_variables(path)
        return variables, None
    ckpt_dir = checkpoints.checkpoints_dir(path)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(
            f"init_checkpoint {path!r} is neither a converted weights folder (with meta.json) nor a training workdir "
            f"(with a checkpoints/ folder)."
        )
    manager = checkpoints.make_manager(path, 1, read_only=True)
    steps = checkpoints.candidate_steps(manager, step)
    if not steps:
        raise FileNotFoundError(f"No checkpoint in {ckpt_dir}.")
    if (step is None or step < 0) and manager.best_step() is None:
        logging.info(
            "No evaluated checkpoint in %s (the run stopped before its first evaluation): using the latest, step %d.",
            ckpt_dir,
            steps[0],
        )

    def expected_tree() -> dict:  # for checkpoints saved without their model size
        shapes = jax.eval_shape(lambda: init_variables(exp.model, jax.random.PRNGKey(0)))
        return {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}

    used, state, _ = checkpoints.restore_newest_intact(manager, steps, model=exp.model, expected_tree=expected_tree)
    logging.info("Restored step %d from %s", used, ckpt_dir)
    return {"params": state["params"], "batch_stats": state["batch_stats"]}, int(used)


# ---------------------------------------------------------------------------------------------------- evaluation


def run_evaluation(exp: Experiment, variables: Any, extract_fn: Callable | None = None, desc: str = "eval") -> dict:
    """Features of query then gallery, metrics with the reference's protocol."""
    query, gallery = extract_test_features(exp, variables, extract_fn, desc)
    return inference.evaluate_features(query, gallery, exp.config.eval)


def extract_test_features(
    exp: Experiment, variables: Any, extract_fn: Callable | None = None, desc: str = "eval"
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(features, pids, camids)`` of the query split and of the gallery split, in record order (``eval.flip``
    applies unless ``extract_fn`` is given)."""
    cfg = exp.config
    extract_fn = extract_fn or inference.make_extract_fn(exp.eval_model, flip=cfg.eval.flip)
    total = len(exp.query_split) + len(exp.gallery_split)
    bar = tqdm(total=total, desc=desc, unit="img", disable=jax.process_index() != 0, mininterval=2.0, leave=False)
    with jax.set_mesh(exp.mesh):
        variables = sharding.replicate(variables, exp.mesh)
        out = []
        for split in (exp.query_split, exp.gallery_split):
            batches = pipeline.eval_batches(
                cfg,
                split,
                pad_to=exp.mesh.devices.size,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
            out.append(inference.extract_features(extract_fn, variables, batches, exp.mesh, progress=bar.update))
    bar.close()
    return out[0], out[1]


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """``--mode=eval``: evaluates ``init_checkpoint`` (converted or trained) without training; returns its metrics with
    the ``checkpoint`` and ``step`` used, written to ``WORKDIR/eval_results/`` (:func:`eval_record_path`)."""
    if not config.init_checkpoint:
        raise ValueError("--mode=eval needs --config.init_checkpoint=DIR (a converted weights folder or a workdir).")
    config_check.check_config(config)
    exp = setup_experiment(config)
    variables, step = load_checkpoint(config.init_checkpoint, exp, step=_init_step(config))
    results = run_evaluation(exp, variables)
    record = dict(results, checkpoint=os.path.abspath(os.path.expanduser(config.init_checkpoint)), step=step)
    path = write_eval_record(workdir, record)
    logging.info("Evaluation of %s: %s (%s)", config.init_checkpoint, evaluate.summarize(results), path)
    return record


def eval_record_path(workdir: str, step: int | None) -> str:
    """Where ``--mode=eval`` writes: ``WORKDIR/eval_results/step_<N>.json`` for a training checkpoint's step ``N``,
    ``eval_results/weights.json`` for a converted weights folder; never the training's ``results.json``."""
    return os.path.join(workdir, EVAL_RESULTS_DIR, "weights.json" if step is None else f"step_{step}.json")


def write_eval_record(workdir: str, record: Mapping[str, Any]) -> str:
    """Writes an evaluation's results with the ``checkpoint`` and ``step`` they are of (atomically: a kill leaves the
    old record or the new one) at :func:`eval_record_path`; returns the path."""
    path = eval_record_path(workdir, record["step"])
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(jsonable(record), f, indent=1)
        os.replace(tmp, path)
    return path


def evaluate_untrained(
    config: ml_collections.ConfigDict, workdir: str, load_pretrained: PretrainedLoader | None = None
) -> dict:
    """The metrics of the model before training (its initial weights), for contrast; ``results_untrained.json``."""
    exp = setup_experiment(config)
    init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    with jax.set_mesh(exp.mesh):
        variables = initial_variables(exp, init_rng, load_pretrained)
    results = run_evaluation(exp, variables, desc="eval untrained")
    os.makedirs(workdir, exist_ok=True)
    write_results(workdir, results, name="results_untrained.json")
    return results


# ---------------------------------------------------------------------------------------------------- records

EVAL_RESULTS_DIR = "eval_results"


def write_results(workdir: str, results: Mapping[str, Any], name: str = "results.json") -> str:
    """Writes ``results`` as JSON into ``workdir`` (process 0); returns the path."""
    path = os.path.join(workdir, name)
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(jsonable(results), f, indent=1)
    return path


def read_results(workdir: str) -> dict:
    """``results.json`` of a workdir (empty when there is none)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


class MetricsLogger:
    """One JSON line per logged step / evaluation in ``WORKDIR/metrics.jsonl``, and TensorBoard events in
    ``WORKDIR/tb``."""

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        """``resume_step``: a run resumed from that step drops the rows logged after it (steps that will run again)
        from ``metrics.jsonl`` and tells TensorBoard to discard its events after it (``purge_step``)."""
        self.enabled = enabled
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            if resume_step is not None:
                _drop_rows_after(path, int(resume_step))
            self._file = open(path, "a", buffering=1)
            try:
                from tensorboardX import SummaryWriter

                purge = None if resume_step is None else int(resume_step) + 1
                self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=purge)
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                logging.warning("tensorboardX not installed: no TensorBoard events.")

    def write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "time": time.time()}
        for k, v in values.items():
            record[k] = jsonable(v)
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time") and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _drop_rows_after(path: str, step: int) -> None:
    """Rewrites ``metrics.jsonl`` without the rows of steps after ``step`` (atomically: a kill leaves one or the
    other)."""
    if not os.path.isfile(path):
        return
    keep, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                row_step = int(json.loads(line).get("step", 0))
            except (ValueError, AttributeError):
                row_step = None  # a line cut by a kill: dropped
            if row_step is not None and row_step <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        logging.info("metrics.jsonl: dropped %d rows after step %d (they run again).", dropped, step)

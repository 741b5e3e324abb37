"""Training with periodic evaluation, checkpoints and automatic resume.

One jitted step over a 1-D ``'data'`` mesh of all devices, one global program: the global batch is sharded, parameters
are replicated, the state is donated. The learning rates are set once per epoch, as the reference's scheduler is
stepped (docs/reference.md §10.2). Everything a restarted run needs is in the orbax checkpoint: the train state and the
data position (epoch and batch within it), so a killed run that is restarted ends with the same parameters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from tqdm import tqdm

from tmspr_jax import checkpoints, evaluate, inference, losses, optim, sharding, weights
from tmspr_jax.data import parsing, pipeline, sources
from tmspr_jax.models import build_model, init_variables, vit
from tmspr_jax.utils import jsonable


class NonFiniteLossError(RuntimeError):
    """Raised when a training step produced a NaN or infinite loss."""


class CheckpointSaveError(RuntimeError):
    """An asynchronous checkpoint save failed (a full disk, a lost mount): training stops."""


class Preempted(Exception):
    """SIGTERM stopped training after a step; its checkpoint is saved (the message says where and how to resume)."""

    exit_code = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


# ---------------------------------------------------------------------------------------------------- the step


def make_train_step(model, tx: optax.GradientTransformation, loss_cfg: ml_collections.ConfigDict) -> Callable:
    """``(state, batch, rng) -> (state, metrics)``; a step whose loss is not finite leaves the state unchanged."""

    def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            outputs, mutated = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["views"],
                batch["camids"],
                train=True,
                rngs={"drop_path": step_rng},
                mutable=["batch_stats"],
            )
            loss, terms = losses.total_loss(outputs, batch["pids"], batch["parsing"], batch["parsing_weight"], loss_cfg)
            return loss, (terms, mutated["batch_stats"])

        (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        finite = jnp.isfinite(loss)
        # Keep the last good state: the host stops the run when it sees `finite == False`.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics = {k: v for k, v in terms.items() if jnp.ndim(v) == 0}
        metrics["loss"] = loss
        metrics["finite"] = finite
        metrics["grad_norm"] = optax.tree.norm(grads)
        return new_state, metrics

    return train_step


# ---------------------------------------------------------------------------------------------------- logging


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


# ---------------------------------------------------------------------------------------------------- checkpoints


def make_checkpoint_manager(workdir: str, train_cfg) -> ocp.CheckpointManager:
    """Latest-N plus the best checkpoint by mAP (``best_step()`` works), saved asynchronously."""
    return checkpoints.make_manager(workdir, int(train_cfg.keep_checkpoints))


def _save_args(state: TrainState, pipe: Any, epoch: int, batch: int, model: Any = None) -> ocp.args.Composite:
    """The train state and the data position to resume from: the next batch to run, plus the pipeline's own state
    (seed, batch size, split size), which refuses a resume whose batches would differ; with the model's size and the
    state's checksums (see tmspr_jax.checkpoints)."""
    data = dict(pipe.get_state(), next_epoch=int(epoch), next_batch=int(batch))
    return checkpoints.save_args(state, data, model)


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
    """The train state and data position of ``step``, verified against their checksums."""
    return checkpoints.restore_verified(manager, step, abstract_state)


# ---------------------------------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Experiment:
    """What training and evaluation share: the model, the data splits, the mesh."""

    config: ml_collections.ConfigDict
    model: Any
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
    mesh = sharding.make_data_mesh()
    grid = vit.patch_grid(tuple(config.img_size), config.model.patch_size, tuple(config.model.stride))
    return Experiment(config, model, mesh, train_split, query_split, gallery_split, num_classes, num_cameras, grid)


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


def load_checkpoint_variables(path: str, exp: Experiment, step: int | None = None) -> dict:
    """Variables from a converted weights folder (``meta.json``) or a training workdir / its ``checkpoints`` folder.

    The model size is compared with the config's before any array is read. In a workdir: ``step`` when given (>= 0),
    else the best checkpoint by mAP, else the latest; a damaged one falls back to the newest intact one.
    """
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
        return variables
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
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


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
    extract_fn = extract_fn or inference.make_extract_fn(exp.model, flip=bool(cfg.eval.flip))
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


def write_results(workdir: str, results: Mapping[str, Any], name: str = "results.json") -> str:
    path = os.path.join(workdir, name)
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(jsonable(results), f, indent=1)
    return path


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """``--mode=eval``: evaluates ``init_checkpoint`` (converted or trained) without training."""
    if not config.init_checkpoint:
        raise ValueError("--mode=eval needs --config.init_checkpoint=DIR (a converted weights folder or a workdir).")
    exp = setup_experiment(config)
    variables = load_checkpoint_variables(config.init_checkpoint, exp, step=_init_step(config))
    results = run_evaluation(exp, variables)
    os.makedirs(workdir, exist_ok=True)
    write_results(workdir, results)
    logger = MetricsLogger(workdir, enabled=jax.process_index() == 0)
    logger.write("eval", 0, results)
    logger.close()
    logging.info("Evaluation of %s: %s", config.init_checkpoint, evaluate.summarize(results))
    return results


def _init_step(config: ml_collections.ConfigDict) -> int | None:
    """``config.init_step`` (a workdir's step to load; -1 or absent = the best by mAP, else the latest)."""
    step = int(config.get("init_step", -1))
    return step if step >= 0 else None


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


# ---------------------------------------------------------------------------------------------------- training


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    stop_after_steps: int | None = None,
    load_pretrained: PretrainedLoader | None = None,
) -> dict:
    """Trains ``config.train.epochs`` epochs with evaluation every ``eval_period`` epochs; resumes from ``workdir``.

    ``stop_after_steps`` ends the run early after that many optimisation steps in this call (used to simulate a kill).
    ``load_pretrained`` reads ``config.model.pretrained`` (see :data:`PretrainedLoader`).
    Returns the last evaluation's results (empty if none ran).
    """
    cfg = config
    check_classifier_matches_loss(cfg)
    exp = setup_experiment(cfg)
    sharding.check_global_batch(cfg.data.batch_size, exp.mesh)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0

    rng = jax.random.PRNGKey(cfg.seed)
    init_rng, step_rng = jax.random.split(rng)
    total_epochs = int(cfg.train.epochs)

    manager = make_checkpoint_manager(workdir, cfg.train)
    with jax.set_mesh(exp.mesh):
        # Shapes only: the optimiser's parameter groups depend on the tree, and a resumed run needs no initial weights
        # (no ImageNet conversion just to throw it away).
        shapes = jax.eval_shape(lambda: init_variables(exp.model, init_rng))
        tx = optim.make_optimizer(cfg.optim, shapes["params"], total_epochs)

        def fresh_state(variables) -> TrainState:
            return TrainState(
                step=jnp.zeros((), jnp.int32),
                params=variables["params"],
                batch_stats=variables["batch_stats"],
                opt_state=tx.init(variables["params"]),
            )

        # Resume before reading the data or compiling: a checkpoint of another model size is refused at once, and a
        # damaged one is moved aside for the newest intact one.
        start_epoch, start_batch, resumed_from, data_state = 1, 0, None, None
        steps = checkpoints.candidate_steps(manager, prefer_best=False)
        if steps:
            replicated = sharding.replicated(exp.mesh)
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                jax.eval_shape(fresh_state, shapes),
            )
            resumed_from, state, data_state = checkpoints.restore_newest_intact(
                manager,
                steps,
                model=exp.model,
                abstract_state=abstract,
                move_damaged=True,
                expected_tree=lambda: {"params": abstract.params, "batch_stats": abstract.batch_stats},
            )
            start_epoch, start_batch = int(data_state["next_epoch"]), int(data_state["next_batch"])
            logging.info("Resumed from step %d: epoch %d, batch %d", resumed_from, start_epoch, start_batch)
            if start_epoch > total_epochs:
                manager.close()
                saved = read_results(workdir)
                logging.info(
                    "Training already finished (%d epochs, step %d) in %s.", total_epochs, resumed_from, workdir
                )
                return saved

        logger = MetricsLogger(workdir, enabled=is_main, resume_step=resumed_from)
        if cfg.model.get("perception", True):
            targets = parsing.load_targets(
                cfg.parsing, exp.train_split, exp.grid, cfg.data.data_dir, cfg.data.train, parsing.config_geometry(cfg)
            )
        else:  # no part head, no segmentation loss: no parsing maps needed (zero targets, never read by the loss)
            n = len(exp.train_split)
            targets = parsing.ParsingTargets(
                targets=np.broadcast_to(np.zeros((1, *exp.grid, 6), np.float32), (n, *exp.grid, 6)),
                weights=np.zeros((n,), np.float32),
                num_missing=0,
            )
        if targets.num_missing:
            logging.warning(
                "%d training images have no parsing map: their segmentation loss weight is 0.", targets.num_missing
            )
        train_pipe = pipeline.TrainPipeline(
            cfg, exp.train_split, targets, process_index=jax.process_index(), process_count=jax.process_count()
        )
        if data_state is not None:
            train_pipe.set_state(data_state)
        else:
            state = sharding.replicate(fresh_state(initial_variables(exp, init_rng, load_pretrained)), exp.mesh)
        train_step = jax.jit(make_train_step(exp.model, tx, cfg.loss), donate_argnums=(0,))
        extract_fn = inference.make_extract_fn(exp.model, flip=bool(cfg.eval.flip))

        cap = int(cfg.train.max_steps_per_epoch)

        def epoch_steps(e: int) -> int:
            n = train_pipe.steps_per_epoch(e)
            return min(n, cap) if cap > 0 else n

        host_step = int(state.step)  # the host's copy of state.step, so the loop never waits on the device
        total_steps = sum(epoch_steps(e) for e in range(1, total_epochs + 1))
        bar = tqdm(
            total=total_steps, initial=host_step, desc="train", unit="step", disable=not is_main, mininterval=2.0
        )
        results: dict = {}
        steps_this_call = 0
        pending = None  # (step, metrics) of the previous step, checked one step late so dispatch stays asynchronous
        last_log_time, last_log_step = time.perf_counter(), host_step
        saves = _Saves(manager, exp.model, resumed_from)

        def check(item) -> None:
            step_no, metrics = item
            if not bool(metrics["finite"]):
                saves.wait()
                raise NonFiniteLossError(
                    f"Loss is {float(metrics['loss'])} at step {step_no}: training stopped. That step did not update "
                    f"the state; the last good checkpoint in {manager.directory} is step {manager.latest_step()}."
                )

        def preempted() -> Preempted:
            saves.wait()
            bar.close()
            logger.close()
            return Preempted(
                f"Stopped by SIGTERM after step {host_step}: checkpoint step {saves.last} saved in "
                f"{manager.directory}; run the same command to resume."
            )

        # One data pipeline for the whole run: its worker processes start once (about a second each time on the demo).
        with (
            _StopOnSigterm() as stop,
            train_pipe.run_iterator(
                start_epoch, total_epochs, start_batch=start_batch, num_batches=epoch_steps
            ) as batches,
        ):
            epoch = start_epoch
            while epoch <= total_epochs:
                lrs = optim.learning_rates(epoch, cfg.optim, total_epochs)
                state = state.replace(opt_state=optim.set_epoch(state.opt_state, epoch, cfg.optim, total_epochs))
                state = sharding.replicate(state, exp.mesh)
                n_steps = epoch_steps(epoch)
                for batch in batches.epoch_batches(epoch):
                    arrays = sharding.shard_batch(batch, exp.mesh)
                    state, metrics = train_step(state, arrays, step_rng)
                    if pending is not None:
                        check(pending)
                    saves.check()  # a failed asynchronous save stops the run at the next step
                    host_step += 1
                    steps_this_call += 1
                    pending = (host_step, metrics)
                    bar.update(1)
                    every = int(cfg.train.checkpoint_every_steps)
                    next_batch = train_pipe.position.batch  # the position after the batch just run
                    if every > 0 and host_step % every == 0 and next_batch < n_steps:
                        check(pending)
                        saves.save(host_step, state, train_pipe, epoch, next_batch)
                    if host_step % int(cfg.train.log_every) == 0:
                        check(pending)
                        host = jax.device_get(metrics)
                        now = time.perf_counter()
                        rate = (host_step - last_log_step) * cfg.data.batch_size / max(now - last_log_time, 1e-9)
                        last_log_time, last_log_step = now, host_step
                        record = {k: v for k, v in host.items() if k != "finite"}
                        record.update(epoch=epoch, lr_weight=lrs["weight"], lr_bias=lrs["bias"], samples_per_s=rate)
                        logger.write("train", host_step, record)
                        bar.set_postfix(loss=f"{float(host['loss']):.3f}", acc=f"{float(host.get('acc', 0.0)):.2f}")
                    if stop.requested(manager, host_step):
                        check(pending)
                        saves.save(host_step, state, train_pipe, epoch, next_batch)
                        raise preempted()
                    if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                        check(pending)
                        saves.wait()
                        bar.close()
                        logger.close()
                        return results
                if pending is not None:
                    check(pending)
                    pending = None
                # ---- end of epoch: evaluation, checkpoint
                metrics_for_ckpt = None
                if epoch % int(cfg.train.eval_period) == 0 or epoch == total_epochs:
                    results = run_evaluation(exp, state.variables, extract_fn, desc=f"eval epoch {epoch}")
                    results["epoch"] = epoch
                    logger.write("eval", int(state.step), results)
                    logging.info("Epoch %d: %s", epoch, evaluate.summarize(results))
                    metrics_for_ckpt = {"mAP": float(results["mAP"]), "rank1": float(results["rank1"])}
                if epoch % int(cfg.train.checkpoint_every) == 0 or epoch == total_epochs or metrics_for_ckpt:
                    saves.save(host_step, state, train_pipe, epoch + 1, 0, metrics=metrics_for_ckpt)
                if metrics_for_ckpt:
                    # results.json claims an epoch only once its checkpoint is on disk (evaluations are rare; the wait
                    # is short beside them).
                    saves.wait()
                    write_results(workdir, results)
                if stop.requested(manager, host_step):
                    raise preempted()
                epoch += 1
        bar.close()
    saves.wait()
    best = manager.best_step()
    logging.info("Training finished; best checkpoint: step %s", best)
    logger.close()
    return results


def read_results(workdir: str) -> dict:
    """``results.json`` of a workdir (empty when there is none)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


class _Saves:
    """Asynchronous checkpoint saves of one run, with their failures turned into :class:`CheckpointSaveError`."""

    def __init__(self, manager: ocp.CheckpointManager, model: Any, last: int | None):
        self.manager, self.model, self.last = manager, model, last

    def save(self, step: int, state: TrainState, pipe: Any, epoch: int, batch: int, metrics: dict | None = None):
        if step == self.last:
            return  # this step is already saved (a mid-epoch save, or the checkpoint resumed from)
        self.check()
        try:  # orbax writes part of a checkpoint before save() returns: a full disk may fail here already
            self.manager.save(step, args=_save_args(state, pipe, epoch, batch, self.model), metrics=metrics)
        except Exception as e:
            raise self._failed(e, step) from e
        self.last = step

    def check(self) -> None:
        try:
            self.manager.check_for_errors()
        except Exception as e:
            raise self._failed(e) from e

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:
            raise self._failed(e) from e

    def _failed(self, e: BaseException, step: int | None = None) -> CheckpointSaveError:
        # An earlier asynchronous save's error may surface only here (orbax raises it on the next save or wait), so
        # the message names the step being saved, not necessarily the one that failed.
        try:
            self.manager.reload()
            intact = self.manager.latest_step()
        except Exception:  # the folder itself may be gone
            intact = None
        text = " ".join(str(e).split())[:300]
        return CheckpointSaveError(
            f"A checkpoint save in {self.manager.directory} failed ({type(e).__name__}: {text}; seen while saving step "
            f"{self.last if step is None else step}): training stopped; the newest complete checkpoint is step "
            f"{intact}. Free space and run the same command to resume."
        )


class _StopOnSigterm:
    """SIGTERM (what job schedulers and cloud preemption send) asks the loop to stop after the current step, save
    and exit; a second SIGTERM ends the process at once. Several processes agree on the step through JAX's
    preemption sync point instead (its coordination service catches the signal)."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self) -> _StopOnSigterm:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def requested(self, manager: ocp.CheckpointManager, step: int) -> bool:
        if jax.process_count() > 1:
            return bool(manager.reached_preemption(step))
        if self.received:
            logging.warning("SIGTERM received: saving step %d and stopping.", step)
        return self.received

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

"""Training: the jitted step and the loop around it (resume, per-epoch learning rates, logging, evaluation and
checkpoints at the ends of epochs, preemption).

One jitted step over a 1-D ``'data'`` mesh of all devices, one global program: the global batch is sharded, parameters
are replicated, the state is donated. The learning rates are set once per epoch, as the reference's scheduler is
stepped (docs/reference.md §10.2). Everything a restarted run needs is in the orbax checkpoint: the train state and the
data position (epoch and batch within it), so a killed run that is restarted ends with the same parameters.

What a run shares with evaluation (splits, model, variables, test metrics, its records) is :mod:`tmspr_jax.experiment`;
saving and restoring checkpoints is :mod:`tmspr_jax.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import functools
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

from tmspr_jax import checkpoints, config_check, evaluate, experiment, inference, losses, optim, sharding
from tmspr_jax.data import parsing, pipeline
from tmspr_jax.models import init_variables


class NonFiniteLossError(RuntimeError):
    """Raised when a training step produced a NaN or infinite loss."""


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


def create_train_state(tx: optax.GradientTransformation, variables: Mapping[str, Any]) -> TrainState:
    """Step 0 of ``variables`` with a fresh optimiser state."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
    )


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


# ---------------------------------------------------------------------------------------------------- the loop


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    stop_after_steps: int | None = None,
    load_pretrained: experiment.PretrainedLoader | None = None,
) -> dict:
    """Trains ``config.train.epochs`` epochs with evaluation every ``eval_period`` epochs; resumes from ``workdir``.

    ``stop_after_steps`` ends the run early after that many optimisation steps in this call (used to simulate a kill).
    ``load_pretrained`` reads ``config.model.pretrained`` (see :data:`tmspr_jax.experiment.PretrainedLoader`).
    Returns the last evaluation's results (empty if none ran).
    """
    config_check.check_config(config)
    experiment.check_classifier_matches_loss(config)
    exp = experiment.setup_experiment(config)
    sharding.check_global_batch(config.data.batch_size, exp.mesh)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    total_epochs = config.train.epochs
    manager = checkpoints.make_manager(workdir, config.train.keep_checkpoints)
    with jax.set_mesh(exp.mesh):
        # Shapes only: the optimiser's parameter groups depend on the tree, and a resumed run needs no initial weights
        # (no ImageNet conversion just to throw it away).
        shapes = jax.eval_shape(lambda: init_variables(exp.model, init_rng))
        tx = optim.make_optimizer(config.optim, shapes["params"], total_epochs)
        resumed = resume(manager, exp, tx, shapes)
        if resumed is not None and resumed.epoch > total_epochs:
            manager.close()
            logging.info("Training already finished (%d epochs, step %d) in %s.", total_epochs, resumed.step, workdir)
            return experiment.read_results(workdir)
        train_pipe = train_pipeline(config, exp, resumed)
        if resumed is not None:
            state, start_epoch, start_batch = resumed.state, resumed.epoch, resumed.batch
        else:
            variables = experiment.initial_variables(exp, init_rng, load_pretrained)
            state, start_epoch, start_batch = sharding.replicate(create_train_state(tx, variables), exp.mesh), 1, 0
        train_step = jax.jit(make_train_step(exp.model, tx, config.loss), donate_argnums=(0,))
        extract_fn = inference.make_extract_fn(exp.eval_model, flip=config.eval.flip)
        epoch_steps = functools.partial(_epoch_steps, train_pipe, config.train.max_steps_per_epoch)
        first_step = host_step = int(state.step)  # the host's copy of state.step, so the loop never waits on the device
        resumed_from = None if resumed is None else resumed.step
        saver = checkpoints.Saver(manager, exp.model, last=resumed_from)
        finite, throughput, results = FiniteCheck(saver), Throughput(host_step, config.data.batch_size), {}
        every = config.train.checkpoint_every_steps
        total_steps = sum(epoch_steps(e) for e in range(1, total_epochs + 1))
        with (
            # Rows after the starting step (0 for a run that had no checkpoint yet: one stopped before its first)
            # are of steps that run again: dropped, so that no step appears twice.
            experiment.MetricsLogger(workdir, enabled=is_main, resume_step=first_step) as logger,
            tqdm(
                total=total_steps, initial=host_step, desc="train", unit="step", disable=not is_main, mininterval=2
            ) as bar,
            _StopOnSigterm() as stop,
            # One data pipeline for the whole run: its worker processes start once (about a second each on the demo).
            train_pipe.run_iterator(start_epoch, total_epochs, start_batch=start_batch, num_batches=epoch_steps) as run,
        ):
            for epoch in range(start_epoch, total_epochs + 1):
                state, lrs = begin_epoch(state, epoch, config, exp.mesh)
                for batch in run.epoch_batches(epoch):
                    state, metrics = train_step(state, sharding.shard_batch(batch, exp.mesh), step_rng)
                    host_step += 1
                    finite.hold(host_step, metrics)  # checks the previous step's loss, now that this one is queued
                    saver.check()  # a failed asynchronous save stops the run at the next step
                    bar.update(1)
                    next_batch = train_pipe.position.batch  # the position after the batch just run
                    if every > 0 and host_step % every == 0 and next_batch < epoch_steps(epoch):
                        finite.check()
                        saver.save(host_step, state, data_position(train_pipe, epoch, next_batch))
                    if host_step % config.train.log_every == 0:
                        finite.check()
                        log_train_step(logger, bar, host_step, metrics, epoch, lrs, throughput(host_step))
                    if stop.requested(manager, host_step):
                        finite.check()
                        saver.save(host_step, state, data_position(train_pipe, epoch, next_batch))
                        raise preempted(saver, host_step)
                    if stop_after_steps is not None and host_step - first_step >= stop_after_steps:
                        finite.check()
                        saver.wait()
                        return results
                finite.check()
                evaluated = end_of_epoch(exp, state, epoch, host_step, train_pipe, saver, logger, extract_fn, workdir)
                results = evaluated or results
                if stop.requested(manager, host_step):
                    raise preempted(saver, host_step)
    saver.wait()
    logging.info("Training finished; best checkpoint: step %s", manager.best_step())
    return results


# ---------------------------------------------------------------------------------------------------- resume


@dataclasses.dataclass
class Resumed:
    """The checkpoint a run continues from."""

    step: int
    state: TrainState
    data: dict  # the pipeline's state and the next batch to run (``next_epoch``, ``next_batch``)

    @property
    def epoch(self) -> int:
        return int(self.data["next_epoch"])

    @property
    def batch(self) -> int:
        return int(self.data["next_batch"])


def resume(
    manager: ocp.CheckpointManager, exp: experiment.Experiment, tx: optax.GradientTransformation, shapes: Any
) -> Resumed | None:
    """The newest intact checkpoint of the run, replicated on the mesh; None when there is none.

    Runs before the data is read or anything compiles: a checkpoint of another model size is refused at once, and a
    damaged one is moved aside for the newest intact one.
    """
    steps = checkpoints.candidate_steps(manager, prefer_best=False)
    if not steps:
        return None
    replicated = sharding.replicated(exp.mesh)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(functools.partial(create_train_state, tx), shapes),
    )
    step, state, data = checkpoints.restore_newest_intact(
        manager,
        steps,
        model=exp.model,
        abstract_state=abstract,
        move_damaged=True,
        expected_tree=lambda: {"params": abstract.params, "batch_stats": abstract.batch_stats},
    )
    resumed = Resumed(step, state, data)
    logging.info("Resumed from step %d: epoch %d, batch %d", step, resumed.epoch, resumed.batch)
    return resumed


def data_position(pipe: pipeline.TrainPipeline, epoch: int, batch: int) -> dict:
    """What a checkpoint holds beside the state: the next batch to run, plus the pipeline's own state (seed, batch
    size, split size), which refuses a resume whose batches would differ."""
    return dict(pipe.get_state(), next_epoch=int(epoch), next_batch=int(batch))


# ---------------------------------------------------------------------------------------------------- the data


def training_targets(config: ml_collections.ConfigDict, exp: experiment.Experiment) -> parsing.ParsingTargets:
    """The parsing targets of the training split (zeros, never read by the loss, when the model has no part head)."""
    if config.model.perception:
        targets = parsing.load_targets(
            config.parsing,
            exp.train_split,
            exp.grid,
            config.data.data_dir,
            config.data.train,
            parsing.config_geometry(config),
        )
    else:  # no part head, no segmentation loss: no parsing maps needed
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
    return targets


def train_pipeline(
    config: ml_collections.ConfigDict, exp: experiment.Experiment, resumed: Resumed | None
) -> pipeline.TrainPipeline:
    """The training batches with their parsing targets, at the resumed position if any."""
    pipe = pipeline.TrainPipeline(
        config,
        exp.train_split,
        training_targets(config, exp),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if resumed is not None:
        pipe.set_state(resumed.data)
    return pipe


def _epoch_steps(pipe: pipeline.TrainPipeline, cap: int, epoch: int) -> int:
    """Steps of ``epoch``: the pipeline's batches, at most ``cap`` (``train.max_steps_per_epoch``) when it is > 0."""
    n = pipe.steps_per_epoch(epoch)
    return min(n, cap) if cap > 0 else n


# ---------------------------------------------------------------------------------------------------- on the host


def begin_epoch(
    state: TrainState, epoch: int, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[TrainState, dict[str, float]]:
    """The epoch's learning rates set in the optimiser state (the reference steps its scheduler once per epoch)."""
    lrs = optim.learning_rates(epoch, config.optim, config.train.epochs)
    state = state.replace(opt_state=optim.set_epoch(state.opt_state, epoch, config.optim, config.train.epochs))
    return sharding.replicate(state, mesh), lrs


class FiniteCheck:
    """Stops the run at a non-finite loss, one step late: a step's loss is read once the next step is queued, so the
    host never waits on the device; :meth:`check` reads it at once, before a save, a log row or a stop."""

    def __init__(self, saver: checkpoints.Saver):
        self.saver = saver
        self._held: tuple[int, Mapping[str, jax.Array]] | None = None

    def hold(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        """Checks the step held so far, then holds ``step``'s metrics."""
        self.check()
        self._held = (step, metrics)

    def check(self) -> None:
        """Raises :class:`NonFiniteLossError` if the held step's loss is not finite (once the saves are on disk)."""
        if self._held is None:
            return
        step, metrics = self._held
        self._held = None
        if not bool(metrics["finite"]):
            self.saver.wait()
            manager = self.saver.manager
            raise NonFiniteLossError(
                f"Loss is {float(metrics['loss'])} at step {step}: training stopped. That step did not update the "
                f"state; the last good checkpoint in {manager.directory} is step {manager.latest_step()}."
            )


class Throughput:
    """Training samples per second since the previous call."""

    def __init__(self, step: int, batch_size: int):
        self.batch_size = batch_size
        self._time, self._step = time.perf_counter(), step

    def __call__(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self._step) * self.batch_size / max(now - self._time, 1e-9)
        self._time, self._step = now, step
        return rate


def log_train_step(
    logger: experiment.MetricsLogger,
    bar: tqdm,
    step: int,
    metrics: Mapping[str, jax.Array],
    epoch: int,
    lrs: Mapping[str, float],
    samples_per_s: float,
) -> None:
    """One ``train`` row (the step's loss terms, learning rates, throughput) and the progress bar's loss."""
    host = jax.device_get(metrics)
    record = {k: v for k, v in host.items() if k != "finite"}
    record.update(epoch=epoch, lr_weight=lrs["weight"], lr_bias=lrs["bias"], samples_per_s=samples_per_s)
    logger.write("train", step, record)
    bar.set_postfix(loss=f"{float(host['loss']):.3f}", acc=f"{float(host.get('acc', 0.0)):.2f}")


def end_of_epoch(
    exp: experiment.Experiment,
    state: TrainState,
    epoch: int,
    step: int,
    pipe: pipeline.TrainPipeline,
    saver: checkpoints.Saver,
    logger: experiment.MetricsLogger,
    extract_fn: Callable,
    workdir: str,
) -> dict:
    """Evaluates when due (every ``train.eval_period`` epochs and the last), then saves the checkpoint that resumes at
    the next epoch (every ``train.checkpoint_every`` epochs, the last and every evaluated one). Returns the
    evaluation's results, empty when none ran; ``results.json`` claims an epoch only once its checkpoint is on disk."""
    cfg = exp.config
    last = epoch == cfg.train.epochs
    results, best = {}, None
    if epoch % cfg.train.eval_period == 0 or last:
        results = experiment.run_evaluation(exp, state.variables, extract_fn, desc=f"eval epoch {epoch}")
        results["epoch"] = epoch
        logger.write("eval", step, results)
        logging.info("Epoch %d: %s", epoch, evaluate.summarize(results))
        best = {"mAP": float(results["mAP"]), "rank1": float(results["rank1"])}
    if epoch % cfg.train.checkpoint_every == 0 or last or results:
        saver.save(step, state, data_position(pipe, epoch + 1, 0), metrics=best)
    if results:
        saver.wait()  # evaluations are rare; the wait is short beside them
        experiment.write_results(workdir, results)
    return results


def preempted(saver: checkpoints.Saver, step: int) -> Preempted:
    """The exception that ends a run stopped by SIGTERM, once its checkpoint is on disk."""
    saver.wait()
    return Preempted(
        f"Stopped by SIGTERM after step {step}: checkpoint step {saver.last} saved in {saver.manager.directory}; "
        "run the same command to resume."
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

"""Entry point: ``python -m tmspr_jax.main --config=configs/X.py --workdir=DIR [--mode=eval] [--config.key=value]``.

Without ``--config`` it runs the demo (``configs/demo.py``): a synthetic occluded re-ID dataset generated on first use,
a small ViT trained on it, and the metrics of the untrained and the trained model.
"""

from __future__ import annotations

import contextlib
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from tmspr_jax.tools import cli
from tmspr_jax.utils import one_line_errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); the demo when omitted.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics.jsonl, tb/, results.json and eval_results/ go."
)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (with periodic evaluation, resumes) or eval only.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of input / config errors.")


def main(argv: list[str]) -> None:
    # User mistakes (a missing dataset, a bad checkpoint, a config value) and a NaN loss (RuntimeError) get one clear
    # line; --traceback shows where.
    from tmspr_jax.train import Preempted

    try:
        with one_line_errors(also=(RuntimeError, OSError), traceback=_TRACEBACK.value):
            _run(argv)
    except Preempted as e:  # SIGTERM: the step finished and its checkpoint is saved
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


def check_workdir(workdir: str) -> None:
    """The workdir must be a folder this process can write, checked before any training or evaluation runs."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir} is a file, not a folder: choose another --workdir.")
    try:
        os.makedirs(workdir, exist_ok=True)
        import tempfile

        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_"):
            pass
    except OSError as e:
        raise ValueError(f"--workdir={workdir} is not writable ({e.strerror}): choose another --workdir.") from None


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from tmspr_jax import sharding

    sharding.maybe_initialize_distributed()
    is_demo = _CONFIG.value is None  # overrides without --config were refused by cli.parse_flags
    config = cli.config_or_demo(_CONFIG.value)
    workdir = _WORKDIR.value or ("workdirs/demo" if is_demo else None)
    if workdir is None:
        raise app.UsageError("--workdir is required (where checkpoints and results are written).")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    check_workdir(workdir)
    logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
    from tmspr_jax.workdir import WorkdirLock

    # One run per workdir: process 0 holds it for the run's processes (they share it by design).
    single = jax.process_count() == 1  # several: SIGTERM is JAX's coordination service's (train._StopOnSigterm)
    lock = WorkdirLock(workdir, unwind_on_sigterm=single) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        _work(config, workdir)


def _work(config, workdir: str) -> None:
    from convert_weights.convert import load_pretrained  # config.model.pretrained may be a PyTorch checkpoint
    from tmspr_jax import evaluate, experiment, train
    from tmspr_jax.datagen import ensure

    ensure.prepare_for_config(config)
    if _MODE.value == "eval":
        record = experiment.evaluate_only(config, workdir)
        print(evaluate.summarize(record))
        print(f"Results written to {experiment.eval_record_path(workdir, record['step'])}")
        return
    if config.train.eval_untrained:
        untrained = experiment.evaluate_untrained(config, workdir, load_pretrained=load_pretrained)
        print(f"Untrained model: {evaluate.summarize(untrained)}")
    results = train.train_and_evaluate(config, workdir, load_pretrained=load_pretrained)
    if results:
        print(f"Trained model:   {evaluate.summarize(results)}")
        print(f"Results written to {os.path.join(workdir, 'results.json')}")


def run() -> None:
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()

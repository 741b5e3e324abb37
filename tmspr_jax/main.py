"""Entry point: ``python -m tmspr_jax.main --config=configs/X.py --workdir=DIR [--mode=eval] [--config.key=value]``.

Without ``--config`` it runs the demo (``configs/demo.py``): a synthetic occluded re-ID dataset generated on first use,
a small ViT trained on it, and the metrics of the untrained and the trained model.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from tmspr_jax.utils import one_line_errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); the demo when omitted.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl, tb/ and results.json go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (with periodic evaluation, resumes) or eval only.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of input / config errors.")


def _demo_config():
    from tmspr_jax.config import demo_config

    return demo_config()


class _QuietLibraries:
    """Drops INFO chatter of orbax / grain / tfds (one line per file written) from the absl log; warnings pass."""

    _NOISY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/etils/")

    def filter(self, record) -> bool:
        import logging as pylogging

        if "did not provide metrics" in str(record.msg):
            return False  # orbax, for every checkpoint saved between evaluations (they carry no mAP by design)
        return record.levelno >= pylogging.WARNING or not any(n in record.pathname for n in self._NOISY)


def main(argv: list[str]) -> None:
    logging.get_absl_handler().addFilter(_QuietLibraries())
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
    config = _CONFIG.value
    is_demo = config is None
    if is_demo:
        extra = [a for a in sys.argv[1:] if a.startswith("--config.")]
        if extra:
            raise app.UsageError(f"{extra[0]}: overrides need --config=FILE (use --config=configs/demo.py).")
        config = _demo_config()
    workdir = _WORKDIR.value or ("workdirs/demo" if is_demo else None)
    if workdir is None:
        raise app.UsageError("--workdir is required (where checkpoints and results are written).")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    check_workdir(workdir)
    logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())

    from convert_weights.convert import load_pretrained  # config.model.pretrained may be a PyTorch checkpoint
    from tmspr_jax import evaluate, train
    from tmspr_jax.datagen import ensure as setup

    setup.prepare_for_config(config)
    if _MODE.value == "eval":
        results = train.evaluate_only(config, workdir)
        print(evaluate.summarize(results))
        return
    if config.train.get("eval_untrained", False):
        untrained = train.evaluate_untrained(config, workdir, load_pretrained=load_pretrained)
        print(f"Untrained model: {evaluate.summarize(untrained)}")
    results = train.train_and_evaluate(config, workdir, load_pretrained=load_pretrained)
    if results:
        print(f"Trained model:   {evaluate.summarize(results)}")
        print(f"Results written to {os.path.join(workdir, 'results.json')}")


def _config_file_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a[len("--config=") :]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_key_message(config_file: str, override: str) -> str:
    """``--config.a.b=v`` whose key the config lacks: the first missing part and the keys beside it."""
    import importlib.util

    path = override.split("=", 1)[0][len("--config.") :].split(".")
    try:
        spec = importlib.util.spec_from_file_location("_tmspr_user_config", config_file.split(":", 1)[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        node = module.get_config()
    except Exception:  # the config itself fails: say only which key
        return f"{override.split('=', 1)[0]}: unknown config key"
    where = "config"
    for part in path:
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            return f"{override.split('=', 1)[0]}: {where} has no key {part!r} (its keys: {', '.join(sorted(keys))})"
        node, where = node[part], f"{where}.{part}"
    return f"{override.split('=', 1)[0]}: cannot be set"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with one ``error:`` line (exit status 1) for a config mistake instead of a traceback:
    overrides without ``--config``, a missing config file, an unknown key or a bad value."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    config_file = _config_file_arg(argv[1:])

    def fail(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)

    if overrides and config_file is None:
        fail(f"{overrides[0]}: overrides need --config=FILE (for the demo: --config=configs/demo.py).")
    if config_file is not None and not os.path.isfile(config_file.split(":", 1)[0]):
        fail(f"--config={config_file}: no such config file (the configs are configs/*.py).")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    except (AttributeError, KeyError) as e:
        messages = [_unknown_key_message(config_file, o) for o in overrides]
        fail(
            next((m for m in messages if " has no key " in m), messages[0])
            if overrides
            else f"--config={config_file}: {e}"
        )
    except Exception as e:  # a config file that fails to load
        fail(f"--config={config_file}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
    return []


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()

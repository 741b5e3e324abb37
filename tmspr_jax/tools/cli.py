"""What the command-line tools and ``python -m tmspr_jax.main`` share: the demo config when ``--config`` is omitted,
one ``error:`` line for a config mistake (:func:`parse_flags`) and for a user mistake at run time (:func:`run`)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from tmspr_jax.config_check import check_config
from tmspr_jax.hostmem import retain_freed_memory
from tmspr_jax.utils import one_line_errors


def config_or_demo(config: Any) -> Any:
    """``--config``'s value, or the demo config when it was omitted (as ``python -m tmspr_jax.main``)."""
    if config is not None:
        return config
    from tmspr_jax.config import demo_config

    return demo_config()


def _config_file_arg(argv: Sequence[str]) -> str | None:
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


class QuietLibraries:
    """Drops INFO chatter of orbax / grain / tfds (one line per file written) and JAX's backend probing from the absl
    log; warnings pass."""

    _NOISY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/etils/", "/jax/_src/xla_bridge")

    def filter(self, record: Any) -> bool:
        import logging as pylogging

        if "did not provide metrics" in str(record.msg):
            return False  # orbax, for every checkpoint saved between evaluations (they carry no mAP by design)
        return record.levelno >= pylogging.WARNING or not any(n in record.pathname for n in self._NOISY)


# Python's resource tracker reports the shared memory grain's worker processes leave for it to free at exit, on
# every run; the tracker frees it. -W reaches the tracker's own process (multiprocessing passes sys.warnoptions on).
_LEAKED_SHARED_MEMORY = "ignore:resource_tracker:UserWarning"


def quiet_libraries(verbosity: int) -> None:
    """Under ``--verbosity`` 0 (the default) and below: no INFO lines from the libraries (:class:`QuietLibraries`)
    and no "leaked shared_memory objects" warning at exit; ``--verbosity=1`` shows both."""
    if verbosity >= 1:
        return
    from absl import logging

    handler = logging.get_absl_handler()
    if not any(isinstance(f, QuietLibraries) for f in handler.filters):
        handler.addFilter(QuietLibraries())
    if _LEAKED_SHARED_MEMORY not in sys.warnoptions:
        sys.warnoptions.append(_LEAKED_SHARED_MEMORY)
        warnings.filterwarnings("ignore", message="resource_tracker:", category=UserWarning)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing with one ``error:`` line (exit status 1) for a config mistake instead of a traceback:
    overrides without ``--config``, a missing config file, an unknown key or a bad value.

    Every command starts here, before JAX allocates anything: it also keeps freed host memory in the process
    (:func:`tmspr_jax.hostmem.retain_freed_memory`), which XLA on the CPU needs to run at speed."""
    retain_freed_memory()
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
        rest = flags.FLAGS(argv)
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
    quiet_libraries(flags.FLAGS.verbosity)
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    if hasattr(config, "items"):  # a config file (the demo's settings are fixed and in range)
        try:
            check_config(config)
        except ValueError as e:
            fail(str(e))
    return rest


def run(main: Callable[[], None], required: Sequence[str] = ()) -> None:
    """``absl.app.run`` for a tool's ``main()``: the flags are parsed by :func:`parse_flags`, the ``required`` flags
    must be given, positional arguments are refused, and a user mistake prints ``error: <message>`` and exits with
    status 1."""
    if required:
        flags.mark_flags_as_required(list(required))

    def guarded(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        with one_line_errors():
            main()

    app.run(guarded, flags_parser=parse_flags)

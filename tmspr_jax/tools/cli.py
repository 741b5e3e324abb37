"""What the command-line tools share: the demo config when ``--config`` is omitted, and one-line errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tmspr_jax.utils import one_line_errors


def config_or_demo(config: Any) -> Any:
    """``--config``'s value, or the demo config when it was omitted (as ``python -m tmspr_jax.main``)."""
    if config is not None:
        return config
    from tmspr_jax.config import demo_config

    return demo_config()


def run(main: Callable[[], None], required: Sequence[str] = ()) -> None:
    """``absl.app.run`` for a tool's ``main()``: the ``required`` flags must be given (absl checks them), positional
    arguments are refused, and a user mistake prints ``error: <message>`` and exits with status 1."""
    from absl import app, flags

    if required:
        flags.mark_flags_as_required(list(required))

    def guarded(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        with one_line_errors():
            main()

    app.run(guarded)

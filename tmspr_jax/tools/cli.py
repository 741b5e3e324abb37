"""What the command-line tools share: the demo config when ``--config`` is omitted, and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

# User mistakes (a missing file or folder, a checkpoint of another model or dataset, a bad value): one line each.
USER_ERRORS = (ValueError, FileNotFoundError)


def config_or_demo(config: Any) -> Any:
    """``--config``'s value, or the demo config when it was omitted (as ``python -m tmspr_jax.main``)."""
    if config is not None:
        return config
    from configs import demo

    return demo.get_config()


def run(main: Callable[[Sequence[str]], None]) -> None:
    """``absl.app.run(main)``, printing ``error: <message>`` and exiting with status 1 on a user mistake."""
    from absl import app

    def guarded(argv: Sequence[str]) -> None:
        try:
            main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    app.run(guarded)

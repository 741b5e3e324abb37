"""tmspr_jax.tools.cli: every command that takes ``--config`` answers a config mistake with the same one ``error:`` line
(the key the config lacks and the keys beside it), exit status 1, no traceback, before any work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("extract", "export", "search", "visualize", "dataset_sheet", "colour_baseline", "compare")


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def _error_lines(out: subprocess.CompletedProcess) -> list[str]:
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return [line for line in out.stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("tool", TOOLS)
def test_unknown_config_key_is_the_same_line_for_every_tool(tool):
    out = _run(f"tmspr_jax.tools.{tool}", "--config=configs/demo.py", "--config.model.no_such_key=1")
    errors = _error_lines(out)
    assert len(errors) == 1, out.stderr[-2000:]
    assert errors[0].startswith("error: --config.model.no_such_key: config.model has no key 'no_such_key' (its keys: ")
    assert "depth" in errors[0]  # the keys beside the missing one are listed


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--config.model.depth=2",), "error: --config.model.depth=2: overrides need --config=FILE"),
        (("--config=configs/no_such.py",), "error: --config=configs/no_such.py: no such config file"),
        (("--config=configs/demo.py", "--config.model.depth=two"), "error: flag --config.model.depth=two: invalid"),
    ],
)
def test_other_config_mistakes_are_one_line(args, expected):
    errors = _error_lines(_run("tmspr_jax.tools.extract", *args))
    assert len(errors) == 1 and errors[0].startswith(expected)


def test_main_uses_the_same_parser():
    out = _run("tmspr_jax.main", "--config=configs/demo.py", "--config.data.no_such_key=1", "--workdir=unused")
    errors = _error_lines(out)
    assert len(errors) == 1 and "config.data has no key 'no_such_key'" in errors[0], out.stderr[-2000:]


QUIET_PROBE = """
import os
from tmspr_jax.tools import cli

def main():
    from multiprocessing import shared_memory
    import numpy as np, orbax.checkpoint as ocp
    shm = shared_memory.SharedMemory(create=True, size=64)  # left to the resource tracker, as grain's workers do
    shm.close()
    with ocp.CheckpointManager(os.path.join(os.environ["PROBE_DIR"], "ckpt")) as m:
        m.save(1, args=ocp.args.StandardSave({"x": np.zeros(3)}))

cli.run(main)
"""


def test_library_chatter_is_quiet_by_default_and_shown_with_verbosity(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(QUIET_PROBE)

    def run(*args: str) -> str:
        env = dict(os.environ, JAX_PLATFORMS="cpu", PROBE_DIR=str(tmp_path / ("v" if args else "q")))
        out = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stderr

    quiet = run()
    assert "leaked shared_memory" not in quiet and "orbax" not in quiet, quiet
    verbose = run("--verbosity=1")
    assert "leaked shared_memory" in verbose and "orbax" in verbose, verbose

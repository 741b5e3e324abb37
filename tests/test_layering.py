"""The import contracts of pyproject.toml hold, and import-linter and ruff would catch a violation.

Each violation is written into a copy of the packages in a temporary folder, never into the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tmspr_jax", "convert_weights", "configs")
LINT_IMPORTS = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]


def _lint_imports(cwd: str) -> subprocess.CompletedProcess:
    # lint-imports reads pyproject.toml in cwd and imports the root packages from cwd first
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(LINT_IMPORTS, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def copy_of_repo(tmp_path):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGES:
        shutil.copytree(os.path.join(REPO, name), tmp_path / name, ignore=ignore)
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path / "pyproject.toml")
    return tmp_path


def test_contracts_hold():
    r = _lint_imports(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def _append(path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


@pytest.mark.parametrize(
    "module, code, broken",
    [
        # the model imports training: against the chain data -> models -> losses -> train -> tools
        ("tmspr_jax/models/vit.py", "\nimport tmspr_jax.train\n", "tmspr_jax.models.vit -> tmspr_jax.train"),
        # data imports the model (a lazy import inside a function counts too)
        (
            "tmspr_jax/data/views.py",
            "\ndef _f():\n    from tmspr_jax.models import vit\n",
            "tmspr_jax.data.views -> tmspr_jax.models.vit",
        ),
        # a tool imports the trainer for work that does not train (tmspr_jax.experiment opens runs)
        (
            "tmspr_jax/tools/extract.py",
            "\ndef _f():\n    from tmspr_jax import train\n",
            "tmspr_jax.tools.extract -> tmspr_jax.train",
        ),
        # the library imports the converter
        ("tmspr_jax/train.py", "\nimport convert_weights.convert\n", "tmspr_jax.train -> convert_weights.convert"),
        # the library imports the top-level configs package
        ("tmspr_jax/datagen/ensure.py", "\nimport configs.demo\n", "tmspr_jax.datagen.ensure -> configs.demo"),
        # torch outside the oracle, the converter's readers and the tools, even lazily
        ("tmspr_jax/models/vit.py", "\ndef _f():\n    import torch\n", "tmspr_jax.models.vit -> torch"),
    ],
)
def test_lint_imports_fails_on_a_violation(copy_of_repo, module, code, broken):
    _append(copy_of_repo / module, code)
    r = _lint_imports(str(copy_of_repo))
    assert r.returncode == 1, r.stdout + r.stderr
    assert broken in r.stdout.replace("\n", " "), r.stdout


def test_a_new_module_must_be_given_a_layer(copy_of_repo):
    (copy_of_repo / "tmspr_jax" / "extra.py").write_text('"""A module the layers contract does not place."""\n')
    r = _lint_imports(str(copy_of_repo))
    assert r.returncode == 1 and "tmspr_jax.extra" in r.stdout, r.stdout + r.stderr


def test_ruff_fails_on_an_unused_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""An unused import."""\n\nimport os\n')
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--config",
            os.path.join(REPO, "pyproject.toml"),
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "F401" in r.stdout, r.stdout + r.stderr
    bad.write_text('"""No unused import."""\n\nimport os\n\nprint(os.sep)\n')
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--config",
            os.path.join(REPO, "pyproject.toml"),
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr

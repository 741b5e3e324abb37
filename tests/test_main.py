"""The entry point and the configs: every paper setting loads with the reference's values; user errors are one line."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = ("occ_duke", "market", "duke", "occ_reid", "partial_reid")


def _run_main(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tmspr_jax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("name", PAPER_CONFIGS + ("demo",))
def test_every_config_loads_with_a_docstring_giving_command_data_and_expectations(name):
    module = importlib.import_module(f"configs.{name}")
    doc = module.__doc__
    assert f"--config=configs/{name}.py" in doc and "Data" in doc
    cfg = module.get_config()
    # Paper settings: 8 ids x 4 (docs/reference.md §11.3); the demo trains from scratch with 4 ids x 4.
    assert cfg.data.batch_size == (16 if name == "demo" else 32) and cfg.data.num_instances == 4
    assert cfg.data.train and cfg.data.test


def test_paper_configs_carry_the_reference_settings():
    get = lambda n: importlib.import_module(f"configs.{n}").get_config()
    occ = get("occ_duke")
    assert (occ.model.stride, occ.train.epochs, occ.optim.base_lr, occ.train.eval_period) == ((11, 11), 170, 0.008, 5)
    assert occ.data.test_batch_size == 256 and tuple(occ.data.mean) == (0.5, 0.5, 0.5)
    assert occ.model.divide_length == 6 and occ.model.shift_num == 5 and occ.model.sie_coe == 3.0
    market = get("market")
    assert (market.model.stride, market.train.epochs, market.data.test_batch_size) == ((12, 12), 300, 32)
    duke = get("duke")
    assert (duke.optim.base_lr, duke.train.eval_period, duke.train.epochs) == (0.01, 10, 300)
    partial = get("partial_reid")
    assert (partial.data.train, partial.data.test, partial.optim.base_lr, partial.train.epochs) == (
        "market1501",
        "partial_reid",
        1e-4,
        20,
    )
    assert tuple(partial.data.mean) == (0.485, 0.456, 0.406)
    occ_reid = get("occ_reid")
    assert (occ_reid.data.train, occ_reid.data.test, occ_reid.train.epochs, occ_reid.train.eval_period) == (
        "market1501",
        "occluded_reid",
        60,
        2,
    )


def test_unknown_config_key_is_a_clear_error(tmp_path):
    out = _run_main("--config=configs/occ_duke.py", "--config.model.no_such_key=1", f"--workdir={tmp_path}")
    assert out.returncode != 0
    assert "no_such_key" in out.stderr


def test_missing_dataset_is_one_line_naming_the_folder_and_the_prepare_command(tmp_path):
    missing = tmp_path / "no_data_here"
    out = _run_main("--config=configs/occ_duke.py", f"--config.data.data_dir={missing}", f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out.stderr
    assert str(missing) in errors[0] and "prepare" in out.stderr


def test_eval_mode_needs_a_checkpoint(tmp_path):
    out = _run_main(
        "--config=configs/occ_duke.py",
        "--mode=eval",
        f"--config.data.data_dir={tmp_path}",
        f"--workdir={tmp_path / 'w'}",
    )
    assert out.returncode == 1 and "error: " in out.stderr


def test_a_bad_stride_is_one_line_before_any_data_is_touched(tmp_path):
    """``--config.model.stride=12`` reaches the tuple field as ``(12,)``: a square stride; three numbers: an error."""
    out = _run_main(
        "--config=configs/occ_duke.py",
        "--config.model.stride=1,2,3",
        f"--config.data.data_dir={tmp_path / 'no_data_here'}",
        f"--workdir={tmp_path / 'w'}",
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert len(errors) == 1 and "config.model.stride=(1, 2, 3)" in errors[0], out.stderr
    # a single number passes the geometry check: the run gets as far as the missing dataset
    out = _run_main(
        "--config=configs/occ_duke.py",
        "--config.model.stride=12",
        f"--config.data.data_dir={tmp_path / 'no_data_here'}",
        f"--workdir={tmp_path / 'w'}",
    )
    assert out.returncode == 1 and "no_data_here" in out.stderr and "config.model.stride" not in out.stderr, out.stderr

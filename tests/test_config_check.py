"""Every numeric config key has a range (tmspr_jax.config_check.RANGES), checked key by key before any work."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import pytest

from tmspr_jax import config_check
from tmspr_jax.config import get_base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py") and f[0] != "_")


def _bad_values(rule: config_check.Range) -> list[float]:
    """Values just outside the row's range, a fraction for a whole-number row, and the non-finite ones."""
    step = 1 if rule.integer else 0.5
    bad = [math.nan, math.inf, -math.inf]
    if rule.low is not None:
        below = rule.low if rule.low_open else rule.low - step
        while below in rule.also:
            below -= step
        bad.append(below)
    if rule.high is not None:
        bad.append(rule.high if rule.high_open else rule.high + step)
    if rule.integer:
        bad.append((rule.low or 0) + 1.5)
    return bad


def _set(config: dict, path: str, value) -> dict:
    *parents, key = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    old = node[key]
    node[key] = tuple(value for _ in old) if isinstance(old, (tuple, list)) else value
    return config


def test_every_numeric_key_of_the_base_config_has_a_range_and_every_range_a_key():
    keys = set(config_check.numeric_keys(get_base_config()))
    assert keys, "the walk found no numeric key"
    assert not keys - set(config_check.RANGES), (
        f"numeric keys without a row in RANGES: {sorted(keys - set(config_check.RANGES))}"
    )
    assert not set(config_check.RANGES) - keys, f"rows of RANGES for no key: {sorted(set(config_check.RANGES) - keys)}"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_is_in_range(name):
    config_check.check_config(importlib.import_module(f"configs.{name}").get_config())


@pytest.mark.parametrize("path", sorted(config_check.RANGES))
def test_a_value_outside_the_range_is_refused_naming_the_key_value_and_range(path):
    rule = config_check.RANGES[path]
    config_check.check_config(get_base_config().to_dict())  # the defaults pass
    for bad in _bad_values(rule):
        config = _set(get_base_config().to_dict(), path, bad)
        with pytest.raises(ValueError) as e:
            config_check.check_config(config)
        message = str(e.value)
        assert message.startswith(f"config.{path}=") and repr(bad) in message, message
        assert rule.describe() in message, message
    # the bounds themselves, where closed, are allowed
    for edge in (rule.low, rule.high, *rule.also):
        if edge is not None and not (edge == rule.low and rule.low_open) and not (edge == rule.high and rule.high_open):
            config_check.check_config(_set(get_base_config().to_dict(), path, int(edge) if rule.integer else edge))


def test_a_config_without_a_key_is_checked_for_the_keys_it_has():
    config_check.check_config({"train": {"epochs": 3}})
    with pytest.raises(ValueError, match=r"config\.train\.epochs=0: expected a whole number >= 1"):
        config_check.check_config({"train": {"epochs": 0}})


def test_the_trainer_refuses_before_reading_any_data(tmp_path):
    from tmspr_jax import train

    config = get_base_config()
    config.data.data_dir = str(tmp_path / "no_data_here")  # reading data would be a FileNotFoundError
    config.train.eval_period = 0
    with pytest.raises(ValueError, match=r"config\.train\.eval_period=0"):
        train.train_and_evaluate(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "command, override, expected",
    [
        (["-m", "tmspr_jax.main"], "train.checkpoint_every=0", "config.train.checkpoint_every=0: expected a whole"),
        (["-m", "tmspr_jax.main", "--mode=eval"], "optim.base_lr=nan", "config.optim.base_lr=nan: expected a finite"),
        (
            ["-m", "tmspr_jax.tools.extract", "--out={tmp}/x.npz"],
            "data.test_batch_size=0",
            "config.data.test_batch_size=0",
        ),
    ],
)
def test_commands_refuse_an_out_of_range_value_in_one_line_before_any_work(tmp_path, command, override, expected):
    out = subprocess.run(
        [
            sys.executable,
            *(c.format(tmp=tmp_path) for c in command),
            "--config=configs/demo.py",
            f"--config.{override}",
            f"--config.data.data_dir={tmp_path / 'no_data_here'}",
            f"--config.data.manual_dir={tmp_path / 'no_raw_data'}",
            f"--workdir={tmp_path / 'w'}" if "main" in command[1] else f"--checkpoint={tmp_path / 'w'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert not (tmp_path / "no_raw_data").exists() and not (tmp_path / "w").exists()

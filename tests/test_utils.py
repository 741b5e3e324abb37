"""The shared helpers of tmspr_jax.utils."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tmspr_jax.utils import jsonable, l2_normalise, one_line_errors, pair, patch_grid


def test_pair_takes_one_number_as_square():
    assert pair(12, "s") == pair((12,), "s") == pair("12", "s") == pair(np.int64(12), "s") == (12, 12)
    assert pair((11, 12), "s") == pair([11, 12], "s") == pair("11,12", "s") == pair("11x12", "s") == (11, 12)
    for bad in ((1, 2, 3), (), 1.5, "a", None):
        with pytest.raises(ValueError, match=r"^stride="):
            pair(bad, "stride")


def test_patch_grid():
    assert patch_grid((256, 128), 16, (11, 11)) == (22, 11)
    assert patch_grid((256, 128), 16, (12,)) == patch_grid((256, 128), 16, 12) == (21, 10)
    with pytest.raises(ValueError, match="smaller than the patch"):
        patch_grid((8, 8), 16, 4)
    with pytest.raises(ValueError, match=">= 1"):
        patch_grid((64, 64), 16, 0)


def test_l2_normalise_numpy_and_jax_alike():
    x = np.random.RandomState(0).randn(5, 7).astype(np.float32)
    x[2] = 0.0  # a zero row stays zero (eps), as torch F.normalize
    got = l2_normalise(x)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got[[0, 1, 3, 4]], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)
    on_device = jax.jit(l2_normalise)(jnp.asarray(x))
    assert isinstance(on_device, jax.Array)
    np.testing.assert_allclose(np.asarray(on_device), got, rtol=1e-6, atol=1e-7)
    cols = l2_normalise(x, axis=0)
    np.testing.assert_allclose(np.linalg.norm(cols, axis=0), 1.0, rtol=1e-6)


def test_jsonable_makes_strict_json():
    obj = {1: np.float32(0.5), "a": (np.arange(3), jnp.ones(2)), "b": np.bool_(True), "c": [math.inf, np.nan]}
    out = jsonable(obj)
    assert out == {"1": 0.5, "a": [[0, 1, 2], [1.0, 1.0]], "b": True, "c": ["inf", "nan"]}
    json.loads(json.dumps(out, allow_nan=False))


def test_one_line_errors(capsys):
    with pytest.raises(SystemExit) as e, one_line_errors():
        raise KeyError("config.loss.x is missing")
    assert e.value.code == 1 and capsys.readouterr().err == "error: config.loss.x is missing\n"
    with pytest.raises(RuntimeError), one_line_errors():  # not a user mistake unless asked for
        raise RuntimeError("bug")
    with pytest.raises(SystemExit), one_line_errors(also=(RuntimeError,)):
        raise RuntimeError("NaN loss")
    with pytest.raises(ValueError), one_line_errors(traceback=True):
        raise ValueError("shown with its traceback")

"""tools/export.py --format=onnx: the feature function in onnxruntime gives the JAX features (bound below)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import onnxruntime as ort
import pytest

import tiny
from configs import demo
from tmspr_jax import inference, weights
from tmspr_jax.models import build_model, init_variables
from tmspr_jax.tools import export as ex

IMG = (64, 32)
# Measured: the largest difference is about 2e-7 of the largest feature value (float32 rounding of reordered sums).
BOUND = 2e-6


def _model(neck_feat: str):
    c = demo.get_config()
    c.img_size = IMG
    c.model.embed_dim, c.model.depth, c.model.num_heads = 32, 2, 2
    c.model.neck_feat = neck_feat
    m = build_model(c.model, IMG, num_classes=5, num_cameras=3)
    return c, m, init_variables(m, jax.random.PRNGKey(1))


def _inputs(b: int):
    rng = np.random.default_rng(b)
    return rng.normal(size=(b, *IMG, 3)).astype(np.float32), (np.arange(b) % 3).astype(np.int32)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= BOUND * np.abs(want).max(), np.abs(got - want).max()


def test_onnx_features_match_jax_at_any_batch_size():
    _, model, variables = _model("before")  # the demo's: parts min-max-normalised over the batch
    proto = ex.export_onnx(model, variables, IMG, flip=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images", "camids"]
    assert session.get_inputs()[0].shape[0] == "batch" and session.get_outputs()[0].name == "features"
    extract = inference.make_extract_fn(model, flip=True)
    for b in (1, 3, 5):
        images, camids = _inputs(b)
        got = session.run(None, {"images": images, "camids": camids})[0]
        _close(got, np.asarray(extract(variables, images, camids, np.ones(b, bool))))
    # A camera outside the table gives a NaN row and leaves the others' batch statistics alone, as the StableHLO file.
    images, camids = _inputs(4)
    camids[2] = 7
    got = session.run(None, {"images": images, "camids": camids})[0]
    keep = np.array([0, 1, 3])
    assert np.isnan(got[2]).all()
    _close(got[keep], np.asarray(extract(variables, images[keep], camids[keep], np.ones(3, bool))))


def test_command_line_onnx_export(tmp_path, monkeypatch):
    cfg, model, variables = _model("after")
    folder = str(tmp_path / "weights")
    weights.save_variables(folder, variables, weights.model_meta(model))
    out = tmp_path / "tmspr.onnx"
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.export",
        f"--config={tiny.DEMO}",
        *tiny.model_flags(),
        "--config.model.neck_feat=after",
        f"--checkpoint={folder}",
        f"--out={out}",
        "--format=onnx",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tiny.REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(open(f"{out}.json").read())
    assert info["format"] == "onnx" and info["batch"] == "any" and info["feature_dim"] == 5 * 32
    images, camids = _inputs(2)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"images": images, "camids": camids}
    )[0]
    want = inference.make_extract_fn(model, flip=True)(variables, images, camids, np.ones(2, bool))
    _close(got, np.asarray(want))

    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"--format=onnx needs jax2onnx .*pip install -e '.\[onnx\]'"):
        ex.export_to_file(cfg, folder, str(tmp_path / "x.onnx"), format="onnx")
    with pytest.raises(ValueError, match="format must be one of"):
        ex.export_to_file(cfg, folder, str(tmp_path / "x.bin"), format="tflite")
    assert os.path.getsize(out) > 0

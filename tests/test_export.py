"""tools/export.py: the feature function as a serialized jax.export program equals the in-process extractor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import demo
from tmspr_jax import inference, weights
from tmspr_jax.models import build_model, init_variables
from tmspr_jax.tools import export as ex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG = (64, 32)
TINY = (
    "--config.img_size=(64, 32)",
    "--config.model.embed_dim=32",
    "--config.model.depth=2",
    "--config.model.num_heads=2",
)


def _config(neck_feat: str = "after"):
    c = demo.get_config()
    c.img_size = IMG
    c.model.embed_dim, c.model.depth, c.model.num_heads = 32, 2, 2
    c.model.neck_feat = neck_feat
    return c


def _model(neck_feat: str = "after"):
    m = build_model(_config(neck_feat).model, IMG, num_classes=5, num_cameras=3)
    return m, init_variables(m, jax.random.PRNGKey(0))


def _inputs(b: int):
    rng = np.random.default_rng(b)
    return rng.normal(size=(b, *IMG, 3)).astype(np.float32), (np.arange(b) % 3).astype(np.int32)


@pytest.mark.parametrize("neck_feat", ["after", "before"])
def test_exported_program_gives_the_extractors_features_at_any_batch_size(neck_feat):
    model, variables = _model(neck_feat)
    exported = jax.export.deserialize(ex.export_features_fn(model, variables, IMG, flip=True).serialize())
    extract = inference.make_extract_fn(model, flip=True)
    for b in (3, 5):  # 'before' min-max-normalises parts over the batch: the symbolic batch must keep that
        images, camids = _inputs(b)
        want = np.asarray(extract(variables, images, camids, np.ones(b, bool)))
        got = np.asarray(exported.call(images, camids))
        assert got.shape == want.shape == (b, exported.out_avals[0].shape[-1])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_fixed_batch_and_platforms():
    model, variables = _model()
    exported = ex.export_features_fn(model, variables, IMG, batch=4, platforms=("cpu", "cuda"))
    assert exported.platforms == ("cpu", "cuda") and exported.in_avals[0].shape == (4, *IMG, 3)
    images, camids = _inputs(4)
    assert np.asarray(exported.call(images, camids)).shape[0] == 4
    with pytest.raises(ValueError, match="expected same constant"):
        exported.call(*_inputs(2))
    with pytest.raises(ValueError, match="batch must be >= 0"):
        ex.export_features_fn(model, variables, IMG, batch=-1)


def test_export_from_a_converted_folder_needs_no_dataset(tmp_path):
    model, variables = _model()
    folder = str(tmp_path / "weights")
    weights.save_variables(folder, variables, weights.model_meta(model))
    cfg = _config()
    cfg.data.data_dir = str(tmp_path / "no_such_dataset")
    out = ex.export_to_file(cfg, folder, str(tmp_path / "m" / "tmspr.jax_exported"))
    info = json.loads(open(out + ".json").read())
    assert info["img_size"] == list(IMG) and info["mean"] == list(cfg.data.mean) and info["batch"] == "any"
    assert info["flip"] is True and info["platforms"] == ["cpu"]
    images, camids = _inputs(3)
    got = np.asarray(ex.load_exported(out).call(images, camids))
    assert got.shape == (3, info["feature_dim"])
    want = inference.make_extract_fn(model, flip=True)(variables, images, camids, np.ones(3, bool))
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6, atol=1e-6)

    (tmp_path / "junk").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="junk: not a jax.export serialization"):
        ex.load_exported(str(tmp_path / "junk"))
    with pytest.raises(FileNotFoundError, match="no exported model at"):
        ex.load_exported(str(tmp_path / "missing"))

    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.export",
        f"--config={os.path.join(ROOT, 'configs', 'demo.py')}",
        *TINY,
        "--config.model.neck_feat=after",  # the folder's model, as exported above
        f"--checkpoint={folder}",
        f"--out={tmp_path / 'cli.bin'}",
        "--batch=2",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"({info['feature_dim']}-d) for images (2, 64, 32, 3) on cpu" in r.stdout
    cmd[-3] = f"--checkpoint={tmp_path / 'nothing'}"
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: --checkpoint")


def test_a_symbolic_batch_serves_one_image_or_more_and_refuses_none_as_documented():
    model, variables = _model()
    exported = ex.export_features_fn(model, variables, IMG)
    images, camids = _inputs(1)
    assert exported.call(images, camids).shape[0] == 1
    with pytest.raises(ValueError, match="'b' = 0"):
        exported.call(images[:0], camids[:0])
    assert "every batch of 1 or more" in ex.__doc__

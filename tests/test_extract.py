"""tools/extract.py: the test features of a checkpoint in one checked .npz, equal to what the evaluation scores."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import tiny
from tmspr_jax import evaluate, experiment, weights
from tmspr_jax.datagen import ensure
from tmspr_jax.models.tmspr import init_variables
from tmspr_jax.tools import extract

ROOT = tiny.REPO


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A generated dataset and a converted-weights folder of a randomly initialised model for it."""
    root = str(tmp_path_factory.mktemp("extract"))
    cfg = tiny.run_config(root)  # test batches of 8: several per split
    ensure.prepare_for_config(cfg)
    exp = experiment.setup_experiment(cfg)
    ckpt = os.path.join(root, "weights")
    weights.save_variables(ckpt, init_variables(exp.model, jax.random.PRNGKey(0)), weights.model_meta(exp.model))
    return cfg, ckpt


def _arrays(nq=3, ng=5, d=4):
    rng = np.random.default_rng(0)
    q = (rng.normal(size=(nq, d)), rng.integers(0, 3, nq), rng.integers(0, 2, nq))
    g = (rng.normal(size=(ng, d)), rng.integers(0, 3, ng), rng.integers(0, 2, ng))
    return q, g, [f"q{i}.jpg" for i in range(nq)], [f"g{i}.jpg" for i in range(ng)]


def test_save_and_load_round_trip_with_checks(tmp_path):
    q, g, qn, gn = _arrays()
    path = extract.save_features(str(tmp_path / "sub" / "f.bin"), q, g, qn, gn, dataset="demo_set", config_json="{}")
    assert path.endswith("f.bin") and os.path.isfile(path)  # the name given, not f.bin.npz
    got = extract.load_features(path)
    np.testing.assert_array_equal(got["query_features"], q[0].astype(np.float32))
    np.testing.assert_array_equal(got["gallery_pids"], g[1])
    assert got["gallery_file_names"].tolist() == gn and got["dataset"] == "demo_set"

    with pytest.raises(ValueError, match=r"query_pids has shape \(2,\), expected \(3,\)"):
        extract.save_features(str(tmp_path / "bad.npz"), (q[0], q[1][:2], q[2]), g, qn, gn, dataset="x")
    with pytest.raises(ValueError, match=r"different widths \[4, 5\]"):
        extract.save_features(str(tmp_path / "bad.npz"), q, (np.zeros((5, 5)), g[1], g[2]), qn, gn, dataset="x")
    np.savez(tmp_path / "other.npz", features=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"other.npz: not a features file .*no 'dataset'"):
        extract.load_features(str(tmp_path / "other.npz"))
    with pytest.raises(FileNotFoundError, match="no features file at"):
        extract.load_features(str(tmp_path / "missing.npz"))


def test_extracted_features_are_the_evaluations(prepared, tmp_path):
    cfg, ckpt = prepared
    done = extract.extract_to_file(cfg, ckpt, str(tmp_path / "features.npz"))
    f = extract.load_features(done.path)
    nq, dim = f["query_features"].shape
    assert (done.num_query, done.num_gallery, done.feature_dim) == (nq, f["gallery_features"].shape[0], dim)
    exp = experiment.setup_experiment(cfg)
    assert f["query_features"].shape[0] == len(exp.query_split)
    assert f["gallery_features"].shape[0] == len(exp.gallery_split)
    assert f["query_file_names"].tolist() == [str(n) for n in exp.query_split.file_names]
    np.testing.assert_array_equal(f["gallery_pids"], exp.gallery_split.pids)
    np.testing.assert_array_equal(f["query_camids"], exp.query_split.camids)
    # The metrics of the saved features equal --mode=eval's on the same checkpoint.
    cfg.init_checkpoint = ckpt
    expected = experiment.evaluate_only(cfg, str(tmp_path / "eval"))
    feats = np.concatenate([f["query_features"], f["gallery_features"]])
    pids = np.concatenate([f["query_pids"], f["gallery_pids"]])
    camids = np.concatenate([f["query_camids"], f["gallery_camids"]])
    got = evaluate.compute_metrics(feats, pids, camids, len(f["query_pids"]), cfg.eval)
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    np.testing.assert_allclose(got["cmc"], expected["cmc"], atol=1e-6)
    assert f["dataset"] == cfg.data.test and f["checkpoint"] == os.path.abspath(ckpt)


def test_command_line_extract_then_visualize(prepared, tmp_path):
    cfg, ckpt = prepared
    overrides = tiny.cli_flags(cfg)
    out = tmp_path / "f.npz"
    cmd = [sys.executable, "-m", "tmspr_jax.tools.extract", *overrides, f"--checkpoint={ckpt}", f"--out={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "6 query and 18 gallery features" in r.stdout and out.exists()

    ranks = tmp_path / "ranks"
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.visualize",
        *overrides[:4],
        f"--features={out}",
        f"--out={ranks}",
        "--topk=5",
        "--num_queries=4",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    pngs = sorted(p.name for p in ranks.glob("*.png"))
    assert len(pngs) == 4 and pngs[0].startswith("000_") and (ranks / "ranks.json").exists()

    cmd[cmd.index(f"--features={out}")] = f"--features={tmp_path / 'none.npz'}"
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: no features file at")

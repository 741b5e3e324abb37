"""tmspr_jax/experiment.py: what main, the trainer and the tools share to open a run: evaluation of a trained
checkpoint, the test features' compute dtype and flip setting."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import tiny
from tmspr_jax import experiment, inference, train


def test_eval_mode_reproduces_the_trained_checkpoint(data_root, tmp_path):
    cfg = tiny.train_config(data_root)
    # Evaluated once, at the end: --mode=eval restores the best checkpoint by mAP, which with an evaluation every
    # epoch may be an earlier one than the final results describe.
    cfg.train.eval_period = cfg.train.epochs
    workdir = str(tmp_path / "run")
    trained = train.train_and_evaluate(cfg, workdir)
    cfg.init_checkpoint = workdir
    evaluated = experiment.evaluate_only(cfg, str(tmp_path / "eval"))
    assert evaluated["mAP"] == pytest.approx(trained["mAP"], abs=1e-9)
    assert evaluated["cmc"] == pytest.approx(trained["cmc"], abs=1e-9)


def test_bfloat16_training_evaluates_in_float32_and_eval_dtype_switches_it(data_root):
    cfg = tiny.train_config(data_root)
    cfg.model.dtype = "bfloat16"  # as the paper's configs
    exp = experiment.setup_experiment(cfg)
    variables = experiment.initial_variables(exp, jax.random.key(0))
    (q16, _, _), _ = experiment.extract_test_features(exp, variables)
    cfg.model.dtype = "float32"
    (q32, _, _), _ = experiment.extract_test_features(experiment.setup_experiment(cfg), variables)
    np.testing.assert_array_equal(q16, q32)  # the training dtype does not reach the test features
    cfg.eval.dtype = "bfloat16"
    (qb, _, _), _ = experiment.extract_test_features(experiment.setup_experiment(cfg), variables)
    assert 0 < np.abs(qb - q32).max() < 0.1 * np.abs(q32).max()  # eval.dtype does


def test_eval_flip_setting_reaches_the_feature_extractor(data_root, tmp_path, monkeypatch):
    cfg = tiny.train_config(data_root)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(cfg, workdir)
    seen = []
    make = inference.make_extract_fn

    def recording(model, flip=False):
        seen.append(flip)
        return make(model, flip=flip)

    monkeypatch.setattr(inference, "make_extract_fn", recording)
    cfg.init_checkpoint = workdir
    cfg.eval.flip = False  # the demo config turns flip on; set both values explicitly
    plain = experiment.evaluate_only(cfg, str(tmp_path / "plain"))
    cfg.eval.flip = True
    flipped = experiment.evaluate_only(cfg, str(tmp_path / "flip"))
    assert seen == [False, True]
    assert 0 <= flipped["mAP"] <= 1 and len(flipped["cmc"]) == len(plain["cmc"])

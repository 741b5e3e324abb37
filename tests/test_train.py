"""The training loop end to end on a tiny synthetic dataset: logging, checkpoints, resume, NaN stop, multi-device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from tmspr_jax import experiment, inference, train
from tmspr_jax.data import pipeline
from tmspr_jax.datagen import ensure as setup
from tmspr_jax.datagen import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(root: str):
    """The demo config shrunk to seconds: 64x32 images, width 32, depth 2, batch 8 (2 ids x 4)."""
    c = demo.get_config()
    c.img_size = (64, 32)
    c.data.data_dir = os.path.join(root, "tfds")
    c.data.manual_dir = os.path.join(root, "synthetic")
    c.data.synthetic = False  # the fixture generates a smaller set itself
    c.parsing.maps_dir = os.path.join(c.data.manual_dir, "parsing_lip")
    c.data.occluder_dir = ""  # the training split's images (the folder option is tested in test_pipeline/test_demo)
    c.data.batch_size = 8
    c.data.test_batch_size = 16
    c.data.num_workers = 0
    c.model.embed_dim = 32
    c.model.depth = 2
    c.model.num_heads = 2
    c.model.stride = (16, 16)
    c.train.epochs = 2
    c.train.max_steps_per_epoch = 2
    c.train.eval_period = 1
    c.train.log_every = 1
    c.train.eval_untrained = False
    c.eval.max_rank = 10
    return c


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("tiny_reid"))
    synthetic.generate(
        os.path.join(root, "synthetic"),
        num_train_ids=8,
        images_per_id=4,
        num_test_ids=6,
        queries_per_id=1,
        gallery_per_id=3,
        height=64,
        width=32,
    )
    setup.prepare_for_config(tiny_config(root))
    return root


def latest_variables(workdir: str) -> tuple[int, dict]:
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"))
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return step, {"params": state["params"], "batch_stats": state["batch_stats"]}


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_training_writes_metrics_results_and_checkpoints(data_root, tmp_path):
    cfg = tiny_config(data_root)
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(cfg, workdir)

    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train_rows = [r for r in records if r["kind"] == "train"]
    eval_rows = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    for key in ("loss", "id", "triplet", "seg", "rec", "acc", "lr_weight", "lr_bias", "samples_per_s"):
        assert all(np.isfinite(r[key]) for r in train_rows), key
    # Epoch 2 uses epoch 2's learning rate (the schedule is stepped per epoch).
    assert train_rows[0]["lr_weight"] == train_rows[1]["lr_weight"] != train_rows[2]["lr_weight"]
    assert [r["epoch"] for r in eval_rows] == [1, 2]
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert set(saved) >= {"mAP", "rank1", "rank5", "rank10", "mINP", "cmc", "ci95"}
    assert 0.0 <= saved["mAP"] <= 1.0 and saved["mAP"] == pytest.approx(results["mAP"])
    assert saved["ci95"]["mAP"][0] <= saved["mAP"] <= saved["ci95"]["mAP"][1]
    assert os.listdir(os.path.join(workdir, "tb"))
    step, variables = latest_variables(workdir)
    assert step == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def test_margin_id_loss_trains_and_a_mismatched_classifier_is_refused(data_root, tmp_path):
    cfg = tiny_config(data_root)
    cfg.loss.id_loss = "cosface"
    with pytest.raises(ValueError, match=r"id_loss='cosface' needs config.model.classifier='cosine', got 'linear'"):
        train.train_and_evaluate(cfg, str(tmp_path / "refused"))
    assert not os.path.exists(tmp_path / "refused")  # refused before anything is written
    cfg.model.classifier = "cosine"
    workdir = str(tmp_path / "cosface")
    train.train_and_evaluate(cfg, workdir)
    rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"]
    assert len(rows) == 4 and all(np.isfinite(r["loss"]) and np.isfinite(r["id"]) for r in rows)
    _, variables = latest_variables(workdir)
    assert variables["params"]["classifier"]["kernel"].shape == (32, 8)
    cfg.model.classifier, cfg.loss.id_loss = "cosine", "softmax"
    with pytest.raises(ValueError, match=r"id_loss='softmax' needs config.model.classifier='linear', got 'cosine'"):
        train.train_and_evaluate(cfg, str(tmp_path / "refused"))


def test_eval_mode_reproduces_the_trained_checkpoint(data_root, tmp_path):
    cfg = tiny_config(data_root)
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
    cfg = tiny_config(data_root)
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
    cfg = tiny_config(data_root)
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


def test_killed_and_resumed_run_ends_with_the_same_parameters(data_root, tmp_path):
    cfg = tiny_config(data_root)
    cfg.train.epochs = 3
    straight = str(tmp_path / "straight")
    train.train_and_evaluate(cfg, straight)

    resumed = str(tmp_path / "resumed")
    # "Kill" in the middle of epoch 2 (after 3 steps; the last checkpoint is the end of epoch 1), then restart.
    train.train_and_evaluate(cfg, resumed, stop_after_steps=3)
    assert latest_variables(resumed)[0] == 2
    train.train_and_evaluate(cfg, resumed)

    step_a, a = latest_variables(straight)
    step_b, b = latest_variables(resumed)
    assert step_a == step_b == 6
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_mid_epoch_checkpoint_resumes_at_the_saved_batch(data_root, tmp_path):
    cfg = tiny_config(data_root)
    cfg.train.max_steps_per_epoch = 3
    cfg.train.checkpoint_every_steps = 2
    straight = str(tmp_path / "straight")
    train.train_and_evaluate(cfg, straight)
    resumed = str(tmp_path / "resumed")
    train.train_and_evaluate(cfg, resumed, stop_after_steps=2)  # checkpoint at step 2 = epoch 1, batch 2
    assert latest_variables(resumed)[0] == 2
    train.train_and_evaluate(cfg, resumed)
    a, b = latest_variables(straight)[1], latest_variables(resumed)[1]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    cfg = tiny_config(data_root)
    workdir = str(tmp_path / "run")
    original = pipeline.TrainIterator.epoch_batches

    def poisoned(self, epoch):
        for i, batch in enumerate(original(self, epoch)):
            if epoch == 2 and i == 1:  # global step 4
                batch = dict(batch, views=np.full_like(batch["views"], np.nan))
            yield batch

    monkeypatch.setattr(pipeline.TrainIterator, "epoch_batches", poisoned)
    with pytest.raises(train.NonFiniteLossError, match=r"at step 4.*last good checkpoint.*step 2"):
        train.train_and_evaluate(cfg, workdir)
    step, variables = latest_variables(workdir)
    assert step == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


_STEPS_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, os.path.join({repo!r}, "tests"))
import jax
from test_train import tiny_config
from tmspr_jax import inference, train
cfg = tiny_config({root!r})
cfg.train.epochs = 1
cfg.train.max_steps_per_epoch = 3
train.train_and_evaluate(cfg, {workdir!r})
rows = [json.loads(l) for l in open(os.path.join({workdir!r}, "metrics.jsonl"))]
print("LOSSES", json.dumps([r["loss"] for r in rows if r["kind"] == "train"]), len(jax.devices()))
"""


def _losses_on(devices: int, root: str, workdir: str) -> list[float]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    code = _STEPS_SCRIPT.format(repo=REPO, root=root, workdir=workdir)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("LOSSES")][-1]
    losses, n = line[len("LOSSES ") :].rsplit(" ", 1)
    assert int(n) == devices
    return json.loads(losses)


def test_eight_devices_give_the_single_device_losses(data_root, tmp_path):
    one = _losses_on(1, data_root, str(tmp_path / "one"))
    eight = _losses_on(8, data_root, str(tmp_path / "eight"))
    assert len(one) == len(eight) == 3
    # The first loss sees the same parameters: equal to float32 rounding. Later ones follow updates whose gradients
    # were summed over 8 devices in another order (1e-5 of the loss measured after one SGD step); a wrong split of
    # the batch or of BatchNorm's statistics moves them by percents.
    np.testing.assert_allclose(eight[0], one[0], rtol=1e-6)
    np.testing.assert_allclose(eight, one, rtol=1e-4)

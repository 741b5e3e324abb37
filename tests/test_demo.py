"""The demo in CI: training on the synthetic occluded dataset must raise mAP by at least 0.2 over the untrained model.

The same code path as `python -m tmspr_jax.main` (data generation, TFDS build, parsing targets, training, evaluation)
with the demo's data, model and schedule, evaluated once at the end instead of twice.
"""

from __future__ import annotations

import json
import os

from configs import demo
from tmspr_jax import evaluate, experiment, train
from tmspr_jax.datagen import ensure


def short_demo_config(cache: str):
    c = demo.get_config()
    root = os.path.join(cache, "demo_short")
    c.data.data_dir = os.path.join(root, "tfds")
    c.data.manual_dir = os.path.join(root, "synthetic")
    c.parsing.maps_dir = os.path.join(c.data.manual_dir, "parsing_lip")
    c.data.num_workers = 0
    # The demo's whole schedule: a shorter one is not much cheaper (data generation, compilation and evaluation are
    # fixed costs) and gains less.
    c.train.eval_period = c.train.epochs
    c.train.log_every = 50
    return c


def test_training_raises_map_by_at_least_0_2_over_the_untrained_model(tmp_path):
    cfg = short_demo_config(str(tmp_path))
    ensure.prepare_for_config(cfg)
    workdir = str(tmp_path / "run")
    untrained = experiment.evaluate_untrained(cfg, workdir)
    trained = train.train_and_evaluate(cfg, workdir)
    print(f"untrained: {evaluate.summarize(untrained)}\ntrained:   {evaluate.summarize(trained)}")
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["mAP"] == trained["mAP"]
    assert trained["mAP"] >= untrained["mAP"] + 0.2, (untrained["mAP"], trained["mAP"])

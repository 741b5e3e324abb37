"""The learning-free colour-histogram baseline: its feature and its scoring on a generated dataset."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tmspr_jax.tools import colour_baseline as cb


def test_histograms_count_the_colours_of_each_stripe():
    img = np.zeros((1, 8, 8, 3), np.uint8)
    img[0, :4, :, 0] = 255  # top half red, bottom half black
    img[0, :, :2] = 255  # left quarter white: outside the central half, ignored
    f = cb.stripe_colour_histograms(img, stripes=2, bins=2, centre=0.5).reshape(2, 8)
    red, black = (1 * 2 + 0) * 2 + 0, 0  # colour code (r * bins + g) * bins + b
    np.testing.assert_allclose(f[0], np.eye(8)[red])
    np.testing.assert_allclose(f[1], np.eye(8)[black])
    mixed = np.zeros((1, 4, 4, 3), np.uint8)
    mixed[0, :, 2:] = 255  # half of every stripe white: sqrt(1/2) on two colours
    np.testing.assert_allclose(cb.stripe_colour_histograms(mixed, 1, 2, 1.0)[0, [0, 7]], [0.5**0.5] * 2, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match", [(dict(stripes=0), "stripes"), (dict(bins=0), "bins"), (dict(centre=0.0), "centre")]
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cb.stripe_colour_histograms(np.zeros((1, 8, 4, 3), np.uint8), **kwargs)
    with pytest.raises(ValueError, match="images"):
        cb.stripe_colour_histograms(np.zeros((8, 4, 3), np.uint8))


def test_scores_a_generated_split_above_chance(tmp_path):
    from configs import demo
    from tmspr_jax.datagen import ensure

    c = demo.get_config()
    c.data.data_dir = str(tmp_path / "tfds")
    c.data.manual_dir = str(tmp_path / "synthetic")
    c.parsing.maps_dir = str(tmp_path / "synthetic" / "parsing_lip")
    c.data.synthetic_options = dict(
        num_train_ids=4,
        images_per_id=2,
        num_test_ids=12,
        queries_per_id=2,
        gallery_per_id=4,
        camera_strength=0.0,
        background_saturation=0.0,
        seed=1,
    )
    c.eval.max_rank = 10  # the gallery holds 48 images
    ensure.prepare_for_config(c)
    results = cb.evaluate_config(c)
    # 12 identities with 4 gallery images each: random features score about 4/48 mAP; clothes colours do much better.
    assert results["mAP"] > 0.4 and results["rank1"] > 0.4, results
    assert set(results) >= {"mAP", "rank1", "rank5", "rank10", "mINP", "cmc"}

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "baseline.json"
    cfg = os.path.join(root, "configs", "demo.py")
    args = [
        f"--config={cfg}",
        f"--config.data.data_dir={c.data.data_dir}",
        f"--config.data.manual_dir={c.data.manual_dir}",
        "--config.eval.max_rank=10",
        f"--out={out}",
    ]
    cmd = [sys.executable, "-m", "tmspr_jax.tools.colour_baseline", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"mAP {results['mAP']:.1%}" in r.stdout
    lo, hi = results["ci95"]["rank1"]  # the demo config draws bootstrap intervals; the printout gives them
    assert f"Rank-1 {lo:.1%}-{hi:.1%}" in r.stdout, r.stdout
    assert out.exists()

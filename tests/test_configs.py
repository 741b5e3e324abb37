"""configs/: the paper's settings train in bfloat16 and evaluate in float32, as the reference's fp16 autocast; the
demo trains in float32."""

from __future__ import annotations

import importlib

import pytest

PAPER = [
    "occ_duke",
    "occ_reid",
    "partial_reid",
    "market",
    "duke",
    "msmt17",
    "market_384",
    "duke_384",
    "msmt17_384",
    "occ_duke_transreid",
    "occ_duke_ablation_views",
    "occ_duke_ablation_hspm",
]


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_compute_in_bfloat16_and_evaluate_in_float32(name):
    cfg = importlib.import_module(f"configs.{name}").get_config()
    assert (cfg.model.dtype, cfg.eval.dtype, cfg.model.remat) == ("bfloat16", "float32", "dots")


def test_the_demo_computes_in_float32():
    cfg = importlib.import_module("configs.demo").get_config()
    assert (cfg.model.dtype, cfg.eval.dtype) == ("float32", "float32")


@pytest.mark.parametrize(
    "name,train", [("market_384", "market1501"), ("duke_384", "dukemtmc_reid"), ("msmt17_384", "msmt17")]
)
def test_384_configs_take_the_grid_and_position_embedding_from_the_image_size(name, train):
    """TransReID's vit_transreid_stride_384.yml: 384x128, stride 12, batch 64, 120 epochs; the grid (31x10) and the
    position embedding's length follow from img_size and stride."""
    import jax

    from tmspr_jax.models import build_model, init_variables

    cfg = importlib.import_module(f"configs.{name}").get_config()
    assert (cfg.data.train, cfg.img_size, cfg.model.stride, cfg.data.batch_size, cfg.train.epochs) == (
        train,
        (384, 128),
        (12, 12),
        64,
        120,
    )
    model = build_model(cfg.model, cfg.img_size, 10, 6)
    assert model.grid == (31, 10)
    shapes = jax.eval_shape(lambda r: init_variables(model, r), jax.random.key(0))
    assert shapes["params"]["backbone"]["pos_embed"].shape == (1, 1 + 31 * 10, 768)

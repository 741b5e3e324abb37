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

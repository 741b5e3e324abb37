"""Fine-tuning a trained model on new identities (config.model.pretrained_heads='reinit'): tmspr_jax.weights.
fine_tune_start and convert_weights.convert.load_pretrained / fine_tune, on tiny generated models and data."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
import pytest
import torch

import tiny
from convert_weights.convert import convert_file, load_pretrained
from model_utils import TINY_IMG, randomize_reference_state
from tmspr_jax import train, weights
from tmspr_jax.models import build_model, init_variables
from tmspr_jax.oracles.tmspr import build_torch_model, state_dict_numpy

SRC_CLASSES, SRC_CAMS = 5, 3


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_reinit(key: str, cams_differ: bool) -> bool:
    return key.startswith("['params']['classifier") or (cams_differ and "sie_embed" in key)


def _trained_folder(tmp_path, cfg_model, seed=0) -> tuple[str, dict]:
    """A 'trained' T-MSPR of SRC_CLASSES identities and SRC_CAMS cameras as a converted-weights folder."""
    model = build_model(cfg_model, TINY_IMG, SRC_CLASSES, SRC_CAMS)
    variables = init_variables(model, jax.random.key(seed))
    # non-trivial BNNeck statistics, so that keeping them is visible
    variables["batch_stats"] = jax.tree_util.tree_map(lambda x: x + 0.25, variables["batch_stats"])
    folder = str(tmp_path / "trained")
    weights.save_variables(folder, variables, {**weights.model_meta(model), "kind": "tmspr"})
    return folder, variables


@pytest.mark.parametrize("cams", [SRC_CAMS, 2])
def test_kept_parameters_are_bit_equal_and_the_heads_are_new(tmp_path, capsys, cams):
    cfg = tiny.model_config(pretrained_heads="reinit")
    folder, trained = _trained_folder(tmp_path, cfg)
    out = load_pretrained(folder, cfg, TINY_IMG, 9, cams, jax.random.key(7))
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and line.startswith(f"Fine-tuning from {folder} (tmspr): kept backbone, b1, b2, ")
    assert "part head, 15 BNNecks; re-initialised 11 classifiers (5 -> 9 identities)" in line
    assert ("SIE camera table (3 -> 2 cameras)" in line) == (cams != SRC_CAMS)
    got, src = _flat(out), _flat(trained)
    shapes = jax.eval_shape(lambda: init_variables(build_model(cfg, TINY_IMG, 9, cams), jax.random.key(0)))
    want_shapes = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    assert set(got) == set(want_shapes)
    for k, v in got.items():
        assert v.shape == want_shapes[k].shape, k
        if _is_reinit(k, cams != SRC_CAMS):
            assert k not in src or v.shape != src[k].shape or not np.array_equal(v, src[k]), k
        else:
            np.testing.assert_array_equal(v, src[k], err_msg=k)
    # the reference's initialisation of the new classifiers: N(0, 0.001^2)
    assert 0.5e-3 < float(np.std(got["['params']['classifier']['kernel']"])) < 1.5e-3


def test_strict_keeps_the_clear_refusal(tmp_path):
    cfg = tiny.model_config()
    folder, _ = _trained_folder(tmp_path, cfg)
    with pytest.raises(weights.WeightsError, match=r"num_classes=5 but num_classes=9 .*pretrained_heads=reinit"):
        load_pretrained(folder, cfg, TINY_IMG, 9, SRC_CAMS, jax.random.key(0))
    cfg.pretrained_heads = "keep"
    for call in (  # refused when the model is built, before any data is read, and by the loader
        lambda: build_model(cfg, TINY_IMG, 9, SRC_CAMS),
        lambda: load_pretrained(folder, cfg, TINY_IMG, 9, SRC_CAMS, jax.random.key(0)),
    ):
        with pytest.raises(ValueError, match=r"pretrained_heads='keep': expected one of \('strict', 'reinit'\)"):
            call()


def test_another_model_is_not_fine_tuned(tmp_path):
    """Only the classifiers and the SIE table may differ: a TransReID (no part head) checkpoint into a T-MSPR config
    is one error naming the modules."""
    folder, _ = _trained_folder(tmp_path, tiny.model_config(multi_view=False, perception=False, recovery=False))
    with pytest.raises(weights.WeightsError, match=r"only in the config's model \['bottleneck_bp0'"):
        load_pretrained(folder, tiny.model_config(pretrained_heads="reinit"), TINY_IMG, 9, 2, jax.random.key(0))


def test_a_trained_reference_pth_fine_tunes(tmp_path, capsys):
    cfg = tiny.model_config(pretrained_heads="reinit")
    torch.manual_seed(0)
    oracle = build_torch_model(cfg, TINY_IMG, SRC_CLASSES, SRC_CAMS)
    state = randomize_reference_state(state_dict_numpy(oracle), 0)
    path = str(tmp_path / "transformer_120.pth")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    out = load_pretrained(path, cfg, TINY_IMG, 4, 2, jax.random.key(1))
    assert "(5 -> 4 identities), SIE camera table (3 -> 2 cameras)" in capsys.readouterr().out
    converted, _, _ = convert_file(path, cfg, TINY_IMG, jax.random.key(1))
    src = _flat(converted)
    for k, v in _flat(out).items():
        if not _is_reinit(k, True):
            np.testing.assert_array_equal(v, src[k], err_msg=k)


def test_training_runs_from_a_model_of_other_identities(data_root, tmp_path, capsys):
    cfg = tiny.train_config(data_root)
    folder, _ = _trained_folder(tmp_path, cfg.model)
    cfg.model.pretrained = folder
    cfg.model.pretrained_heads = "reinit"
    cfg.train.checkpoint_every_steps = 1  # saved after its one step
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(cfg, workdir, load_pretrained=load_pretrained, stop_after_steps=1)
    assert "re-initialised 11 classifiers (5 -> 8 identities)" in capsys.readouterr().out
    rows = [r for r in tiny.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r.get("kind", "train") == "train"]
    assert rows and math.isfinite(rows[0]["loss"])
    # the run's workdir is itself a trained model to fine-tune from: its newest checkpoint, kept bit-equal
    step, saved = tiny.latest_variables(workdir)
    out = load_pretrained(workdir, cfg.model, TINY_IMG, 3, 2, jax.random.key(0))
    assert f"Fine-tuning from {workdir} (training workdir, step {step}): " in capsys.readouterr().out
    src = _flat(saved)
    for k, v in _flat(out).items():
        if not _is_reinit(k, True):
            np.testing.assert_array_equal(v, src[k], err_msg=k)

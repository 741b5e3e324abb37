"""SCHP's parser in Flax against the PyTorch oracle, through the converter (tmspr_jax.parser, convert_weights.schp)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from convert_weights.readers import CheckpointError
from convert_weights.schp import convert_state
from schp_fixtures import TINY, labels_agree_except_ties, rel_err, state_of, tiny_oracle
from tmspr_jax.oracles import schp as oracle
from tmspr_jax.parser.network import Arch, AugmentCE2P

# Faster CPU compiles for these one-off programs (LLVM's expensive passes off); the numbers are the same ops.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compiled(arch, variables, x_nhwc):
    return jax.jit(AugmentCE2P(arch).apply).lower(variables, x_nhwc).compile(compiler_options=FAST_COMPILE)


def _compare(model, variables, arch, x_nchw, fn=None):
    with torch.no_grad():
        (parsing, fusion), (edge,) = model(torch.from_numpy(x_nchw))
    x = x_nchw.transpose(0, 2, 3, 1)
    got = (fn or _compiled(arch, variables, x))(variables, x)
    for name, want in (("fusion", fusion), ("parsing", parsing), ("edge", edge)):
        want = want.numpy().transpose(0, 2, 3, 1)
        assert got[name].shape == want.shape, name
        assert rel_err(got[name], want) <= 1e-5, (name, rel_err(got[name], want))
    return np.asarray(got["fusion"]), fusion.numpy().transpose(0, 2, 3, 1)


def test_tiny_network_matches_oracle():
    model = tiny_oracle(seed=1)
    state = state_of(model)
    variables, meta, report = convert_state(state)
    arch = Arch.from_dict(meta["arch"])
    assert arch == Arch(num_classes=20, **TINY)
    assert meta["num_classes"] == 20 and meta["dataset"] == "lip" and meta["input_size"] == [473, 473]
    # Odd sizes: PSP's adaptive pools get unequal, overlapping bins; 2 images, 2 aspect ratios of feature maps.
    x = np.random.RandomState(0).randn(2, 3, 97, 71).astype(np.float32)
    fn = _compiled(arch, variables, x.transpose(0, 2, 3, 1))
    got, want = _compare(model, variables, arch, x, fn)
    assert not labels_agree_except_ties(got, want).any()
    # SCHP's batch norm scales by |weight| + eps: with every ABN weight negated the oracle gives the same output,
    # and so does the port (plain batch norm would not).
    assert any((v < 0).any() for k, v in state.items() if k.endswith("weight") and v.ndim == 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, oracle.InPlaceABNSync):
                mod.weight.neg_()
    flipped, _, _ = convert_state(state_of(model))
    got2, want2 = _compare(model, flipped, arch, x, fn)
    np.testing.assert_array_equal(got2, got)
    assert rel_err(want2, want) <= 1e-6


def test_resnet101_matches_oracle():
    """The full SCHP LIP network (ResNet-101, [3, 4, 23, 3], 66.6 M values) once, at a small input."""
    model = oracle.randomize_(oracle.ResNet(num_classes=20), seed=3)
    variables, meta, _ = convert_state(state_of(model))
    arch = Arch.from_dict(meta["arch"])
    assert arch == Arch() and arch.layers == (3, 4, 23, 3)
    x = np.random.RandomState(2).randn(1, 3, 65, 49).astype(np.float32)
    got, want = _compare(model, variables, arch, x)
    assert not labels_agree_except_ties(got, want).any()


@pytest.mark.parametrize("num_classes,dataset,size", [(18, "atr", 512), (7, "pascal", 512), (20, "lip", 473)])
def test_class_count_from_checkpoint(num_classes, dataset, size):
    variables, meta, _ = convert_state(state_of(tiny_oracle(num_classes)))
    assert meta["num_classes"] == num_classes and meta["dataset"] == dataset and meta["input_size"] == [size, size]
    assert len(meta["labels"]) == num_classes
    assert variables["params"]["fushion_3"]["kernel"].shape[-1] == num_classes
    assert variables["params"]["decoder"]["conv4"]["kernel"].shape[-1] == num_classes


def test_converter_errors_name_the_key():
    state = state_of(tiny_oracle())
    missing = dict(state)
    del missing["layer3.0.bn2.running_var"]
    with pytest.raises(CheckpointError, match=r"missing key.*layer3\.0\.bn2\.running_var"):
        convert_state(missing)
    unknown = {**state, "decoder.conv9.weight": np.zeros((4, 4, 1, 1), np.float32)}
    with pytest.raises(CheckpointError, match=r"unknown key.*decoder\.conv9\.weight"):
        convert_state(unknown)
    bad = {**state, "edge.conv5.weight": np.zeros((2, 5, 1, 1), np.float32)}
    with pytest.raises(CheckpointError, match=r"edge\.conv5\.weight.*shape \(2, 5, 1, 1\), expected \(2, 6, 1, 1\)"):
        convert_state(bad)
    no_head = {k: v for k, v in state.items() if not k.startswith("fushion.3.")}
    with pytest.raises(CheckpointError, match=r"fushion\.3\.weight"):
        convert_state(no_head)
    # a plain-BN step counter is skipped, with its reason in the report
    _, _, report = convert_state({**state, "bn1.num_batches_tracked": np.zeros((), np.int64)})
    assert any("num_batches_tracked" in line and "skipped 1" in line for line in report)


def test_convert_cli(tmp_path):
    """The command on a checkpoint saved as SCHP saves it (state_dict wrapper, module. prefix); errors in one line."""
    import subprocess
    import sys

    from schp_fixtures import save_schp_checkpoint
    from tmspr_jax.parser.weights import load_parser

    model = tiny_oracle(seed=4)
    src = save_schp_checkpoint(model, str(tmp_path / "exp-schp-lip.pth"))
    r = subprocess.run(
        [sys.executable, "-m", "convert_weights", "schp", src, "--out", str(tmp_path / "w")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "20 classes (lip)" in r.stdout
    arch, variables, meta = load_parser(str(tmp_path / "w"))
    assert arch == Arch(**TINY)
    want = model.state_dict()["layer2.0.conv2.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(variables["params"]["layer2_0"]["conv2"]["kernel"], want)
    np.testing.assert_array_equal(
        variables["batch_stats"]["fushion_1"]["var"], model.state_dict()["fushion.1.running_var"].numpy()
    )
    # a second conversion into the same folder is refused without --overwrite
    from convert_weights.schp import convert_file

    with pytest.raises(ValueError, match="not empty"):
        convert_file(src, str(tmp_path / "w"))

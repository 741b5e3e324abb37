"""Tests of tmspr_jax.weights (orbax save/restore + meta.json, device-independent restore) and of
convert_weights.convert.load_pretrained (files and folders into a config's model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from convert_fixtures import D, converter_config, timm_to_vit_jax_layout, timm_vit_state
from convert_weights.convert import convert_file, load_pretrained
from convert_weights.mapping import variables_to_reference
from tmspr_jax.weights import WeightsError, is_weights_folder, load_variables, save_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("vit") / "vit.npz"
    np.savez(p, **timm_to_vit_jax_layout(timm_vit_state()))
    return str(p)


def test_save_load_round_trip(tmp_path):
    rs = np.random.RandomState(0)
    variables = {
        "params": {"a": {"kernel": rs.randn(3, 4).astype(np.float32)}, "b": rs.randn(5).astype(np.float32)},
        "batch_stats": {"bn": {"mean": rs.randn(4).astype(np.float32)}},
    }
    meta = {"num_classes": 7, "kind": "tmspr", "grid": [22, 11]}
    save_variables(str(tmp_path / "w"), variables, meta)
    got, got_meta = load_variables(str(tmp_path / "w"))
    assert got_meta == meta
    flat, want = _flat(got), _flat(variables)
    assert flat.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(flat[k], want[k])
    assert isinstance(jax.tree_util.tree_leaves(got)[0], jax.Array)
    with pytest.raises(WeightsError, match="not empty"):
        save_variables(str(tmp_path / "w"), variables, meta)
    variables["params"]["b"] = np.zeros(5, np.float32)
    save_variables(str(tmp_path / "w"), variables, meta, overwrite=True)
    np.testing.assert_array_equal(np.asarray(load_variables(str(tmp_path / "w"))[0]["params"]["b"]), 0.0)


def test_load_variables_rejects_a_plain_folder(tmp_path):
    with pytest.raises(WeightsError, match="meta.json"):
        load_variables(str(tmp_path))


def test_weights_folders_are_told_from_workdirs(tmp_path):
    variables = {"params": {"b": np.zeros(2, np.float32)}, "batch_stats": {}}
    save_variables(str(tmp_path / "w"), variables, {"num_classes": 1})
    (tmp_path / "workdir" / "checkpoints").mkdir(parents=True)
    assert is_weights_folder(str(tmp_path / "w"))
    assert not is_weights_folder(str(tmp_path / "workdir"))
    assert not is_weights_folder(str(tmp_path / "missing"))


def test_restore_arrays_saved_sharded_over_other_devices(tmp_path):
    """A checkpoint written from arrays sharded over 4 devices restores in a 1-device process."""
    out = tmp_path / "w"
    code = f"""
import json, os, numpy as np, jax, orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((4,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
x = jax.device_put(np.arange(16, dtype=np.float32).reshape(8, 2), NamedSharding(mesh, P('data')))
y = jax.device_put(np.ones(3, np.float32), NamedSharding(mesh, P()))
os.makedirs({str(out)!r})
with ocp.StandardCheckpointer() as c:
    c.save(os.path.join({str(out)!r}, 'variables'), {{'params': {{'x': x}}, 'batch_stats': {{'bn': {{'var': y}}}}}})
json.dump({{'kind': 'tmspr'}}, open(os.path.join({str(out)!r}, 'meta.json'), 'w'))
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert len(jax.devices()) == 1
    variables, meta = load_variables(str(out))
    np.testing.assert_array_equal(np.asarray(variables["params"]["x"]), np.arange(16).reshape(8, 2))
    np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["bn"]["var"]), 1.0)
    assert variables["params"]["x"].sharding.device_set == {jax.devices()[0]}


def test_load_pretrained_from_file_and_imagenet_folder(npz_path, tmp_path):
    cfg = converter_config()
    direct = load_pretrained(npz_path, cfg.model, cfg.img_size, 6, 4, jax.random.key(0))
    assert direct["params"]["classifier"]["kernel"].shape == (D, 6)
    assert direct["params"]["backbone"]["sie_embed"].shape == (4, 1, D)
    # ImageNet-only folder converted with placeholder heads: backbone kept, heads re-initialised for the new counts
    variables, meta, _ = convert_file(npz_path, cfg.model, cfg.img_size, jax.random.key(1))
    assert meta["kind"] == "imagenet" and meta["num_classes"] == 1
    save_variables(str(tmp_path / "in"), variables, meta)
    loaded = load_pretrained(str(tmp_path / "in"), cfg.model, cfg.img_size, 6, 4, jax.random.key(0))
    a, b = _flat(loaded), _flat(direct)
    assert a.keys() == b.keys()
    for k in b:  # same source, same rng: identical, heads included
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_load_pretrained_trained_folder_checks_counts_and_grid(npz_path, tmp_path):
    cfg = converter_config()
    variables, meta, _ = convert_file(
        npz_path, cfg.model, cfg.img_size, jax.random.key(0), num_classes=6, num_cameras=4
    )
    meta["kind"] = "tmspr"  # as if trained: its heads must be reused, so the counts must match
    save_variables(str(tmp_path / "t"), variables, meta)
    same = load_pretrained(str(tmp_path / "t"), cfg.model, cfg.img_size, 6, 4, jax.random.key(5))
    ref_a, ref_b = variables_to_reference(same), variables_to_reference(variables)
    for k in ref_b:
        np.testing.assert_array_equal(ref_a[k], ref_b[k], err_msg=k)
    with pytest.raises(WeightsError, match="num_classes=6 but num_classes=9"):
        load_pretrained(str(tmp_path / "t"), cfg.model, cfg.img_size, 9, 4, jax.random.key(0))
    with pytest.raises(WeightsError, match="num_cameras=4 but 8"):
        load_pretrained(str(tmp_path / "t"), cfg.model, cfg.img_size, 6, 8, jax.random.key(0))
    cfg12 = converter_config()
    cfg12.model.stride = (12, 12)
    with pytest.raises(WeightsError, match=r"grid=\[22, 11\].*grid=\[21, 10\]"):
        load_pretrained(str(tmp_path / "t"), cfg12.model, cfg12.img_size, 6, 4, jax.random.key(0))


def test_load_pretrained_bad_paths(tmp_path):
    cfg = converter_config()
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_pretrained(str(tmp_path / "nope.npz"), cfg.model, cfg.img_size, 2, 2, jax.random.key(0))
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "x"}))
    with pytest.raises(WeightsError, match="variables"):
        load_pretrained(str(tmp_path), cfg.model, cfg.img_size, 2, 2, jax.random.key(0))


def test_training_reads_pretrained_weights_through_the_loader_it_is_given(npz_path):
    """The library cannot read PyTorch layouts: a run takes the converter's loader (python -m tmspr_jax.main passes
    convert_weights.convert.load_pretrained) and says what to do without one."""
    import types

    from tmspr_jax import experiment
    from tmspr_jax.models import build_model

    cfg = converter_config()
    cfg.model.pretrained = npz_path
    exp = types.SimpleNamespace(
        config=cfg, model=build_model(cfg.model, cfg.img_size, 6, 4), num_classes=6, num_cameras=4
    )
    got = experiment.initial_variables(exp, jax.random.key(0), load_pretrained)
    want = load_pretrained(npz_path, cfg.model, cfg.img_size, 6, 4, jax.random.key(0))
    a, b = _flat(got), _flat(want)
    assert a.keys() == b.keys()
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with pytest.raises(ValueError, match=r"config\.model\.pretrained=.*vit\.npz.*needs a weights loader"):
        experiment.initial_variables(exp, jax.random.key(0))

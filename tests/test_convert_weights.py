"""Tests of convert_weights: readers, pos-embed resize, timm / vit_jax / T-MSPR / TransReID conversion and the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch  # the oracle and .pth writing need torch (the [torch] extra, installed by the test command)
import torch.nn.functional as F

from convert_fixtures import (
    CONFIG_PATH,
    HEADS,
    D,
    converter_config,
    timm_to_vit_jax_layout,
    timm_vit_state,
    write_all_formats,
)
from convert_weights.convert import convert_file
from convert_weights.mapping import MappingError, reference_to_variables, variables_to_reference
from convert_weights.readers import CheckpointError, read_checkpoint
from convert_weights.resize import bilinear_resize, resize_pos_embed
from convert_weights.timm import timm_to_reference, vit_jax_to_timm
from convert_weights.tmspr import tmspr_only_heads, tmspr_to_reference
from tmspr_jax.models import build_model, init_variables
from tmspr_jax.weights import load_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, NUM_CAMERAS = 5, 3


def _torch_resize(grid: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(grid).permute(2, 0, 1)[None]
    return F.interpolate(t, size=hw, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out


def _run_cli(*args, env_extra=None, block_torch=False):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    if block_torch:
        code = (
            "import sys, runpy; sys.modules['torch'] = None; sys.argv = ['convert_weights'] + sys.argv[1:]; "
            "runpy.run_module('convert_weights', run_name='__main__')"
        )
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "convert_weights", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------------ resize


@pytest.mark.parametrize("hw", [(22, 11), (21, 10)])
def test_resize_matches_torch_bilinear(hw):
    grid = np.random.RandomState(1).uniform(-1, 1, (14, 14, 32)).astype(np.float32)
    np.testing.assert_allclose(bilinear_resize(grid, hw), _torch_resize(grid, hw), rtol=0, atol=1e-6)


def test_resize_pos_embed_keeps_cls_and_is_row_major():
    pos = np.random.RandomState(2).uniform(-1, 1, (1, 197, 16)).astype(np.float32)
    out = resize_pos_embed(pos, (14, 14), (22, 11))
    assert out.shape == (1, 1 + 242, 16)
    np.testing.assert_array_equal(out[:, 0], pos[:, 0])
    want = _torch_resize(pos[0, 1:].reshape(14, 14, 16), (22, 11)).reshape(1, 242, 16)
    np.testing.assert_allclose(out[:, 1:], want, rtol=0, atol=1e-6)


def test_resize_rejects_wrong_source_grid():
    with pytest.raises(ValueError, match="14x13"):
        resize_pos_embed(np.zeros((1, 197, 4), np.float32), (14, 13), (22, 11))


# ------------------------------------------------------------------------------------------------ timm / vit_jax


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    st = timm_vit_state()
    return st, write_all_formats(st, str(tmp_path_factory.mktemp("vit")))


@pytest.fixture(scope="module")
def converted(formats):
    cfg = converter_config()
    _, paths = formats
    out = {}
    for fmt, p in paths.items():
        v, meta, report = convert_file(
            p, cfg.model, cfg.img_size, jax.random.key(0), num_classes=NUM_CLASSES, num_cameras=NUM_CAMERAS, mode="timm"
        )
        out[fmt] = (_flat(v), meta, report)
    return out


def test_three_formats_convert_to_identical_parameters(converted):
    ref_flat = converted["pth"][0]
    for fmt in ("safetensors", "npz"):
        flat = converted[fmt][0]
        assert flat.keys() == ref_flat.keys()
        for k in ref_flat:
            np.testing.assert_array_equal(flat[k], ref_flat[k], err_msg=f"{fmt}: {k}")


def test_timm_conversion_values(formats, converted):
    st, _ = formats
    flat, meta, report = converted["pth"]
    p = "params/backbone/"
    np.testing.assert_array_equal(flat[p + "patch_embed/kernel"], st["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat[p + "blocks_0/attn/qkv/kernel"], st["blocks.0.attn.qkv.weight"].T)
    np.testing.assert_array_equal(flat[p + "blocks_0/mlp/fc2/bias"], st["blocks.0.mlp.fc2.bias"])
    assert not any(k.startswith(p + "blocks_1/") for k in flat), "the backbone keeps depth-1 blocks"
    # b1 and b2 both start as the pretrained last block + final norm
    for br in ("b1", "b2"):
        np.testing.assert_array_equal(flat[f"params/{br}/block/mlp/fc1/kernel"], st["blocks.1.mlp.fc1.weight"].T)
        np.testing.assert_array_equal(flat[f"params/{br}/block/norm1/scale"], st["blocks.1.norm1.weight"])
        np.testing.assert_array_equal(flat[f"params/{br}/norm/scale"], st["norm.weight"])
        np.testing.assert_array_equal(flat[f"params/{br}/norm/bias"], st["norm.bias"])
    # pos embed: cls kept, grid resized 14x14 -> 22x11 as torch bilinear
    pos = flat[p + "pos_embed"]
    assert pos.shape == (1, 243, D)
    np.testing.assert_array_equal(pos[:, 0], st["pos_embed"][:, 0])
    want = _torch_resize(st["pos_embed"][0, 1:].reshape(14, 14, D), (22, 11)).reshape(1, 242, D)
    np.testing.assert_allclose(pos[:, 1:], want, rtol=0, atol=1e-6)
    # report
    assert set(report.skipped) == {"head.weight", "head.bias"}
    assert "pos_embed" in report.resized and "14x14 -> 22x11" in report.resized["pos_embed"]
    assert meta["kind"] == "imagenet" and meta["grid"] == [22, 11]


def test_timm_heads_initialised_as_reference(converted):
    flat, _, _ = converted["npz"]
    assert flat["params/backbone/sie_embed"].shape == (NUM_CAMERAS, 1, D)
    assert abs(flat["params/backbone/sie_embed"].std() - 0.02) < 0.005
    assert abs(flat["params/part_head/kernel"].std() - 1e-4) < 2.5e-5
    assert flat["params/part_head/kernel"].shape == (D, 6)
    for name in ("classifier", "classifier_occ2", "classifier_cp", "classifier_0"):
        k = flat[f"params/{name}/kernel"]
        assert k.shape == (D, NUM_CLASSES) and abs(k.std() - 1e-3) < 2.5e-4, name
    for name in ("bottleneck", "bottleneck_bp5", "bottleneck_cp"):
        np.testing.assert_array_equal(flat[f"params/{name}/scale"], 1.0)
        np.testing.assert_array_equal(flat[f"batch_stats/{name}/mean"], 0.0)
        np.testing.assert_array_equal(flat[f"batch_stats/{name}/var"], 1.0)
    # distinct tensors get distinct draws
    assert not np.array_equal(flat["params/classifier/kernel"], flat["params/classifier_1/kernel"])


def test_seed_controls_head_init(formats):
    cfg = converter_config()
    _, paths = formats
    a = _flat(
        convert_file(
            paths["npz"], cfg.model, cfg.img_size, jax.random.key(0), num_classes=NUM_CLASSES, num_cameras=NUM_CAMERAS
        )[0]
    )
    b = _flat(
        convert_file(
            paths["npz"], cfg.model, cfg.img_size, jax.random.key(1), num_classes=NUM_CLASSES, num_cameras=NUM_CAMERAS
        )[0]
    )
    assert not np.array_equal(a["params/classifier/kernel"], b["params/classifier/kernel"])
    np.testing.assert_array_equal(a["params/backbone/pos_embed"], b["params/backbone/pos_embed"])


def test_vit_jax_attention_semantics():
    """q/k/v of the converted fused qkv equal the vit_jax einsum x @ kernel[D,H,hd] + bias, per head."""
    st = timm_vit_state(seed=3)
    npz = timm_to_vit_jax_layout(st)
    back = vit_jax_to_timm(npz)
    x = np.random.RandomState(4).randn(7, D).astype(np.float32)
    qkv = (x @ back["blocks.0.attn.qkv.weight"].T + back["blocks.0.attn.qkv.bias"]).reshape(7, 3, HEADS, D // HEADS)
    mha = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/"
    for j, name in enumerate(("query", "key", "value")):
        want = np.einsum("nd,dhk->nhk", x, npz[mha + name + "/kernel"]) + npz[mha + name + "/bias"]
        np.testing.assert_allclose(qkv[:, j], want, rtol=1e-5, atol=1e-5)
    o = np.random.RandomState(5).randn(7, HEADS, D // HEADS).astype(np.float32)
    want = np.einsum("nhk,hkd->nd", o, npz[mha + "out/kernel"]) + npz[mha + "out/bias"]
    got = o.reshape(7, D) @ back["blocks.0.attn.proj.weight"].T + back["blocks.0.attn.proj.bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert set(back) == set(st)


def test_vit_jax_opt_target_prefix_and_unknown_key():
    npz = timm_to_vit_jax_layout(timm_vit_state())
    prefixed = {"opt/target/" + k: v for k, v in npz.items()}
    assert set(vit_jax_to_timm(prefixed)) == set(vit_jax_to_timm(npz))
    with pytest.raises(CheckpointError, match="Transformer/encoderblock_0/Mystery/kernel"):
        vit_jax_to_timm({**npz, "Transformer/encoderblock_0/Mystery/kernel": np.zeros((2, 2), np.float32)})


def _model():
    cfg = converter_config()
    return build_model(cfg.model, cfg.img_size, NUM_CLASSES, NUM_CAMERAS)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda s: s.pop("blocks.0.norm1.weight"), "blocks.0.norm1.weight"),
        (
            lambda s: s.__setitem__("blocks.0.attn.extra.weight", np.zeros((2,), np.float32)),
            "blocks.0.attn.extra.weight",
        ),
        (lambda s: s.__setitem__("blocks.1.mlp.fc1.weight", np.zeros((3, D), np.float32)), "blocks.1.mlp.fc1.weight"),
        (
            lambda s: s.__setitem__("patch_embed.proj.weight", np.zeros((D, 3, 14, 14), np.float32)),
            "patch_embed.proj.weight",
        ),
    ],
)
def test_timm_errors_name_the_key(edit, key):
    st = timm_vit_state()
    edit(st)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        timm_to_reference(st, _model(), jax.random.key(0), source="x.pth")


def test_timm_depth_mismatch_is_an_error():
    st = {k: v for k, v in timm_vit_state().items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError, match="1 transformer blocks.*depth=2"):
        timm_to_reference(st, _model(), jax.random.key(0))


def test_pth_without_torch_is_a_clear_error(formats):
    _, paths = formats
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from convert_weights.readers import read_checkpoint, CheckpointError\n"
        f"try:\n    read_checkpoint({paths['pth']!r})\nexcept CheckpointError as e:\n    print('ERR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "ERR" in r.stdout and "[torch]" in r.stdout and ".npz" in r.stdout, r.stdout + r.stderr


def test_npz_converts_with_torch_blocked(formats, converted, tmp_path):
    _, paths = formats
    out = tmp_path / "w"
    r = _run_cli(
        "timm",
        paths["npz"],
        f"--out={out}",
        f"--config={CONFIG_PATH}",
        f"--num_classes={NUM_CLASSES}",
        f"--num_cameras={NUM_CAMERAS}",
        "--seed=0",
        block_torch=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped head.weight" in r.stdout and "resized pos_embed" in r.stdout
    variables, meta = load_variables(str(out))
    flat = _flat(variables)
    want = converted["pth"][0]
    assert flat.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(flat[k], want[k], err_msg=k)
    assert meta["kind"] == "imagenet" and meta["num_classes"] == NUM_CLASSES and meta["seed"] == 0


# ------------------------------------------------------------------------------------------------ tmspr mode


def _oracle_state(seed: int = 0, stride=(11, 11)) -> dict[str, np.ndarray]:
    from tmspr_jax.oracles.tmspr import build_torch_model, state_dict_numpy

    cfg = converter_config()
    cfg.model.stride = stride
    torch.manual_seed(seed)
    m = build_torch_model(cfg.model, cfg.img_size, NUM_CLASSES, NUM_CAMERAS)
    with torch.no_grad():  # non-trivial values everywhere, BN stats included (BN bias stays 0 as the reference)
        for name, t in m.state_dict().items():
            if not t.dtype.is_floating_point or (name.startswith("bottleneck") and name.endswith(".bias")):
                continue
            t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else torch.randn_like(t) * 0.1)
    return state_dict_numpy(m)


def _with_unused(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add modules the reference has but never runs (last backbone block, norm, fc, classifier2, NL, ...)."""
    rs = np.random.RandomState(9)
    extra = {
        f"base.blocks.1.{k.split('.', 2)[2]}": rs.randn(*v.shape).astype(np.float32)
        for k, v in state.items()
        if k.startswith("b1.0.")
    }
    extra.update(
        {
            "base.norm.weight": np.ones(D, np.float32),
            "base.norm.bias": np.zeros(D, np.float32),
            "base.fc.weight": rs.randn(1000, D).astype(np.float32),
            "base.fc.bias": np.zeros(1000, np.float32),
            "classifier2.weight": rs.randn(NUM_CLASSES, D).astype(np.float32),
            "bottleneck2.weight": np.ones(D, np.float32),
            "bottleneck2.running_var": np.ones(D, np.float32),
            "NL.0.W.weight": rs.randn(D, D).astype(np.float32),
        }
    )
    return {**state, **extra}


def _save_pth(state: dict[str, np.ndarray], path: str, prefix: str = "module.", wrap: str | None = "state_dict"):
    sd = {prefix + k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    torch.save({wrap: sd, "epoch": 170} if wrap else sd, path)


def test_tmspr_cli_round_trip(tmp_path):
    state = _oracle_state()
    src = str(tmp_path / "tmspr.pth")
    _save_pth(_with_unused(state), src)
    out = tmp_path / "w"
    r = _run_cli("tmspr", src, f"--out={out}", f"--config={CONFIG_PATH}")
    assert r.returncode == 0, r.stdout + r.stderr
    for k in (
        "base.blocks.1.mlp.fc1.weight",
        "base.norm.weight",
        "base.fc.weight",
        "classifier2.weight",
        "NL.0.W.weight",
    ):
        assert f"skipped {k}:" in r.stdout, k
    variables, meta = load_variables(str(out))
    assert meta["kind"] == "tmspr" and meta["num_classes"] == NUM_CLASSES and meta["num_cameras"] == NUM_CAMERAS
    back = variables_to_reference(jax.tree_util.tree_map(np.asarray, variables))
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)


def test_tmspr_safetensors_converts_with_torch_blocked(tmp_path):
    """A T-MSPR checkpoint as .safetensors converts with torch unimportable, unused modules dropped as from .pth."""
    from safetensors.numpy import save_file

    state = _oracle_state()
    src = str(tmp_path / "tmspr.safetensors")
    save_file(_with_unused(state), src)
    out = tmp_path / "w"
    r = _run_cli("tmspr", src, f"--out={out}", f"--config={CONFIG_PATH}", block_torch=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped classifier2.weight:" in r.stdout and "skipped NL.0.W.weight:" in r.stdout, r.stdout
    variables, meta = load_variables(str(out))
    assert meta["kind"] == "tmspr" and meta["num_classes"] == NUM_CLASSES and meta["num_cameras"] == NUM_CAMERAS
    back = variables_to_reference(jax.tree_util.tree_map(np.asarray, variables))
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)


def test_transreid_checkpoint_gets_tmspr_heads(tmp_path):
    state = _oracle_state()
    heads = tmspr_only_heads()
    trans = {k: v for k, v in state.items() if k.split(".", 1)[0] not in heads}
    cfg = converter_config()
    ref, report, kind, model = tmspr_to_reference(trans, cfg.model, cfg.img_size, jax.random.key(0), source="t.pth")
    assert kind == "transreid"
    assert "linear_layer.weight" in report.initialised and "classifier_cp.weight" in report.initialised
    assert "bottleneck_bp3.running_var" in report.initialised
    for k, v in trans.items():
        np.testing.assert_array_equal(ref[k], v, err_msg=k)
    assert ref["classifier_occ1.weight"].shape == (NUM_CLASSES, D)
    # a checkpoint with only some T-MSPR heads is an error naming the missing modules
    partial = {k: v for k, v in state.items() if not k.startswith("classifier_cp.")}
    with pytest.raises(CheckpointError, match="classifier_cp"):
        tmspr_to_reference(partial, cfg.model, cfg.img_size, jax.random.key(0))


def test_tmspr_errors(tmp_path):
    cfg = converter_config()
    state = _oracle_state()
    # wrong grid: the checkpoint was trained with stride 12 (21x10), the config has stride 11 (22x11)
    s12 = _oracle_state(stride=(12, 12))
    with pytest.raises(CheckpointError, match=r"21x10 = 210.*22x11 = 242.*--resize_pos"):
        tmspr_to_reference(s12, cfg.model, cfg.img_size, jax.random.key(0), source="s12.pth")
    ref, report, _, _ = tmspr_to_reference(s12, cfg.model, cfg.img_size, jax.random.key(0), resize_pos=True)
    assert ref["base.pos_embed"].shape == (1, 243, D) and "base.pos_embed" in report.resized
    want = _torch_resize(s12["base.pos_embed"][0, 1:].reshape(21, 10, D), (22, 11))
    np.testing.assert_allclose(ref["base.pos_embed"][0, 1:].reshape(22, 11, D), want, rtol=0, atol=1e-5)
    # camera count
    with pytest.raises(CheckpointError, match=r"base\.sie_embed has 3 rows.*--num_cameras=8"):
        tmspr_to_reference(state, cfg.model, cfg.img_size, jax.random.key(0), num_cameras=8)
    with pytest.raises(CheckpointError, match=r"classifier\.weight has 5 rows.*--num_classes=7"):
        tmspr_to_reference(state, cfg.model, cfg.img_size, jax.random.key(0), num_classes=7)
    # missing / unknown / wrong shape reach the strict mapping and name the key
    cases = [
        ({k: v for k, v in state.items() if k != "b2.0.attn.proj.bias"}, "b2.0.attn.proj.bias"),
        ({**state, "mystery.weight": np.zeros(3, np.float32)}, "mystery.weight"),
        ({**state, "b1.1.weight": np.zeros(D + 1, np.float32)}, "b1.1.weight"),
    ]
    for bad, key in cases:
        ref, _, _, model = tmspr_to_reference(bad, cfg.model, cfg.img_size, jax.random.key(0))
        from convert_weights.mapping import reference_to_variables

        with pytest.raises(MappingError, match=key.replace(".", r"\.")):
            reference_to_variables(ref, model)


def test_cli_reports_errors_without_traceback(tmp_path):
    state = _oracle_state()
    state.pop("b1.0.norm1.weight")
    src = str(tmp_path / "bad.pth")
    _save_pth(state, src, prefix="", wrap=None)
    r = _run_cli("tmspr", src, f"--out={tmp_path / 'w'}", f"--config={CONFIG_PATH}")
    assert r.returncode == 1
    assert "b1.0.norm1.weight" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists(), "nothing is written on error"


def test_reader_unwraps_and_rejects_non_tensors(tmp_path):
    p = str(tmp_path / "x.pth")
    torch.save({"model": {"module.a": torch.ones(2), "module.b": torch.zeros(3, dtype=torch.bfloat16)}}, p)
    st = read_checkpoint(p)
    assert set(st) == {"a", "b"} and st["b"].dtype == np.float32
    torch.save({"a": torch.ones(2), "b": "text"}, p)
    with pytest.raises(CheckpointError, match=r"\['b'\]"):
        read_checkpoint(p)
    q = str(tmp_path / "x.ckpt")
    open(q, "w").close()
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint(q)


def test_meta_json_is_written(tmp_path, formats):
    _, paths = formats
    r = _run_cli("timm", paths["safetensors"], f"--out={tmp_path / 'w'}", f"--config={CONFIG_PATH}")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "w" / "meta.json").read_text())
    assert meta["heads"].startswith("placeholder") and meta["num_classes"] == 1
    assert meta["conversion"]["skipped"]["head.weight"].startswith("ImageNet classifier")


# ------------------------------------------------------------------------------------------------ short errors, stride


def test_a_checkpoint_of_another_size_gets_a_short_error():
    """Every tensor of a D=64 checkpoint mismatches a D=32 model: the message shows the first few and a count."""
    cfg = converter_config()
    cfg.model.embed_dim = 32
    small = build_model(cfg.model, cfg.img_size, NUM_CLASSES, NUM_CAMERAS)
    with pytest.raises(CheckpointError) as e:
        timm_to_reference(timm_vit_state(), small, jax.random.key(0), source="big.pth")
    msg = str(e.value)
    n = int(re.search(r"wrong shapes \((\d+)\)", msg).group(1))
    assert n > 10 and f"... and {n - 5} more" in msg and msg.count("(expected") == 5, msg
    # the strict mapping of a whole T-MSPR state dict (about 150 tensors) into a model of another width
    big = variables_to_reference(init_variables(_model(), jax.random.key(0)))
    with pytest.raises(MappingError) as e:
        reference_to_variables(big, small, source="big.pth")
    msg = str(e.value)
    n = int(re.search(r"wrong shapes \((\d+)\)", msg).group(1))
    assert n > 100 and f"... and {n - 5} more" in msg and msg.count(": got (") == 5 and len(msg) < 1500, msg


def test_cli_unknown_config_key_is_one_line(formats, tmp_path):
    r = _run_cli(
        "timm", formats[1]["npz"], f"--out={tmp_path / 'w'}", f"--config={CONFIG_PATH}", "--config.model.nope=1"
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: --config.model.nope: config.model has no key 'nope' ("), (
        r.stderr
    )
    assert not (tmp_path / "w").exists()


def test_cli_single_number_stride_and_one_line_errors(formats, tmp_path):
    _, paths = formats
    r = _run_cli("timm", paths["npz"], f"--out={tmp_path / 'w'}", f"--config={CONFIG_PATH}", "--config.model.stride=12")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "w" / "meta.json").read_text())
    assert meta["stride"] == [12, 12] and meta["grid"] == [21, 10]
    for override, text in (("--config.model.embed_dim=32", "wrong shapes"), ("--config.model.stride=0", "stride")):
        r = _run_cli("timm", paths["npz"], f"--out={tmp_path / 'bad'}", f"--config={CONFIG_PATH}", override)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert last.startswith("error: ") and text in last and len(last) < 1500, last

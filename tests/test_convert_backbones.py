"""convert_weights for the reference's other backbones (model.backbone): ImageNet files in each backbone's own shape
(the old timm ViT-S without qkv bias and MLP ratio 3; DeiT's ``{'model': ...}`` .pth with a distillation token) and a
trained reference checkpoint, converted strictly, at tiny sizes."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from convert_weights.convert import convert_file
from convert_weights.mapping import variables_to_reference
from convert_weights.readers import CheckpointError
from convert_weights.timm import backbone_hint
from model_utils import TINY_IMG, randomize_reference_state, rel_err, tiny_config
from tmspr_jax.models import TMSPR, build_model
from tmspr_jax.oracles.tmspr import build_torch_model, load_numpy_state, state_dict_numpy

VIT_S = dict(backbone="vit_small_patch16_224_TransReID", embed_dim=64, num_heads=8, mlp_ratio=3.0)
DEIT_S = dict(backbone="deit_small_patch16_224_TransReID", embed_dim=48, num_heads=6)
GRID = 4  # the ImageNet file's square grid (14 at 224x224), resized to the tiny model's 7x3


def imagenet_state(d: int, depth: int, mlp: int, qkv_bias: bool, distilled: bool, seed: int = 0) -> dict:
    """Random ImageNet ViT weights in timm naming as the backbone's file holds them: DeiT's distilled files add
    ``dist_token``, its position and ``head_dist``; the old timm ViT-S has no ``attn.qkv.bias``."""
    rs = np.random.RandomState(seed)
    n = lambda *s: (0.1 * rs.randn(*s)).astype(np.float32)
    prefix = 2 if distilled else 1
    st = {
        "cls_token": n(1, 1, d),
        "pos_embed": n(1, prefix + GRID * GRID, d),
        "patch_embed.proj.weight": n(d, 3, 16, 16),
        "patch_embed.proj.bias": n(d),
        "norm.weight": 1 + n(d),
        "norm.bias": n(d),
        "head.weight": n(10, d),
        "head.bias": n(10),
    }
    if distilled:
        st.update({"dist_token": n(1, 1, d), "head_dist.weight": n(10, d), "head_dist.bias": n(10)})
    for i in range(depth):
        p = f"blocks.{i}."
        st.update(
            {
                p + "norm1.weight": 1 + n(d),
                p + "norm1.bias": n(d),
                p + "attn.qkv.weight": n(3 * d, d),
                p + "attn.proj.weight": n(d, d),
                p + "attn.proj.bias": n(d),
                p + "norm2.weight": 1 + n(d),
                p + "norm2.bias": n(d),
                p + "mlp.fc1.weight": n(mlp, d),
                p + "mlp.fc1.bias": n(mlp),
                p + "mlp.fc2.weight": n(d, mlp),
                p + "mlp.fc2.bias": n(d),
            }
        )
        if qkv_bias:
            st[p + "attn.qkv.bias"] = n(3 * d)
    return st


def _save(obj, path) -> str:
    torch.save({k: torch.from_numpy(v) for k, v in obj.items()} if "model" not in obj else obj, str(path))
    return str(path)


def test_old_timm_vit_small_converts_strictly(tmp_path):
    cfg = tiny_config(**VIT_S)
    st = imagenet_state(64, 2, 192, qkv_bias=False, distilled=False)
    variables, meta, report = convert_file(_save(st, tmp_path / "vit_small.pth"), cfg, TINY_IMG, jax.random.key(0))
    ref = variables_to_reference(variables)
    assert "base.blocks.0.attn.qkv.bias" not in ref and "b1.0.attn.qkv.bias" not in ref
    np.testing.assert_array_equal(ref["base.blocks.0.mlp.fc1.weight"], st["blocks.0.mlp.fc1.weight"])
    np.testing.assert_array_equal(ref["b2.0.attn.qkv.weight"], st["blocks.1.attn.qkv.weight"])
    assert (meta["backbone"], meta["qkv_bias"], meta["attn_scale"]) == (VIT_S["backbone"], False, 64**-0.5)
    assert set(report.skipped) == {"head.weight", "head.bias"}
    # a file with a qkv bias (a ViT-B-style file) is refused for this backbone, naming the keys
    st_b = imagenet_state(64, 2, 192, qkv_bias=True, distilled=False)
    with pytest.raises(CheckpointError, match=r"no qkv bias .*unknown keys \(2\): blocks.0.attn.qkv.bias"):
        convert_file(_save(st_b, tmp_path / "vit_b.pth"), cfg, TINY_IMG, jax.random.key(0))


def test_deit_distilled_pth_with_its_model_wrapper(tmp_path):
    """DeiT's own file: ``{'model': state_dict}``; the distillation token, its position and head are dropped with a
    reason (the reference skips 'dist' keys and has no second token), everything else is used."""
    cfg = tiny_config(**DEIT_S)
    st = imagenet_state(48, 2, 192, qkv_bias=True, distilled=True)
    wrapped = {"model": {k: torch.from_numpy(v) for k, v in st.items()}}
    variables, _, report = convert_file(
        _save(wrapped, tmp_path / "deit_small_distilled.pth"), cfg, TINY_IMG, jax.random.key(0)
    )
    skipped = dict(report.skipped)
    assert set(skipped) == {
        "head.weight",
        "head.bias",
        "dist_token",
        "head_dist.weight",
        "head_dist.bias",
        "pos_embed[:, 1]",
    }
    assert "distillation" in skipped["dist_token"] and "distillation" in skipped["pos_embed[:, 1]"]
    ref = variables_to_reference(variables)
    np.testing.assert_array_equal(ref["base.cls_token"], st["cls_token"])
    np.testing.assert_array_equal(ref["base.pos_embed"][:, 0], st["pos_embed"][:, 0])  # cls position, not the dist one
    assert ref["base.pos_embed"].shape == (1, 1 + 7 * 3, 48)
    # an unknown key is one error naming it
    bad = {**st, "dist_norm.weight": np.ones(48, np.float32)}
    with pytest.raises(CheckpointError, match=r"unknown keys \(1\): dist_norm.weight"):
        convert_file(_save(bad, tmp_path / "bad.pth"), cfg, TINY_IMG, jax.random.key(0))


def test_a_file_of_another_backbone_is_refused_naming_that_backbone(tmp_path):
    st = imagenet_state(64, 3, 192, qkv_bias=False, distilled=False)
    with pytest.raises(CheckpointError, match=r"3 transformer blocks, config.model.depth=2"):
        convert_file(_save(st, tmp_path / "f.pth"), tiny_config(embed_dim=64, num_heads=8), TINY_IMG, jax.random.key(0))
    # at the reference's sizes the error says which backbone the file is (shapes only: no 768-wide arrays needed)
    shapes = {"cls_token": np.zeros((1, 1, 768), np.float32), "blocks.7.attn.qkv.weight": np.zeros((1,), np.float32)}
    assert "vit_small_patch16_224_TransReID: convert it with a config" in backbone_hint(shapes, 8)
    shapes["blocks.0.attn.qkv.bias"] = np.zeros((1,), np.float32)
    assert backbone_hint(shapes, 8) == ""


@pytest.mark.parametrize("overrides", [VIT_S, DEIT_S])
def test_trained_reference_checkpoint_converts_and_matches_the_oracle(tmp_path, overrides):
    """A trained reference checkpoint of the backbone (the oracle's state dict, saved as the reference saves it, with
    its unused last backbone block and norm) converts strictly and gives the oracle's eval feature."""
    cfg = tiny_config(**overrides)
    torch.manual_seed(0)
    oracle = build_torch_model(cfg, TINY_IMG, 5, 3)
    state = randomize_reference_state(state_dict_numpy(oracle), 0)
    load_numpy_state(oracle, state)
    d = cfg.embed_dim
    unused = {f"base.blocks.1.{k}": np.asarray(v) for k, v in state.items() if k.startswith("b1.0.")}
    unused = {k.replace("base.blocks.1.b1.0.", "base.blocks.1."): v for k, v in unused.items()}
    saved = {**state, **unused, "base.norm.weight": np.ones(d, np.float32), "base.norm.bias": np.zeros(d, np.float32)}
    variables, meta, report = convert_file(
        _save(saved, tmp_path / "transformer_120.pth"), cfg, TINY_IMG, jax.random.key(0)
    )
    assert meta["kind"] == "tmspr" and meta["backbone"] == overrides["backbone"]
    assert any(k.startswith("base.norm") for k in report.skipped)
    model = build_model(cfg, TINY_IMG, 5, 3)
    x = np.random.default_rng(1).standard_normal((3,) + TINY_IMG + (3,)).astype(np.float32)
    cams = np.array([0, 2, 1], np.int32)
    oracle.eval()
    with torch.no_grad():
        want = oracle.extract(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(cams).long()).numpy()
    got = model.apply(variables, x, cams, method=TMSPR.extract)
    assert rel_err(got, want) <= 1e-5

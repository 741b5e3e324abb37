"""Tests of the comparison tool (tmspr_jax.tools.compare): PyTorch oracle vs JAX port on a real prepared split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the comparison tool needs the [torch] extra")

from model_utils import randomize_reference_state  # noqa: E402
from tmspr_jax.config import get_base_config  # noqa: E402
from tmspr_jax.tools import compare  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, NUM_CAMERAS = 4, 6  # the Market fixture spreads ids over 6 cameras
D = 64

CONFIG_TEMPLATE = """
from tmspr_jax.config import get_base_config


def get_config():
    c = get_base_config()
    c.img_size = (64, 32)
    c.model.embed_dim = 64
    c.model.depth = 2
    c.model.num_heads = 4
    c.model.stride = (8, 8)
    c.model.drop_path = 0.0
    c.data.train = "market1501"
    c.data.test = "market1501"
    c.data.data_dir = {data_dir!r}
    c.data.manual_dir = {manual_dir!r}
    c.data.test_batch_size = 4
    c.data.num_workers = 0
    c.eval.max_rank = 5
    return c
"""


def _config(paths: dict):
    namespace: dict = {}
    exec(CONFIG_TEMPLATE.format(**paths), namespace)
    return namespace["get_config"]()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A Market-1501-layout folder (6 query, 8 gallery images) built into TFDS, and a config file for it."""
    from fixtures import make_market1501
    from tmspr_jax.data import sources

    root = tmp_path_factory.mktemp("compare")
    truth = make_market1501(root / "raw")
    paths = {"data_dir": str(root / "tfds"), "manual_dir": str(truth.manual_dir)}
    sources.open_split("market1501", "query", paths["data_dir"], manual_dir=paths["manual_dir"])  # build once
    config_path = root / "tiny_compare_config.py"
    config_path.write_text(CONFIG_TEMPLATE.format(**paths))
    return {"root": root, "truth": truth, "paths": paths, "config_path": str(config_path)}


def _reference_state(stride=(8, 8), seed: int = 0) -> dict[str, np.ndarray]:
    """Random oracle weights in the reference layout, with modules the reference never runs added."""
    from tmspr_jax.oracles.tmspr import build_torch_model, state_dict_numpy

    cfg = get_base_config()
    cfg.model.update(embed_dim=D, depth=2, num_heads=4, stride=stride, drop_path=0.0)
    oracle = build_torch_model(cfg.model, (64, 32), NUM_CLASSES, NUM_CAMERAS)
    state = randomize_reference_state(state_dict_numpy(oracle), seed=seed)
    rs = np.random.RandomState(seed + 1)
    # the last backbone block (depth 2 -> block 1), base.norm and an unused classifier, as a real checkpoint has them
    state.update(
        {
            f"base.blocks.1.{k[len('b1.0.') :]}": rs.randn(*v.shape).astype(np.float32)
            for k, v in state.items()
            if k.startswith("b1.0.")
        }
    )
    state.update(
        {
            "base.norm.weight": np.ones(D, np.float32),
            "base.norm.bias": np.zeros(D, np.float32),
            "classifier2.weight": rs.randn(NUM_CLASSES, D).astype(np.float32),
        }
    )
    return state


def _save_pth(state: dict[str, np.ndarray], path) -> str:
    torch.save(
        {"state_dict": {"module." + k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, "epoch": 120},
        str(path),
    )
    return str(path)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    return subprocess.run(
        [sys.executable, "-m", "tmspr_jax.tools.compare", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------------------------------------------ pieces


def test_slices_cover_the_feature_in_the_reference_order():
    before = compare.feature_slices(8, "before")
    assert [n for n, _, _ in before] == [
        "global",
        "jpm1",
        "jpm2",
        "jpm3",
        "jpm4",
        "part1",
        "part2",
        "part3",
        "part4",
        "part5",
    ]
    assert before[0][1] == 0 and before[-1][2] == 80
    assert all(a[2] == b[1] for a, b in zip(before, before[1:]))
    assert [n for n, _, _ in compare.feature_slices(8, "after")] == [
        "global_bn",
        "jpm1_bn",
        "jpm2_bn",
        "jpm3_bn",
        "jpm4_bn",
    ]
    with pytest.raises(compare.CompareError, match="neck_feat='middle'"):
        compare.feature_slices(8, "middle")


def test_slice_differences_locate_the_difference():
    rng = np.random.default_rng(0)
    b = rng.standard_normal((5, 30)).astype(np.float32)
    b[:, 10:20] *= 4.0  # slice 'jpm1' has a larger scale
    a = b.copy()
    a[3, 12] += 0.5
    slices = [("global", 0, 10), ("jpm1", 10, 20), ("jpm2", 20, 30)]
    d = compare.slice_differences(a, b, slices)
    assert d["global"] == {"max_abs": 0.0, "max_rel": 0.0} and d["jpm2"]["max_abs"] == 0.0
    assert d["jpm1"]["max_abs"] == pytest.approx(0.5, rel=1e-6)
    assert d["jpm1"]["max_rel"] == pytest.approx(0.5 / np.abs(b[:, 10:20]).max(), rel=1e-6)
    with pytest.raises(ValueError, match=r"expected \[N, 30\]"):
        compare.slice_differences(a[:, :20], b[:, :20], slices)


# ------------------------------------------------------------------------------------------------ end to end


def test_jax_and_torch_agree_on_a_real_split(data, tmp_path, monkeypatch):
    from tmspr_jax.oracles.tmspr import TorchTMSPR

    seen = []  # batch sizes and cameras the oracle is given
    original = TorchTMSPR.extract

    def recording(self, images, cams):
        seen.append((images.shape[0], cams.tolist()))
        return original(self, images, cams)

    monkeypatch.setattr(TorchTMSPR, "extract", recording)
    from tmspr_jax import inference

    precisions = set()  # what the JAX extraction was traced and run under
    make = inference.make_extract_fn

    def make_recording(model):
        fn = make(model)

        def run(*args):
            precisions.add(
                (
                    jax.config.jax_default_matmul_precision,
                    torch.get_float32_matmul_precision(),
                    torch.backends.cudnn.allow_tf32,
                )
            )
            return fn(*args)

        return run

    monkeypatch.setattr(inference, "make_extract_fn", make_recording)
    ckpt = _save_pth(_reference_state(), tmp_path / "tmspr.pth")
    tf32_before = torch.backends.cudnn.allow_tf32
    res = compare.run_compare(_config(data["paths"]), ckpt, device="cpu", show_progress=False)
    assert torch.backends.cudnn.allow_tf32 == tf32_before, "PyTorch settings are restored"

    # after one warm-up call: query then gallery in test_batch_size (4) batches, the smaller last batch kept, so the
    # batch-wise min-max of the parts sees the JAX side's batches
    truth = data["truth"].splits
    cams = [c for _, _, c in truth["query"]] + [c for _, _, c in truth["gallery"]]
    assert [n for n, _ in seen[1:]] == [4, 2, 4, 4]
    assert sorted(sum((c for _, c in seen[1:]), [])) == sorted(cams)

    assert (res["num_query"], res["num_gallery"]) == (len(truth["query"]), len(truth["gallery"])) == (6, 8)
    assert res["kind"] == "tmspr"
    # the unused modules were dropped, nothing had to be invented
    assert "base.blocks.1.attn.qkv.weight" in res["converter"]["skipped"]
    assert "classifier2.weight" in res["converter"]["skipped"]
    assert res["converter"]["initialised"] == [] and res["converter"]["filled_counters"] == []

    assert list(res["slices"]) == [n for n, _, _ in compare.feature_slices(D, "before")]
    for name, d in res["slices"].items():
        assert d["max_rel"] <= 1e-5, (name, d)
        assert d["max_abs"] > 0 or d["max_rel"] == 0
    assert res["overall"]["max_rel"] <= 1e-5
    assert res["metrics"]["jax"] == res["metrics"]["torch"]
    assert all(v == 0.0 for v in res["metrics"]["diff"].values())
    assert 0.0 <= res["metrics"]["jax"]["mAP"] <= 1.0
    for side in ("jax", "torch"):
        t = res["timing"][side]
        assert t["images"] == 14 and t["seconds"] > 0 and t["images_per_s"] == pytest.approx(14 / t["seconds"])
        assert t["device"].startswith("cpu")
    assert "highest" in res["precision"]
    assert precisions == {("highest", "highest", False)}
    assert jax.config.jax_default_matmul_precision is None, "the precision setting must not leak out of the tool"

    out = tmp_path / "sub" / "compare.json"
    compare.write_json(str(out), res)
    loaded = json.loads(out.read_text())
    assert set(loaded) >= {"slices", "overall", "metrics", "timing", "precision", "num_query", "num_gallery"}
    assert set(loaded["metrics"]) == {"jax", "torch", "diff"}
    assert set(loaded["metrics"]["jax"]) == set(compare.METRICS)
    assert set(loaded["timing"]) >= {"jax", "torch", "jax_speedup"}


def test_transreid_safetensors_without_counters_and_neck_after(data, tmp_path):
    """A TransReID JPM checkpoint as .safetensors without BatchNorm counters, the 'after' feature, --max_images."""
    from safetensors.numpy import save_file

    from convert_weights.tmspr import tmspr_only_heads

    heads = tmspr_only_heads()
    state = {
        k: v
        for k, v in _reference_state(seed=5).items()
        if k.split(".", 1)[0] not in heads and not k.endswith("num_batches_tracked")
    }
    ckpt = str(tmp_path / "transreid.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, ckpt)
    cfg = _config(data["paths"])
    cfg.model.neck_feat = "after"
    cfg.eval.max_rank = 3  # the gallery has 3 images
    res = compare.run_compare(cfg, ckpt, max_images=3, device="cpu", show_progress=False)
    assert res["kind"] == "transreid" and (res["num_query"], res["num_gallery"]) == (3, 3)
    assert "classifier_cp.weight" in res["converter"]["initialised"]
    assert res["converter"]["filled_counters"] == sorted(
        f"{m}.num_batches_tracked"
        for m in ("bottleneck", "bottleneck_1", "bottleneck_2", "bottleneck_3", "bottleneck_4")
    )
    assert list(res["slices"]) == ["global_bn", "jpm1_bn", "jpm2_bn", "jpm3_bn", "jpm4_bn"]
    assert max(d["max_rel"] for d in res["slices"].values()) <= 1e-5
    assert res["metrics"]["jax"] == res["metrics"]["torch"]


def test_cli_prints_the_table_and_writes_json(data, tmp_path):
    ckpt = _save_pth(_reference_state(seed=3), tmp_path / "tmspr.pth")
    out = tmp_path / "res.json"
    r = _run_cli(
        f"--torch_checkpoint={ckpt}",
        f"--config={data['config_path']}",
        "--max_images=3",
        f"--out={out}",
        "--device=cpu",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("part5", "mAP", "images/s", "jax_default_matmul_precision='highest'", "3 query + 3 gallery"):
        assert text in r.stdout, text
    res = json.loads(out.read_text())
    assert (res["num_query"], res["num_gallery"]) == (3, 3)
    assert max(d["max_rel"] for d in res["slices"].values()) <= 1e-5
    assert res["metrics"]["jax"] == res["metrics"]["torch"]


def test_wrong_shape_is_a_one_line_error_naming_the_key(data, tmp_path):
    state = _reference_state()
    state["b2.0.mlp.fc1.weight"] = np.zeros((4 * D, D + 1), np.float32)
    ckpt = _save_pth(state, tmp_path / "bad.pth")
    r = _run_cli(f"--torch_checkpoint={ckpt}", f"--config={data['config_path']}", "--device=cpu")
    assert r.returncode == 1
    assert "b2.0.mlp.fc1.weight" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("compare: error:")


def test_user_errors_name_the_file_grid_and_cameras(data, tmp_path):
    cfg = _config(data["paths"])
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(compare.CompareError, match="nope.pth"):
        compare.run_compare(cfg, missing, device="cpu", show_progress=False)
    # trained with stride 16 (4x2 grid), the config has stride 8 (7x3 grid)
    ckpt = _save_pth(_reference_state(stride=(16, 16)), tmp_path / "s16.pth")
    with pytest.raises(compare.CompareError, match=r"base\.pos_embed.*8 patch positions.*7x3 = 21"):
        compare.load_models(ckpt, cfg, "cpu")
    # a camera table smaller than the test set's camera ids
    top = max(c for split in ("query", "gallery") for _, _, c in data["truth"].splits[split])
    state = _reference_state()
    state["base.sie_embed"] = state["base.sie_embed"][:top]
    ckpt = _save_pth(state, tmp_path / "cams.pth")
    with pytest.raises(compare.CompareError, match=rf"camera ids up to {top}.*base\.sie_embed has {top} rows"):
        compare.run_compare(cfg, ckpt, device="cpu", show_progress=False)
    with pytest.raises(compare.CompareError, match="max_images=-1"):
        compare.open_test_splits(cfg, -1)


def test_test_splits_of_a_synthetic_config_keep_its_generation_options(tool_run):
    cfg, _ = tool_run  # generated with tiny.SYNTHETIC: 6 queries and 18 gallery images, not the demo's set
    query, gallery = compare.open_test_splits(cfg)
    assert (len(query), len(gallery)) == (6, 18)
    assert len(compare.open_test_splits(cfg, max_images=4)[1]) == 4

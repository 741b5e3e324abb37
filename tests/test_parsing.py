"""Tests for tmspr_jax.data.parsing (LIP merge, grid pooling, storage and loading) and its command,
tmspr_jax.tools.parsing_targets."""

from __future__ import annotations

import os
import types

import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image

from tmspr_jax.config import get_base_config
from tmspr_jax.data import parsing as P

# Written out from docs/reference.md §12.2, independently of the module's table.
EXPECTED_GROUP = {
    "Background": "Background",
    "Hat": "Accessory",
    "Hair": "Head",
    "Glove": "Accessory",
    "Sunglasses": "Accessory",
    "Upper-clothes": "Body",
    "Dress": "Body",
    "Coat": "Body",
    "Socks": "Feet",
    "Pants": "Legs",
    "Jumpsuits": "Body",
    "Scarf": "Accessory",
    "Skirt": "Legs",
    "Face": "Head",
    "Left-arm": "Body",
    "Right-arm": "Body",
    "Left-leg": "Legs",
    "Right-leg": "Legs",
    "Left-shoe": "Feet",
    "Right-shoe": "Feet",
}


def _cfg(path: str = "", missing: str = "error") -> ml_collections.ConfigDict:
    """The base config's ``parsing`` node with ``path`` and ``missing`` set."""
    c = get_base_config().parsing
    c.path, c.missing = path, missing
    return c


def _split(names):
    return types.SimpleNamespace(file_names=np.asarray(names))


def test_names():
    assert P.GROUP_NAMES == ("Background", "Head", "Body", "Accessory", "Legs", "Feet")
    assert len(P.LIP_CLASSES) == 20 and P.LIP_CLASSES[1] == "Hat" and P.LIP_CLASSES[19] == "Right-shoe"


@pytest.mark.parametrize("cls", range(20))
def test_merge_label_map_every_class(cls):
    labels = np.full((3, 2), cls, np.int64)
    merged = P.merge_lip(labels)
    assert merged.shape == (3, 2, 6) and merged.dtype == np.float32
    want = P.GROUP_NAMES.index(EXPECTED_GROUP[P.LIP_CLASSES[cls]])
    np.testing.assert_array_equal(merged[..., want], 1.0)
    assert merged.sum() == 6.0  # one-hot: nothing else set


def test_merge_logits_sums_softmax_per_group():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4, 20)).astype(np.float32) * 3
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    want = np.zeros((5, 4, 6), np.float32)
    for c, name in enumerate(P.LIP_CLASSES):
        want[..., P.GROUP_NAMES.index(EXPECTED_GROUP[name])] += probs[..., c]
    got = P.merge_lip(logits)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(P.merge_lip(probs, scores="probs"), want, rtol=1e-5, atol=1e-6)


def test_merge_rejects_bad_input():
    with pytest.raises(ValueError, match="outside 0..19"):
        P.merge_lip(np.array([[0, 20]]))
    with pytest.raises(ValueError, match=r"\[h, w, 20\]"):
        P.merge_lip(np.zeros((4, 4, 7), np.float32))
    with pytest.raises(ValueError, match="integer"):
        P.merge_lip(np.zeros((4, 4), np.float32))


def test_read_map_palette_png_uses_indices(tmp_path):
    labels = np.array([[0, 2, 13], [5, 9, 18]], np.uint8)
    im = Image.fromarray(labels, mode="P")
    im.putpalette([255, 255, 255] * 256)  # a palette whose grey values would all be 255
    im.save(tmp_path / "a.png")
    np.testing.assert_array_equal(P.read_map(str(tmp_path / "a.png")), P.merge_lip(labels.astype(np.int64)))
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png.*mode 'RGB'"):
        P.read_map(str(tmp_path / "rgb.png"))


def test_grid_shape():
    assert P.grid_shape((256, 128), 16, (11, 11)) == (22, 11)
    assert P.grid_shape((256, 128), 16, (12, 12)) == (21, 10)
    assert P.grid_shape((8, 8), 4, (2, 2)) == (3, 3)


def test_grid_shape_agrees_with_the_model():
    # parsing.py avoids importing jax/flax; its grid must still be the model's (docs/interfaces.md)
    from tmspr_jax.models.vit import patch_grid

    for img_size, patch, stride in [
        ((256, 128), 16, (11, 11)),
        ((256, 128), 16, (12, 12)),
        ((128, 64), 16, (12, 12)),
        ((384, 128), 16, (16, 16)),
        ((8, 8), 4, (2, 3)),
    ]:
        assert P.grid_shape(img_size, patch, stride) == patch_grid(img_size, patch, stride)


def test_patch_mean_hand_computed():
    # 8x8 labels: Face (Head) in rows 0-3, Pants (Legs) in rows 4-7, background in columns 0-1.
    labels = np.where(np.arange(8)[:, None] < 4, 13, 9) * np.ones((1, 8), np.int64)
    labels[:, :2] = 0
    got = P.grid_targets(P.merge_lip(labels), (8, 8), patch=4, stride=(2, 2))
    assert got.shape == (3, 3, 6) and got.dtype == np.float32
    # Patch (y, x) sees rows [2y, 2y+4), cols [2x, 2x+4). Counted by hand (16 pixels per patch):
    bg = np.array([[8, 0, 0], [8, 0, 0], [8, 0, 0]]) / 16
    head = np.array([[8, 16, 16], [4, 8, 8], [0, 0, 0]]) / 16
    legs = np.array([[0, 0, 0], [4, 8, 8], [8, 16, 16]]) / 16
    np.testing.assert_allclose(got[..., 0], bg)
    np.testing.assert_allclose(got[..., 1], head)
    np.testing.assert_allclose(got[..., 4], legs)
    np.testing.assert_array_equal(got[..., [2, 3, 5]], 0.0)


def test_patch_mean_follows_the_resized_image():
    # The target of a patch is what the patch sees in the bicubic-resized image (view 1).
    rng = np.random.default_rng(1)
    labels = np.zeros((64, 32), np.int64)
    labels[10:30, 8:20] = 5
    labels[40:60, 4:28] = 9
    merged = P.merge_lip(labels)
    img_size, patch, stride = (96, 48), 8, (5, 6)
    got = P.grid_targets(merged, img_size, patch, stride)
    for g in (2, 4):
        chan = Image.fromarray(merged[..., g]).resize(img_size[::-1], Image.BICUBIC)
        view = np.asarray(chan, np.float64)
        for y, x in zip(rng.integers(0, got.shape[0], 20), rng.integers(0, got.shape[1], 20)):
            window = view[stride[0] * y : stride[0] * y + patch, stride[1] * x : stride[1] * x + patch]
            # equal up to the clipping of bicubic overshoot (a few percent at edges)
            assert abs(got[y, x, g] - window.mean()) < 0.03
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert got.min() >= 0.0


@pytest.mark.parametrize("src", [(64, 32), (300, 100), (128, 64)])
def test_patch_mean_equals_explicit_resize_then_window_mean(src):
    # Smooth probabilities (no bicubic overshoot below 0): the result must be exactly
    # "PIL-bicubic-resize each channel to (H, W), then average each patch window".
    rng = np.random.default_rng(7)
    small = rng.random((8, 4, 6)).astype(np.float32) + 1.0
    merged = np.stack(
        [np.asarray(Image.fromarray(small[..., c]).resize(src[::-1], Image.BILINEAR)) for c in range(6)], -1
    )
    merged /= merged.sum(-1, keepdims=True)
    img_size, patch, stride = (256, 128), 16, (11, 11)
    full = np.stack(
        [
            np.asarray(Image.fromarray(merged[..., c]).resize(img_size[::-1], Image.BICUBIC), np.float64)
            for c in range(6)
        ],
        -1,
    )
    want = np.zeros((22, 11, 6))
    for y in range(22):
        for x in range(11):
            want[y, x] = full[11 * y : 11 * y + 16, 11 * x : 11 * x + 16].mean((0, 1))
    assert want.min() > 0
    got = P.grid_targets(merged, img_size, patch, stride)
    np.testing.assert_allclose(got, want / want.sum(-1, keepdims=True), atol=2e-6)
    np.testing.assert_allclose(want.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("src", [(37, 19), (10, 5), (128, 64), (22, 11)])
def test_reference_method_matches_torch(src):
    rng = np.random.default_rng(2)
    merged = rng.random((*src, 6)).astype(np.float32)
    got = P.grid_targets(merged, (256, 128), 16, (11, 11), method="reference")
    t = torch.from_numpy(merged).permute(2, 0, 1)[None]
    want = torch.nn.functional.interpolate(t, size=(22, 11), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(got, want[0].permute(1, 2, 0).numpy(), rtol=1e-5, atol=1e-6)


def test_grid_targets_bad_method():
    with pytest.raises(ValueError, match="method"):
        P.grid_targets(np.zeros((8, 8, 6)), (8, 8), 4, (2, 2), method="nearest")


def _write_maps(d, names, rng):
    for n in names:
        labels = rng.integers(0, 20, size=(16, 8)).astype(np.uint8)
        Image.fromarray(labels, mode="L").save(os.path.join(d, os.path.splitext(n)[0] + ".png"))


def test_missing_maps_error_counts_and_names(tmp_path):
    names = [f"000{i}_c1s1_00000{i}_00.jpg" for i in range(1, 6)]
    _write_maps(tmp_path, names[:3], np.random.default_rng(3))
    with pytest.raises(ValueError, match=r"2 of 5 .*0004_c1s1_000004_00.jpg, 0005_c1s1_000005_00.jpg"):
        P.compute_targets(names, str(tmp_path), (16, 8), 4, (4, 4))
    got_names, targets, missing = P.compute_targets(names, str(tmp_path), (16, 8), 4, (4, 4), allow_missing=True)
    assert got_names == names[:3] and missing == names[3:] and targets.shape == (3, 4, 2, 6)


def test_map_size_must_match_image(tmp_path):
    _write_maps(tmp_path, ["a.jpg"], np.random.default_rng(4))
    with pytest.raises(ValueError, match="a.png: map is 16x8 .* image a.jpg is 32x16"):
        P.compute_targets(["a.jpg"], str(tmp_path), (16, 8), 4, (4, 4), image_sizes=[(32, 16)])


def test_npy_preferred_over_png(tmp_path):
    Image.fromarray(np.zeros((16, 8), np.uint8), mode="L").save(tmp_path / "a.png")
    logits = np.full((16, 8, 20), -9.0, np.float32)
    logits[..., 9] = 9.0  # pants everywhere
    np.save(tmp_path / "a.npy", logits)
    _, targets, _ = P.compute_targets(["a.jpg"], str(tmp_path), (16, 8), 4, (4, 4))
    assert targets[0, ..., 4].min() > 0.99
    _, targets, _ = P.compute_targets(["a.jpg"], str(tmp_path), (16, 8), 4, (4, 4), prefer=".png")
    assert targets[0, ..., 0].min() == 1.0


def _store(tmp_path, names, grid=(3, 3)):
    rng = np.random.default_rng(5)
    targets = rng.random((len(names), *grid, 6)).astype(np.float32)
    targets /= targets.sum(-1, keepdims=True)  # a distribution per patch, as the loader requires
    data_dir = str(tmp_path / "data")
    path = P.default_path(data_dir, "synth", grid)
    P.save_targets(path, names, targets, img_size=(8, 8), patch=4, stride=(2, 2), method="patch_mean")
    return data_dir, path, targets


def test_save_load_aligned_to_split_order(tmp_path):
    names = ["a.jpg", "b.jpg", "c.jpg"]
    data_dir, path, targets = _store(tmp_path, names)
    assert path == os.path.join(data_dir, "parsing", "synth", "3x3.npz")
    out = P.load_targets(_cfg(), _split(["c.jpg", "a.jpg", "b.jpg", "a.jpg"]), (3, 3), data_dir, "synth")
    np.testing.assert_array_equal(out.targets, targets[[2, 0, 1, 0]])
    np.testing.assert_array_equal(out.weights, 1.0)
    assert out.num_missing == 0
    # an explicit parsing.path wins over the default location
    out2 = P.load_targets(_cfg(path=path), _split(["b.jpg"]), (3, 3), "/nonexistent", "other")
    np.testing.assert_array_equal(out2.targets[0], targets[1])


def test_load_missing_error_and_zero_weight(tmp_path):
    data_dir, _, targets = _store(tmp_path, ["a.jpg", "b.jpg"])
    split = _split(["a.jpg", "x.jpg", "b.jpg", "y.jpg", "z.jpg"])
    with pytest.raises(ValueError, match=r"3 of 5 .*x.jpg, y.jpg, z.jpg"):
        P.load_targets(_cfg(), split, (3, 3), data_dir, "synth")
    out = P.load_targets(_cfg(missing="zero_weight"), split, (3, 3), data_dir, "synth")
    assert out.num_missing == 3
    np.testing.assert_array_equal(out.weights, [1, 0, 1, 0, 0])
    np.testing.assert_array_equal(out.targets[[1, 3, 4]], 0.0)  # zeros, never another image's target
    np.testing.assert_array_equal(out.targets[[0, 2]], targets)


def test_load_wrong_grid(tmp_path):
    _, path, _ = _store(tmp_path, ["a.jpg"], grid=(3, 3))
    with pytest.raises(ValueError, match=r"3x3 patch grid but the model uses 22x11"):
        P.load_targets(_cfg(path=path), _split(["a.jpg"]), (22, 11), "", "synth")


def test_load_wrong_method(tmp_path):
    data_dir, _, targets = _store(tmp_path, ["a.jpg"])  # stored with method 'patch_mean'
    cfg = _cfg()
    cfg.method = "reference"
    with pytest.raises(ValueError, match=r"method 'patch_mean' but parsing.method is 'reference'"):
        P.load_targets(cfg, _split(["a.jpg"]), (3, 3), data_dir, "synth")
    cfg.method = "patch_mean"
    np.testing.assert_array_equal(P.load_targets(cfg, _split(["a.jpg"]), (3, 3), data_dir, "synth").targets, targets)


def test_load_no_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"22x11.npz"):
        P.load_targets(_cfg(), _split(["a.jpg"]), (22, 11), str(tmp_path), "synth")


# ---------------------------------------------------------------------------------------------- CLI, end to end


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny synthetic dataset with LIP maps, prepared as the TFDS builder 'synthetic_occluded'."""
    from tmspr_jax.data import sources
    from tmspr_jax.datagen import synthetic

    root = tmp_path_factory.mktemp("cli")
    raw, data_dir = str(root / "raw"), str(root / "tfds")
    synthetic.generate(raw, num_train_ids=4, images_per_id=3, num_test_ids=2, gallery_per_id=2, seed=1)
    split = sources.open_split("synthetic_occluded", "train", data_dir, manual_dir=raw)
    return raw, data_dir, split


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "tmspr_jax.tools.parsing_targets", *args],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def test_cli_end_to_end(prepared):
    raw, data_dir, split = prepared
    r = _cli(
        "--maps_dir",
        os.path.join(raw, "parsing_lip"),
        "--data_dir",
        data_dir,
        "--dataset",
        "synthetic_occluded",
        "--img_size",
        "128,64",
        "--patch",
        "16",
        "--stride",
        "12,12",
    )
    assert r.returncode == 0, r.stderr
    assert "images=12 stored=12 missing=0 grid=10x5" in r.stdout
    out = P.load_targets(_cfg(), split, (10, 5), data_dir, "synthetic_occluded")
    assert out.targets.shape == (12, 10, 5, 6) and out.num_missing == 0
    np.testing.assert_allclose(out.targets.sum(-1), 1.0, atol=1e-5)
    # Each stored target is the pooled label map of the image with that file name (record order != name order).
    for i, name in enumerate(split.file_names):
        lab = np.asarray(Image.open(os.path.join(raw, "parsing_lip", str(name)[:-4] + ".png"))).astype(np.int64)
        want = P.grid_targets(P.merge_lip(lab), (128, 64), 16, (12, 12))
        np.testing.assert_allclose(out.targets[i], want, atol=1e-6)
    # head on top, feet at the bottom of the grid (averaged over images)
    mean = out.targets.mean(0)
    assert mean[..., 1].sum(1).argmax() <= 2 and mean[..., 5].sum(1).argmax() >= 7


def test_cli_missing_maps(prepared, tmp_path):
    import shutil

    raw, data_dir, split = prepared
    maps = tmp_path / "maps"
    shutil.copytree(os.path.join(raw, "parsing_lip"), maps)
    gone = sorted(str(n) for n in split.file_names)[:3]
    for n in gone:
        os.remove(maps / (n[:-4] + ".png"))
    common = [
        "--maps_dir",
        str(maps),
        "--data_dir",
        data_dir,
        "--dataset",
        "synthetic_occluded",
        "--img_size",
        "128,64",
        "--patch",
        "16",
        "--stride",
        "12,12",
        "--out",
        str(tmp_path / "t.npz"),
    ]
    r = _cli(*common)
    assert r.returncode != 0 and "3 of 12" in r.stderr and gone[0] in r.stderr and "Traceback" not in r.stderr
    r = _cli(*common, "--allow_missing")
    assert r.returncode == 0, r.stderr
    assert "stored=9 missing=3" in r.stdout
    with pytest.raises(ValueError, match="3 of 12"):
        P.load_targets(_cfg(path=str(tmp_path / "t.npz")), split, (10, 5), data_dir, "synthetic_occluded")
    out = P.load_targets(_cfg(path=str(tmp_path / "t.npz"), missing="zero_weight"), split, (10, 5), data_dir, "x")
    assert out.num_missing == 3 and out.weights.sum() == 9


def test_targets_for_another_image_size_with_the_same_grid_are_refused(tmp_path):
    data_dir, path, targets = _store(tmp_path, ["a.jpg"])  # pooled for 8x8 images, patch 4, stride 2: a 3x3 grid
    ok = P.load_targets(_cfg(), _split(["a.jpg"]), (3, 3), data_dir, "synth", geometry=((8, 8), 4, (2, 2)))
    np.testing.assert_array_equal(ok.targets[0], targets[0])
    assert P.stored_geometry(path) == ((8, 8), 4, (2, 2))
    # 16x16 images with patch 8 and stride 4 give the same 3x3 grid, but other pooling windows
    with pytest.raises(
        ValueError,
        match=r"3x3.npz: targets were pooled for img_size \(8, 8\), patch 4, "
        r"stride \(2, 2\) but the model uses img_size \(16, 16\), patch 8, "
        r"stride \(4, 4\)",
    ):
        P.load_targets(_cfg(), _split(["a.jpg"]), (3, 3), data_dir, "synth", geometry=((16, 16), 8, (4, 4)))


def test_prepare_remakes_cached_targets_made_for_another_image_size(tmp_path):
    from configs import demo
    from tmspr_jax.datagen import ensure

    c = demo.get_config()
    c.data.data_dir = str(tmp_path / "tfds")
    c.data.manual_dir = str(tmp_path / "synthetic")
    c.parsing.maps_dir = str(tmp_path / "synthetic" / "parsing_lip")
    c.data.synthetic_options = dict(
        num_train_ids=3,
        images_per_id=2,
        num_test_ids=2,
        queries_per_id=1,
        gallery_per_id=1,
        num_occluder_images=0,
        seed=2,
    )
    c.data.occluder_dir = ""
    c.img_size, c.model.patch_size, c.model.stride = (128, 64), 16, (16, 16)
    ensure.prepare_for_config(c)
    path = P.default_path(c.data.data_dir, c.data.train, (8, 4))
    first = np.load(path)["targets"]
    assert P.stored_geometry(path) == ((128, 64), 16, (16, 16))

    c.img_size, c.model.patch_size, c.model.stride = (96, 48), 12, (12, 12)  # the same 8x4 grid
    ensure.prepare_for_config(c)
    assert P.stored_geometry(path) == ((96, 48), 12, (12, 12))
    second = np.load(path)["targets"]
    assert second.shape == first.shape and not np.allclose(second, first)  # other windows, other targets


@pytest.mark.parametrize(
    "damage, problem",
    [(np.nan, "is not finite"), (np.inf, "is not finite"), (-0.5, "has negative values"), (0.5, "sums to 1.5")],
)
def test_impossible_targets_are_refused_naming_the_file_image_and_patch(tmp_path, damage, problem):
    data_dir, path, targets = _store(tmp_path, ["a.jpg", "b.jpg"])
    bad = targets.copy()
    bad[1, 2, 0, 3] = damage if damage != 0.5 else bad[1, 2, 0, 3] + 0.5
    arrays = dict(np.load(path))
    arrays["targets"] = bad
    np.savez(path, **arrays)  # as a damaged or hand-made file would hold it
    with pytest.raises(
        ValueError, match=rf"^{path}: the parsing target of 'b.jpg' \(row 1\) at patch \(2, 0\) {problem}"
    ):
        P.load_targets(_cfg(), _split(["a.jpg", "b.jpg"]), (3, 3), data_dir, "synth")
    with pytest.raises(ValueError, match="summing to 1 .within 0.001."):
        P.save_targets(
            str(tmp_path / "x.npz"), ["a.jpg", "b.jpg"], bad, img_size=(8, 8), patch=4, stride=2, method="patch_mean"
        )
    P.check_targets(  # float32 rounding within the tolerance passes
        targets + 1e-4 / 6, ["a.jpg", "b.jpg"], path
    )

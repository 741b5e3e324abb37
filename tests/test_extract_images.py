"""tools/extract.py --images: features of any image files, equal to the evaluation's on the same images."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tiny
from tmspr_jax import experiment, inference
from tmspr_jax.tools import extract


def test_list_images_folder_list_file_and_errors(tmp_path):
    for rel in ("b/2.png", "a.JPG", "b/1.jpg", ".cache/x.jpg", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    root, paths = extract.list_images(str(tmp_path))
    assert root == str(tmp_path) and [os.path.relpath(p, root) for p in paths] == ["a.JPG", "b/1.jpg", "b/2.png"]
    (tmp_path / "list.txt").write_text("# mine\nb/2.png\n\n a.JPG \n")
    assert extract.list_images(str(tmp_path / "list.txt"))[1] == [str(tmp_path / "b/2.png"), str(tmp_path / "a.JPG")]
    assert extract.list_images(str(tmp_path / "a.JPG"))[1] == [str(tmp_path / "a.JPG")]
    (tmp_path / "bad.txt").write_text("a.JPG\nmissing.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"bad.txt, line 2: no image file at .*missing.jpg"):
        extract.list_images(str(tmp_path / "bad.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no image files"):
        extract.list_images(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such folder or file"):
        extract.list_images(str(tmp_path / "nothing"))


def test_release_names_give_cameras_else_the_default():
    assert extract.parse_release_name("/x/0012_c3s1_000151_00.jpg") == (12, 2)
    assert extract.parse_release_name("0001_c2_f0046182.jpg") == (1, 1)
    assert extract.parse_release_name("-1_c1s2_000001_00.jpg") == (-1, 0)
    assert extract.parse_release_name("001_01.jpg") is None and extract.parse_release_name("IMG_c1.jpg") is None
    pids, camids = extract.image_labels(["0004_c5s1_1.jpg", "photo.jpg"], camid=2)
    assert pids.tolist() == [4, -1] and camids.tolist() == [4, 2]
    assert extract.image_labels(["0004_c5s1_1.jpg"], camid=2, parse_names=False)[1].tolist() == [2]


def test_images_of_any_mode_become_8bit_rgb_or_are_refused(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    got = extract.read_image(str(tmp_path / "grey.png"))
    assert got.shape == (6, 4, 3) and got.dtype == np.uint8 and (got[..., 0] == got[..., 2]).all()
    rgba = np.concatenate([rgb, np.full((6, 4, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(extract.read_image(str(tmp_path / "alpha.png")), rgb)  # alpha dropped, as eval
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    cmyk = extract.read_image(str(tmp_path / "cmyk.jpg"))
    assert cmyk.shape == (6, 4, 3) and np.abs(cmyk.astype(int) - rgb).mean() < 20
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    assert extract.read_image(str(tmp_path / "palette.gif")).shape == (6, 4, 3)
    grey16 = np.arange(24, dtype=np.uint16).reshape(6, 4) * 2800
    Image.fromarray(grey16).save(tmp_path / "deep.png")  # a 16-bit grey PNG
    deep = extract.read_image(str(tmp_path / "deep.png"))
    np.testing.assert_array_equal(deep[..., 1], (grey16 // 257).astype(np.uint8))

    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float.tif: floating-point image \(mode F\)"):
        extract.read_image(str(tmp_path / "float.tif"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=r"broken.jpg: not a readable image \(UnidentifiedImageError"):
        extract.read_image(str(tmp_path / "broken.jpg"))


def test_image_features_equal_the_evaluations(tool_run, tmp_path):
    cfg, ckpt = tool_run
    model, variables = extract.load_model(cfg, ckpt)
    exp = experiment.setup_experiment(cfg)
    query, _ = experiment.extract_test_features(exp, variables)  # one batch per split: test_batch_size >= its size
    root, paths = extract.list_images(os.path.join(cfg.data.manual_dir, "query"))
    got = extract.extract_images(model, variables, paths, cfg)
    by_name = {os.path.basename(p): i for i, p in enumerate(got.paths)}
    order = [by_name[str(n)] for n in exp.query_split.file_names]
    np.testing.assert_allclose(got.features[order], query[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.camids[order], exp.query_split.camids)  # cameras from the release names
    np.testing.assert_array_equal(got.pids[order], exp.query_split.pids)

    # Batches of 4 (the last padded with masked rows) give the features of the unpadded batches.
    small = extract.extract_images(model, variables, paths, cfg, batch_size=4)
    fn = inference.make_extract_fn(model, flip=bool(cfg.eval.flip))
    from tmspr_jax.data import views

    mean, std = cfg.data.mean, cfg.data.std
    images = np.stack([views.eval_view(extract.read_image(p), cfg.img_size, mean, std) for p in paths])
    for lo, hi in ((0, 4), (4, 6)):
        want = fn(variables, images[lo:hi], got.camids[lo:hi].astype(np.int32), np.ones(hi - lo, bool))
        np.testing.assert_allclose(small.features[lo:hi], np.asarray(want), rtol=1e-5, atol=1e-5)

    bad = cfg.copy_and_resolve_references()
    bad.model.depth = 3
    with pytest.raises(ValueError, match=r"weights0: .*blocks.* but the config's model has"):
        extract.load_model(bad, ckpt)
    with pytest.raises(ValueError, match=r"0005_c6s1_000001_00.jpg: camera 5 .* SIE table has 2 cameras"):
        extract.extract_images(model.clone(num_cameras=2), variables, paths, cfg)


def test_command_line_images(tool_run, tmp_path):
    cfg, ckpt = tool_run
    folder = tmp_path / "mine"
    folder.mkdir()
    src = sorted(os.listdir(os.path.join(cfg.data.manual_dir, "query")))[:3]
    for i, name in enumerate(src):  # user images: other names, other sizes and modes
        img = Image.open(os.path.join(cfg.data.manual_dir, "query", name)).resize((20 + i * 30, 50 + i * 40))
        (img.convert("L") if i == 1 else img).save(folder / f"person_{i}.png")
    out = tmp_path / "feats.npz"
    cmd = [
        sys.executable,
        "-m",
        "tmspr_jax.tools.extract",
        *tiny.cli_flags(cfg),
        f"--checkpoint={ckpt}",
        f"--images={folder}",
        f"--out={out}",
        "--camid=1",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tiny.REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 image features" in r.stdout and "cameras from 0 release names" in r.stdout
    f = extract.load_image_features(str(out))
    assert f["file_names"].tolist() == ["person_0.png", "person_1.png", "person_2.png"] and f["root"] == str(folder)
    assert f["features"].shape[0] == 3 and f["camids"].tolist() == [1, 1, 1] and f["pids"].tolist() == [-1] * 3
    assert np.isfinite(f["features"]).all()

    (folder / "person_3.jpg").write_bytes(b"garbage")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tiny.REPO, timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith(f"error: {folder / 'person_3.jpg'}: not a readable image"), last

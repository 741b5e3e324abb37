"""The parser end to end: tools/parse.py against SCHP's simple_extractor pipeline run by the oracle, restarts,
unreadable images, and parsing targets made straight from a prepared dataset's images (data.parsing.parse_targets,
its command tools/parsing_targets.py --parser, and training's first-use setup)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from schp_fixtures import labels_agree_except_ties, rel_err, save_schp_checkpoint, tiny_oracle, write_images
from tmspr_jax.oracles import schp as oracle

# portrait, landscape, tiny, square: the affine box is widened along the short side
SIZES = {"portrait.jpg": (61, 23), "landscape.png": (20, 53), "tiny.png": (3, 2), "square.bmp": (17, 17)}
BATCH = 2  # per device; every in-process run uses it, so they share one compiled program


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from convert_weights.schp import convert_file

    root = tmp_path_factory.mktemp("schp")
    model = tiny_oracle(seed=5)
    src = save_schp_checkpoint(model, str(root / "exp-schp-lip.pth"))
    convert_file(src, str(root / "parser"))
    write_images(str(root / "images"), SIZES)
    return model, str(root / "parser"), str(root / "images"), root


@pytest.fixture(scope="module")
def parser(tiny):
    from tmspr_jax.parser.runner import Parser

    return Parser(tiny[1], batch_size=BATCH)


def test_parse_command_matches_simple_extractor(tiny):
    import cv2

    model, parser_dir, images, root = tiny
    out = root / "cli_out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tmspr_jax.tools.parse",
            f"--parser={parser_dir}",
            f"--images={images}",
            f"--out={out}",
            "--logits",
            "--batch_size=3",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "4 of 4 images parsed" in r.stdout and "done" in r.stdout
    for name, (h, w) in SIZES.items():
        stem = os.path.splitext(name)[0]
        want = oracle.extract(model, cv2.imread(os.path.join(images, name), cv2.IMREAD_COLOR))
        got = np.load(out / f"{stem}.npy")
        assert got.shape == want.shape == (h, w, 20) and got.dtype == np.float32
        assert rel_err(got, want) <= 1e-5, (name, rel_err(got, want))
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "P" and im.size == (w, h)
            labels = np.asarray(im)
            pal = im.getpalette()[:60]
        np.testing.assert_array_equal(labels, got.argmax(-1))
        assert not labels_agree_except_ties(got, want).any()
        # SCHP's palette: class 1 (Hat) is (128, 0, 0), class 5 (Upper-clothes) (128, 0, 128), 19 (128, 192, 0)
        assert pal[3:6] == [128, 0, 0] and pal[15:18] == [128, 0, 128] and pal[57:60] == [128, 192, 0]


def _files(folder) -> dict[str, bytes]:
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_restart_resumes_and_equals_uninterrupted(tiny, parser, tmp_path):
    from tmspr_jax.tools.parse import parse_folder

    _, parser_dir, images, _ = tiny
    full = parse_folder(parser_dir, images, str(tmp_path / "full"), logits=True, parser=parser, progress=False)
    assert full.finished and full.parsed == 4
    part = tmp_path / "part"
    first = parse_folder(parser_dir, images, str(part), logits=True, parser=parser, max_images=1, progress=False)
    assert not first.finished and first.parsed == BATCH  # whole batches: the first two images (sorted names)
    assert sorted(os.listdir(part)) == ["landscape.npy", "landscape.png", "portrait.npy", "portrait.png"]
    os.remove(part / "landscape.png")  # as if killed between the two writes of an image: its batch is redone
    second = parse_folder(parser_dir, images, str(part), logits=True, parser=parser, progress=False)
    assert second.finished and second.parsed == 4
    third = parse_folder(parser_dir, images, str(part), logits=True, parser=parser, progress=False)
    assert third.finished and third.parsed == 0
    assert _files(part) == _files(tmp_path / "full")


def test_maps_of_other_images_or_settings_in_out_are_redone_never_counted_done(tiny, parser, tmp_path):
    from tmspr_jax.tools.parse import parse_folder

    out = tmp_path / "out"
    other = tmp_path / "other"  # the same file names, other images of other sizes
    write_images(str(other), {n: (h + 5, w + 3) for n, (h, w) in SIZES.items()}, seed=9)
    parse_folder(tiny[1], str(other), str(out), parser=parser, progress=False)
    s = parse_folder(tiny[1], tiny[2], str(out), parser=parser, progress=False)
    assert s.finished and s.parsed == 4 and s.stale == 4
    for name, (h, w) in SIZES.items():
        with Image.open(out / f"{os.path.splitext(name)[0]}.png") as im:
            assert im.size == (w, h)
    assert parse_folder(tiny[1], tiny[2], str(out), parser=parser, progress=False).parsed == 0
    # an image edited in place: only its batch is redone
    images = tmp_path / "images"
    write_images(str(images), SIZES)
    parse_folder(tiny[1], str(images), str(out), parser=parser, progress=False)
    write_images(str(images), {"tiny.png": (3, 2)}, seed=4)
    s = parse_folder(tiny[1], str(images), str(out), parser=parser, progress=False)
    assert (s.parsed, s.stale) == (BATCH, 1)
    # other settings (the bfloat16 parser): everything is redone
    from tmspr_jax.parser.runner import Parser

    s = parse_folder(
        tiny[1], str(images), str(out), parser=Parser(tiny[1], batch_size=BATCH, dtype="bfloat16"), progress=False
    )
    assert (s.parsed, s.stale) == (4, 4)


def test_out_must_be_another_folder_checked_before_any_work(tiny, tmp_path):
    from tmspr_jax.tools.parse import parse_folder

    images = tmp_path / "images"
    write_images(str(images), {"a.png": (9, 7)})
    before = _files(images)
    no_parser = str(tmp_path / "no_parser")  # never loaded: the output path is refused first
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tmspr_jax.tools.parse",
            f"--parser={no_parser}",
            f"--images={images}",
            f"--out={images}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: ") and "is the --images folder" in r.stderr
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        parse_folder(no_parser, str(images), str(tmp_path / "file"), progress=False)
    assert _files(images) == before


def test_unreadable_image_is_named(tiny, parser, tmp_path):
    from tmspr_jax.tools.parse import parse_folder

    images = tmp_path / "imgs"
    write_images(str(images), {"ok.png": (9, 7)})
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "notes.txt").write_text("not an image: ignored")
    with pytest.raises(ValueError, match=r"broken\.jpg: cannot decode the image"):
        parse_folder(tiny[1], str(images), str(tmp_path / "out"), parser=parser, progress=False)
    with pytest.raises(FileNotFoundError, match="is not a converted parser folder"):
        parse_folder(str(tmp_path), str(images), str(tmp_path / "out"), progress=False)


# ------------------------------------------------------------------------ targets straight from a prepared dataset


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tmspr_jax.data import sources
    from tmspr_jax.datagen import synthetic

    root = tmp_path_factory.mktemp("prepared")
    raw, data_dir = str(root / "raw"), str(root / "tfds")
    synthetic.generate(raw, num_train_ids=3, images_per_id=2, num_test_ids=2, gallery_per_id=2, seed=2)
    split = sources.open_split("synthetic_occluded", "train", data_dir, manual_dir=raw)
    return raw, data_dir, split


GEOM = dict(img_size=(128, 64), patch=16, stride=(12, 12))


def test_targets_from_images_restart_and_oracle(tiny, parser, prepared, tmp_path):
    import cv2

    from tmspr_jax.data import parsing as P

    model, parser_dir, _, _ = tiny
    _, _, split = prepared
    g = GEOM
    out = str(tmp_path / "t.npz")
    assert (
        P.parse_targets(
            split, parser_dir, g["img_size"], g["patch"], g["stride"], out=out, batch_size=BATCH, max_images=3
        )
        is None
    )  # stopped after two batches
    assert sorted(os.listdir(out + ".partial")) == ["batch_000000.npy", "batch_000001.npy", "settings.json"]
    names, resumed = P.parse_targets(
        split, parser_dir, g["img_size"], g["patch"], g["stride"], out=out, batch_size=BATCH
    )
    names2, straight = P.parse_targets(
        split, parser_dir, g["img_size"], g["patch"], g["stride"], out=str(tmp_path / "u.npz"), batch_size=BATCH
    )
    assert names == names2 == [str(n) for n in split.file_names] and resumed.shape == (6, 10, 5, 6)
    np.testing.assert_array_equal(resumed, straight)
    # the oracle through SCHP's pipeline, merged and pooled by the maps route's own functions
    for i, name in enumerate(names):
        img = cv2.imdecode(np.frombuffer(split[i]["image"], np.uint8), cv2.IMREAD_COLOR)
        want = P.grid_targets(P.merge_lip(oracle.extract(model, img)), **GEOM)
        np.testing.assert_allclose(resumed[i], want, atol=2e-6, err_msg=name)


def test_targets_batches_of_a_dataset_prepared_again_are_not_reused(tiny, parser, prepared, tmp_path, caplog):
    import logging

    from tmspr_jax.data import parsing as P

    _, parser_dir, _, _ = tiny
    split = prepared[2]
    out = str(tmp_path / "t.npz")
    geometry = (GEOM["img_size"], GEOM["patch"], GEOM["stride"])
    assert P.parse_targets(split, parser_dir, *geometry, out=out, batch_size=BATCH, max_images=2) is None
    st = os.stat(split.files[0])
    os.utime(split.files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as if prepared again, same names
    try:
        with caplog.at_level(logging.WARNING):
            assert P.parse_targets(split, parser_dir, *geometry, out=out, batch_size=BATCH, max_images=2) is None
    finally:
        os.utime(split.files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "starting over" in caplog.text
    assert sorted(os.listdir(out + ".partial")) == ["batch_000000.npy", "settings.json"]  # batch 0 again, not 1


def test_parsing_targets_out_must_be_a_file_path(tmp_path):
    import types

    from tmspr_jax.tools import parsing_targets

    f = types.SimpleNamespace(
        config=None,
        dataset="d",
        data_dir=str(tmp_path),
        maps_dir=str(tmp_path),
        parser=None,
        img_size="64,32",
        patch=16,
        stride="12",
        method="patch_mean",
        out=str(tmp_path),
    )
    with pytest.raises(ValueError, match="is a folder; expected the path of the targets .npz file"):
        parsing_targets._settings(f)


def test_training_setup_makes_targets_with_the_parser(tiny, prepared):
    """config.parsing.parser: the targets are made on first use and then loaded for training."""
    from tmspr_jax.config import get_base_config
    from tmspr_jax.data import parsing as P
    from tmspr_jax.datagen import ensure

    _, parser_dir, _, _ = tiny
    raw, data_dir, split = prepared
    c = get_base_config()
    c.data.train, c.data.data_dir, c.data.manual_dir = "synthetic_occluded", data_dir, raw
    c.img_size, c.model.patch_size, c.model.stride = GEOM["img_size"], GEOM["patch"], GEOM["stride"]
    c.parsing.parser, c.parsing.parser_batch_size = parser_dir, BATCH
    ensure.ensure_parsing_targets(c, (10, 5))
    path = P.default_path(data_dir, "synthetic_occluded", (10, 5))
    assert os.path.isfile(path) and not os.path.exists(path + ".partial")
    got = P.load_targets(c.parsing, split, (10, 5), data_dir, "synthetic_occluded", geometry=P.config_geometry(c))
    assert got.num_missing == 0 and got.targets.shape == (6, 10, 5, 6)
    np.testing.assert_allclose(got.targets.sum(-1), 1.0, atol=1e-5)


def test_parsing_targets_command_with_the_parser(tiny, prepared, tmp_path):
    """``tools.parsing_targets --parser``: stops at --max_images, resumes, and stores what parse_targets makes."""
    from tmspr_jax.data import parsing as P

    _, parser_dir, _, _ = tiny
    _, data_dir, split = prepared
    out = str(tmp_path / "cmd.npz")
    args = [
        f"--parser={parser_dir}",
        f"--data_dir={data_dir}",
        "--dataset=synthetic_occluded",
        "--img_size=128,64",
        "--patch=16",
        "--stride=12",
        f"--batch_size={BATCH}",
        f"--out={out}",
    ]
    run = lambda *extra: subprocess.run(
        [sys.executable, "-m", "tmspr_jax.tools.parsing_targets", *args, *extra], capture_output=True, text=True
    )
    r = run("--max_images=2")
    assert r.returncode == 0 and "stopped after --max_images=2" in r.stdout, r.stderr
    assert not os.path.exists(out) and os.path.isdir(out + ".partial")
    r = run()
    assert r.returncode == 0, r.stderr
    assert "images=6 grid=10x5 img_size=128x64 patch=16 stride=12,12 method=patch_mean" in r.stdout
    assert not os.path.exists(out + ".partial")
    with np.load(out) as f:
        stored = f["targets"]
    names, want = P.parse_targets(split, parser_dir, (128, 64), 16, (12, 12), out=str(tmp_path / "direct.npz"))
    np.testing.assert_allclose(stored, want, atol=1e-6)
    r = run("--maps_dir=/nonexistent")
    assert r.returncode != 0 and "exactly one of --maps_dir" in r.stderr


def test_bfloat16_parser_runs_close_to_float32(tiny, parser):
    from tmspr_jax.parser.runner import Parser

    fast = Parser(tiny[1], dtype="bfloat16", batch_size=BATCH)
    x = np.random.RandomState(3).randint(0, 256, (BATCH, 473, 473, 3)).astype(np.uint8)
    want, got = np.asarray(parser.logits(x)), np.asarray(fast.logits(x))
    assert got.dtype == np.float32 and got.shape == want.shape
    assert 0 < rel_err(got, want) < 0.05  # bfloat16 convolutions: close, not equal
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9


def test_benchmark_times_both_sides_of_a_parser_that_agrees(parser):
    from tmspr_jax.tools import benchmark_parser

    # the tests' network, input and batch: the parser fixture's compiled program is reused
    r = benchmark_parser.benchmark(None, input_size=473, batch=BATCH, dtype="float32", iters=1, warmup=0, tiny=True)
    assert r["rel_diff"] <= 1e-5 and r["jax_img_s"] > 0 and r["torch_img_s"] > 0
    assert r["ratio"] == pytest.approx(r["jax_img_s"] / r["torch_img_s"])

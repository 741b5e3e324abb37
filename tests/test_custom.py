"""Custom datasets (tmspr_jax.data.builders.custom): both layouts, the camera rules, names side by side, the refusals,
prepare --overwrite building beside the old copy, and training (parsing targets on first use), evaluation, extract
and the dataset sheet on folders generated here (tiny images, a few identities)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiny
from configs import custom as custom_config
from tmspr_jax import train
from tmspr_jax.data import builders, sources
from tmspr_jax.data.builders import custom
from tmspr_jax.datagen import ensure
from tmspr_jax.tools import extract

SIZE = (32, 16)  # (h, w) of the generated images; the views resize them


def write_image(path: Path, seed: int, size: tuple[int, int] = SIZE) -> None:
    """A random image whose colour says its identity's seed (so a tiny model can tell them apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = np.array([(seed * 53) % 256, (seed * 97) % 256, (seed * 151) % 256], np.uint8)
    noise = rng.integers(0, 40, (*size, 3), dtype=np.uint8)
    Image.fromarray(base + noise).save(path)


def make_folders(
    root: Path,
    train_ids: dict[str, int] | None = None,
    query: dict[str, tuple[int, ...]] | None = None,
    gallery: dict[str, tuple[int, ...]] | None = None,
) -> Path:
    """``root/{train,query,gallery}/<identity>/<identity>_c<cam>_<k>.jpg``: train ``{id: images}`` over cameras 1, 2;
    query/gallery ``{id: cameras}``, one image per camera."""
    train_ids = {"ann": 4, "bob": 4, "cy": 4, "dee": 4} if train_ids is None else train_ids
    query = {"7": (1,), "8": (1,), "9": (2,)} if query is None else query
    gallery = {"7": (2, 3), "8": (2, 1), "9": (1, 3)} if gallery is None else gallery
    for i, (ident, n) in enumerate(sorted(train_ids.items())):
        for k in range(n):
            write_image(root / "train" / ident / f"{ident}_c{1 + k % 2}_{k}.jpg", 100 * i + k)
    for offset, split, ids in ((10_000, "query", query), (20_000, "gallery", gallery)):
        for ident, cams in ids.items():
            for k, cam in enumerate(cams):
                write_image(root / split / ident / f"{ident}_c{cam}_{split}{k}.jpg", offset + 7 * int(ident) + 100 * k)
    return root


def prepare(name: str, manual_dir: Path, data_dir: Path, **kw):
    return sources.prepare_dataset(f"custom/{name}", data_dir, manual_dir, **kw)


def rows(name: str, data_dir: Path, split: str) -> list[tuple[str, int, int]]:
    s = sources.open_split(f"custom/{name}", split, data_dir)
    return list(zip(s.file_names.tolist(), s.pids.tolist(), s.camids.tolist()))


def test_folders_cameras_from_names_folders_and_camid(tmp_path):
    raw = make_folders(tmp_path / "raw")
    prepare("shop", raw, tmp_path / "tfds")
    train_rows = rows("shop", tmp_path / "tfds", "train")
    # names relabelled 0..3 in sorted order; cameras c1, c2, c3 numbered 0, 1, 2 over all splits
    assert train_rows[:3] == [("ann/ann_c1_0.jpg", 0, 0), ("ann/ann_c1_2.jpg", 0, 0), ("ann/ann_c2_1.jpg", 0, 1)]
    assert sorted({p for _, p, _ in train_rows}) == [0, 1, 2, 3]
    assert rows("shop", tmp_path / "tfds", "query") == [
        ("7/7_c1_query0.jpg", 7, 0),
        ("8/8_c1_query0.jpg", 8, 0),
        ("9/9_c2_query0.jpg", 9, 1),
    ]
    split = sources.open_split("custom/shop", "gallery", tmp_path / "tfds")
    assert split.num_classes == 4 and split.num_cameras == 3  # a row for every camera, c3 only in the gallery
    assert split.metadata["camera_map"] == {"1": 0, "2": 1, "3": 2} and split.metadata["layout"] == "folders"
    # training names are numbered in sorted order; the test identities, all numbers, stay numbers
    assert split.metadata["identity_map"] == {"train": {"ann": 0, "bob": 1, "cy": 2, "dee": 3}}

    # camera sub-folders; --camid for every image or per split (overrides names and folders)
    raw2 = tmp_path / "raw2"
    for i, (ident, cam) in enumerate((("5", "cam1"), ("5", "c4"), ("6", "2"), ("6", "cam4"))):
        write_image(raw2 / "query" / ident / cam / "a.png", 500 + i)
        write_image(raw2 / "gallery" / ident / cam / "b.png", 600 + i)
    prepare("sub", raw2, tmp_path / "tfds")
    assert rows("sub", tmp_path / "tfds", "query") == [("5/c4/a.png", 5, 2), ("5/cam1/a.png", 5, 0)] + [
        ("6/2/a.png", 6, 1),
        ("6/cam4/a.png", 6, 2),
    ]
    prepare("fixed", raw2, tmp_path / "tfds", camid="query:3,gallery:8")
    assert {c for _, _, c in rows("fixed", tmp_path / "tfds", "query")} == {0}
    assert {c for _, _, c in rows("fixed", tmp_path / "tfds", "gallery")} == {1}


def test_list_files_and_sets_side_by_side(tmp_path):
    raw = make_folders(tmp_path / "raw")
    for split in ("train", "query", "gallery"):
        lines = [
            f"{p.relative_to(raw).as_posix()} {p.parent.name} {10 + int(p.name.split('_c')[1][0])}"
            for p in sorted((raw / split).rglob("*.jpg"))
        ]
        (raw / f"{split}.txt").write_text("# path identity camera\n" + "\n".join(lines) + "\n")
    prepare("lists", raw, tmp_path / "tfds")
    got = rows("lists", tmp_path / "tfds", "query")
    assert got == [
        ("query/7/7_c1_query0.jpg", 7, 0),
        ("query/8/8_c1_query0.jpg", 8, 0),
        ("query/9/9_c2_query0.jpg", 9, 1),
    ]
    assert sources.get_builder("custom/lists", tmp_path / "tfds").info.metadata["layout"] == "lists"

    # A second custom set under another name, beside the first; the first is untouched.
    other = make_folders(tmp_path / "other", train_ids={"x": 4, "y": 4})
    prepare("other", other, tmp_path / "tfds")
    assert sources.open_split("custom/other", "train", tmp_path / "tfds").num_classes == 2
    assert sources.open_split("custom/lists", "train", tmp_path / "tfds").num_classes == 4
    # The same name from another folder is refused, not silently reused.
    with pytest.raises(ValueError, match=r"custom/other is already prepared .* from .*other.*--overwrite"):
        prepare("other", raw, tmp_path / "tfds")
    with pytest.raises(ValueError, match="custom dataset name 'a b'"):
        sources.get_builder("custom/a b", tmp_path / "tfds")
    with pytest.raises(ValueError, match=r"needs a name: custom/<name>"):
        sources.get_builder("custom", tmp_path / "tfds")


def _copy(raw: Path, src: str, dst: str) -> None:
    (raw / dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(raw / src, raw / dst)


def _no_camera(raw: Path) -> None:
    write_image(raw / "gallery" / "7" / "plain.jpg", 1234)


def _listed_twice(raw: Path) -> None:
    lines = ["query/7/7_c1_query0.jpg 7 1", "query/7/7_c1_query0.jpg 7 1"]
    (raw / "query.txt").write_text("\n".join(lines))
    (raw / "gallery.txt").write_text("gallery/7/7_c2_gallery0.jpg 7 2")


BROKEN = {
    "query identity absent": (
        lambda raw: shutil.rmtree(raw / "gallery" / "9"),
        r"1 of 3 query identities have no gallery image: 9 ",
    ),
    "one camera": (
        lambda raw: [p.rename(p.with_name(p.name.replace("_c2", "_c1").replace("_c3", "_c1"))) for p in raw.rglob("*")],
        r"query and gallery come from one camera only \(1\).*--camid query:0,gallery:1",
    ),
    "byte-identical copy": (
        lambda raw: _copy(raw, "train/ann/ann_c1_0.jpg", "gallery/8/8_c3_copy.jpg"),
        r"1 image\(s\) are byte-identical copies of others .*gallery/8/8_c3_copy.jpg = train/ann/ann_c1_0.jpg",
    ),
    "listed twice": (_listed_twice, r"1 image\(s\) listed more than once: .*7_c1_query0.jpg \(query and query\)"),
    "unreadable": (
        lambda raw: (raw / "train" / "bob" / "bob_c1_9.jpg").write_bytes(b"not a jpeg"),
        r"1 unreadable image\(s\): .*bob_c1_9.jpg \(UnidentifiedImageError",
    ),
    "no camera": (_no_camera, r"plain.jpg: no camera: put c<N> in the file name"),
    "query without gallery": (lambda raw: shutil.rmtree(raw / "gallery"), r"query without gallery"),
}


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_real_folder_mistakes_are_one_line_errors(tmp_path, what):
    raw = make_folders(tmp_path / "raw")
    breaks, message = BROKEN[what]
    breaks(raw)
    with pytest.raises((builders.DatasetLayoutError, builders.CorruptImageError), match=message) as e:
        prepare("broken", raw, tmp_path / "tfds")
    assert "\n" not in str(e.value)
    assert not sources.get_builder("custom/broken", tmp_path / "tfds").is_prepared()


def test_notes_for_what_works_but_deserves_a_look(tmp_path):
    raw = make_folders(tmp_path / "raw", train_ids={"a": 4, "b": 4}, gallery={"7": (1, 2), "8": (1,), "9": (2, 3)})
    for p in (raw / "train").rglob("*_c2_*"):
        p.rename(p.with_name(p.name.replace("_c2_", "_c1_")))
    builder = prepare("notes", raw, tmp_path / "tfds")
    notes = builder.info.metadata["notes"]
    assert notes == [
        "1 of 3 queries have gallery images of their identity only from their own camera: the evaluation skips them",
        "camera(s) 2, 3 appear in query/gallery but not in train: their SIE rows stay untrained "
        "(--config.model.sie_camera=False leaves SIE out)",
        "the training images come from one camera: SIE (model.sie_camera) learns a single camera vector, which tells "
        "no cameras apart",
    ]


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tmspr_jax.tools.prepare", *args], cwd=tiny.REPO, capture_output=True, text=True
    )


def test_prepare_command_names_the_set_and_notes_small_identities_and_tiny_images(tmp_path):
    raw = make_folders(tmp_path / "my cams", train_ids={"ann": 4, "bob": 2, "cy": 3})
    write_image(raw / "train" / "ann" / "ann_c1_tiny.png", 5, size=(3, 2))
    r = run_prepare("--dataset=custom", f"--manual_dir={raw}", f"--data_dir={tmp_path / 'tfds'}", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Dataset custom/my_cams prepared in" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1])["train"] == {"ids": 3, "images": 10, "cameras": 2}
    assert (
        "note: 2 of 3 training identities have fewer than num_instances=4 images (bob, cy): the PK sampler draws 4 "
        "of their images with replacement" in r.stdout
    )
    assert "note: 1 training image(s) under 4 px on a side (ann/ann_c1_tiny.png (2x3)): kept" in r.stdout
    assert "--config=configs/custom.py:my_cams" in r.stdout

    r = run_prepare("--dataset=market1501", f"--manual_dir={raw}", "--camid=1", f"--data_dir={tmp_path / 'tfds'}")
    assert r.returncode != 0 and "--camid applies to custom/<name> datasets only" in r.stderr
    shutil.rmtree(raw / "gallery" / "9")
    r = run_prepare("--dataset=custom/x", f"--manual_dir={raw}", f"--data_dir={tmp_path / 'tfds'}")
    assert r.returncode != 0
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "1 of 3 query identities have no gallery image: 9 (every query identity needs gallery images to be "
            "evaluated)"
        )
    )


def test_overwrite_builds_beside_and_an_interrupted_rebuild_keeps_the_old_set(tmp_path, monkeypatch):
    data_dir = tmp_path / "tfds"
    raw = make_folders(tmp_path / "raw")
    prepare("s", raw, data_dir)
    before = rows("s", data_dir, "train")
    final = Path(sources.get_builder("custom/s", data_dir).data_dir)

    new = make_folders(tmp_path / "new", train_ids={"p": 4, "q": 4, "r": 4})
    real = custom.Custom._generate_examples

    def interrupted(self, items):
        for i, example in enumerate(real(self, items)):
            if i == 5:
                raise KeyboardInterrupt  # Ctrl-C in the middle of writing the new copy
            yield example

    monkeypatch.setattr(custom.Custom, "_generate_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare("s", new, data_dir, overwrite=True)
    monkeypatch.undo()
    assert rows("s", data_dir, "train") == before  # the old set, whole
    assert not [p.name for p in data_dir.iterdir() if p.name.startswith(".rebuild")]  # no scratch folder left
    with pytest.raises(builders.CorruptImageError):  # a failed rebuild: the same
        (new / "train" / "p" / "p_c1_0.jpg").write_bytes(b"broken")
        prepare("s", new, data_dir, overwrite=True)
    assert rows("s", data_dir, "train") == before
    write_image(new / "train" / "p" / "p_c1_0.jpg", 77)

    prepare("s", new, data_dir, overwrite=True)
    assert sorted({p for _, p, _ in rows("s", data_dir, "train")}) == [0, 1, 2]
    assert rows("s", data_dir, "train")[0][0] == "p/p_c1_0.jpg"
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]  # the old copy removed after the swap
    assert not [p.name for p in data_dir.iterdir() if p.name.startswith(".rebuild")]


def write_label_maps(raw: Path, maps: Path) -> None:
    """LIP label maps mirroring the training images' paths under train/ (``<path without extension>.png``)."""
    for p in (raw / "train").rglob("*.jpg"):
        rel = p.relative_to(raw / "train").with_suffix(".png")
        (maps / rel).parent.mkdir(parents=True, exist_ok=True)
        labels = np.zeros(SIZE, np.uint8)
        labels[: SIZE[0] // 3] = 2  # hair
        labels[SIZE[0] // 3 : 2 * SIZE[0] // 3] = 5  # upper clothes
        labels[2 * SIZE[0] // 3 :] = 9  # pants
        Image.fromarray(labels).save(maps / rel)


def test_train_evaluate_extract_and_sheet_on_a_custom_set(tmp_path):
    raw = make_folders(tmp_path / "raw")
    data_dir = tmp_path / "tfds"
    prepare("shop", raw, data_dir)
    write_label_maps(raw, tmp_path / "maps")
    overrides = {
        **tiny.TRAINING,
        "data.train": "custom/shop",
        "data.test": "custom/shop",
        "data.manual_dir": "",
        "data.synthetic": False,
        "data.data_dir": str(data_dir),
        "parsing.maps_dir": str(tmp_path / "maps"),  # targets made on first use, stored under parsing/custom/shop/
        "train.epochs": 1,
        "train.max_steps_per_epoch": 1,
        "eval.max_rank": 5,
        "eval.bootstrap_samples": 0,
        "model.dtype": "float32",
    }
    cfg = tiny.run_config(str(tmp_path), overrides)
    workdir = tmp_path / "work"
    ensure.prepare_for_config(cfg)  # as main does: the targets from the maps
    results = train.train_and_evaluate(cfg, str(workdir))
    assert 0.0 <= results["mAP"] <= 1.0 and len(results["cmc"]) >= 1
    assert list((data_dir / "parsing" / "custom" / "shop").glob("*.npz"))

    # The tools on the same set: features of the test split, a search of its folders, the dataset sheet.
    done = extract.extract_to_file(cfg, str(workdir), str(tmp_path / "f.npz"))
    assert (done.num_query, done.num_gallery) == (3, 6)
    f = extract.load_features(done.path)
    assert f["query_file_names"].tolist() == ["7/7_c1_query0.jpg", "8/8_c1_query0.jpg", "9/9_c2_query0.jpg"]
    assert f["query_pids"].tolist() == [7, 8, 9] and f["gallery_camids"].tolist() == [1, 2, 0, 1, 0, 2]
    # tools.search reads image folders (tests/test_search.py): it finds the layout's images under their identities
    root, paths = extract.list_images(str(raw / "gallery"))
    assert [os.path.relpath(p, root) for p in paths] == f["gallery_file_names"].tolist()

    # configs/custom.py:<name> names the set for every command (here the sheet, as a user runs it).
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tmspr_jax.tools.dataset_sheet",
            f"--config={tiny.REPO}/configs/custom.py:shop",
            f"--config.data.data_dir={data_dir}",
            "--split=gallery",
            f"--out={tmp_path / 'sheet.jpg'}",
            "--tile=32,16",
        ],
        cwd=tiny.REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "custom/shop gallery: 3 identities, 6 images, 3 cameras" in r.stdout
    assert (custom_config.get_config("shop").data.train, custom_config.get_config().data.test) == (
        "custom/shop",
        "custom",
    )

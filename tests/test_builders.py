"""Each TFDS builder built from a generated release-layout folder; every record checked against the fixture's truth."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import fixtures
from tmspr_jax.data import builders
from tmspr_jax.data.builders import CorruptImageError, DatasetLayoutError
from tmspr_jax.data.builders.occluded_reid import OccludedReidConfig, select_train_ids


def build(name: str, manual_dir: Path, data_dir: Path, **builder_kwargs) -> tfds.core.DatasetBuilder:
    builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record", **builder_kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def records(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def rows(builder: tfds.core.DatasetBuilder, split: str) -> list[tuple[str, int, int]]:
    return sorted((r["file_name"].decode(), int(r["pid"]), int(r["camid"])) for r in records(builder, split))


def check_against_truth(builder: tfds.core.DatasetBuilder, truth: fixtures.DatasetTruth) -> None:
    assert set(builder.info.splits.keys()) == set(truth.splits)
    for split, expected in truth.splits.items():
        assert rows(builder, split) == sorted(expected), split
        stats = builder.info.metadata["splits"][split]
        assert {k: stats[k] for k in ("ids", "images", "cameras")} == truth.stats(split), split
    md = builder.info.metadata
    if "train" in truth.splits:
        assert md["num_classes"] == truth.stats("train")["ids"]
        assert md["num_cameras"] == max(c for _, _, c in truth.splits["train"]) + 1
    else:
        assert md["num_classes"] == 0 and md["num_cameras"] == 0


def test_all_builders_registered_on_import():
    expected = {
        "market1501",
        "dukemtmc_reid",
        "occluded_duke",
        "occluded_reid",
        "partial_reid",
        "msmt17",
        "synthetic_occluded",
    }
    assert set(builders.BUILDERS) == expected
    for name in expected:
        assert tfds.builder_cls(name) is builders.BUILDERS[name]


@pytest.mark.parametrize("folder", ["Market-1501-v15.09.15", "market1501"])
def test_market1501(tmp_path, folder):
    truth = fixtures.make_market1501(tmp_path / "raw", folder=folder)
    builder = build("market1501", truth.manual_dir, tmp_path / "tfds")
    check_against_truth(builder, truth)
    md = builder.info.metadata
    assert md["junk_dropped"] == {"train": 1, "query": 1, "gallery": 1}
    assert 0 in {p for _, p, _ in rows(builder, "gallery")}  # distractors kept
    assert md["train_label_map"] == {"2": 0, "7": 1, "11": 2, "1501": 3}
    for split in ("train", "query", "gallery"):  # records in sorted file order, as the reference lists them
        names = [r["file_name"].decode() for r in records(builder, split)]
        assert names == sorted(names) and len(names) > 3
    # The stored bytes are the release's JPEG bytes, untouched.
    rec = records(builder, "query")[0]
    src = truth.manual_dir / folder / "query" / rec["file_name"].decode()
    assert rec["image"] == src.read_bytes()


def test_market1501_reads_the_folder_itself(tmp_path):
    truth = fixtures.make_market1501(tmp_path / "raw")
    builder = build("market1501", tmp_path / "raw" / "Market-1501-v15.09.15", tmp_path / "tfds")
    check_against_truth(builder, truth)


@pytest.mark.parametrize("folder", ["DukeMTMC-reID", "dukemtmcreid", "dukemtmc-reid"])
def test_dukemtmc_reid(tmp_path, folder):
    truth = fixtures.make_dukemtmc_reid(tmp_path / "raw", folder=folder)
    check_against_truth(build("dukemtmc_reid", truth.manual_dir, tmp_path / "tfds"), truth)


def test_num_cameras_covers_a_camera_gap(tmp_path):
    truth = fixtures.make_dukemtmc_reid(tmp_path / "raw")
    extra = "0004_c8_f9999999.jpg"  # camid 7 while the other train images use cameras 0..4
    fixtures.write_image(tmp_path / "raw" / "DukeMTMC-reID" / "bounding_box_train" / extra, np.random.default_rng(0))
    truth.splits["train"].append((extra, 1, 7))  # raw pid 4 is label 1 of the train ids (1, 4, 7140)
    builder = build("dukemtmc_reid", truth.manual_dir, tmp_path / "tfds")
    check_against_truth(builder, truth)
    assert builder.info.metadata["splits"]["train"]["cameras"] == 6
    assert builder.info.metadata["num_cameras"] == 8


@pytest.mark.parametrize("folder", ["Occluded_Duke", "occluded_dukemtmc"])
def test_occluded_duke(tmp_path, folder):
    truth = fixtures.make_occluded_duke(tmp_path / "raw", folder=folder)
    builder = build("occluded_duke", truth.manual_dir, tmp_path / "tfds")
    check_against_truth(builder, truth)


def test_synthetic_occluded(tmp_path):
    truth = fixtures.make_synthetic_layout(tmp_path / "synth")
    check_against_truth(build("synthetic_occluded", truth.manual_dir, tmp_path / "tfds"), truth)


def test_partial_reid_is_test_only(tmp_path):
    truth = fixtures.make_partial_reid(tmp_path / "raw", folder="Partial-REID")
    builder = build("partial_reid", truth.manual_dir, tmp_path / "tfds")
    check_against_truth(builder, truth)
    assert "train" not in builder.info.splits


def test_msmt17(tmp_path):
    truth = fixtures.make_msmt17(tmp_path / "raw")
    builder = build("msmt17", truth.manual_dir, tmp_path / "tfds")
    check_against_truth(builder, truth)
    assert len(rows(builder, "train")) == 5  # list_train (3) + list_val (2)
    assert max(c for _, _, c in truth.splits["train"] + truth.splits["query"]) >= 9  # two-digit cameras parsed


def test_occluded_reid_full_tif_stored_as_lossless_png(tmp_path):
    truth = fixtures.make_occluded_reid(tmp_path / "raw")
    builder = build("occluded_reid", truth.manual_dir, tmp_path / "tfds")  # default config: full
    assert builder.builder_config.name == "full"
    check_against_truth(builder, truth)
    for rec in records(builder, "gallery") + records(builder, "query"):
        name = rec["file_name"].decode()
        with Image.open(io.BytesIO(rec["image"])) as im:
            assert im.format == "PNG"
            stored = np.asarray(im.convert("RGB"))
        with Image.open(truth.sources[name]) as src:
            assert src.format == "TIFF"
            np.testing.assert_array_equal(stored, np.asarray(src.convert("RGB")))


def test_occluded_reid_half_is_deterministic_100_100(tmp_path):
    truth = fixtures.make_occluded_reid(tmp_path / "raw", num_ids=200, per_kind=1, ext=".jpg", size=(4, 2))
    first = build("occluded_reid/half", truth.manual_dir, tmp_path / "tfds_a")
    second = build("occluded_reid/half", truth.manual_dir, tmp_path / "tfds_b")
    train_ids = first.info.metadata["train_ids"]
    assert len(train_ids) == 100 and set(train_ids) <= set(range(1, 201))
    assert second.info.metadata["train_ids"] == train_ids
    assert train_ids != list(range(1, 101))  # a real draw, not the first 100
    expected = truth.splits_for(train_ids)
    check_against_truth(first, fixtures.DatasetTruth(truth.manual_dir, expected))
    for split in ("train", "query", "gallery"):
        assert rows(second, split) == rows(first, split)
    train = rows(first, "train")
    assert {p for _, p, _ in train} == set(range(100)) and {c for _, _, c in train} == {0}
    assert len(train) == 200 and len(rows(first, "query")) == 100 and len(rows(first, "gallery")) == 100
    assert first.info.metadata["num_classes"] == 100 and first.info.metadata["num_cameras"] == 1


def test_occluded_reid_configurable_number_of_train_ids(tmp_path):
    truth = fixtures.make_occluded_reid(tmp_path / "raw", num_ids=5)
    config = OccludedReidConfig(name="half_2", num_train_ids=2, seed=7)
    builder = build("occluded_reid", truth.manual_dir, tmp_path / "tfds", config=config)
    train_ids = builder.info.metadata["train_ids"]
    assert len(train_ids) == 2
    check_against_truth(builder, fixtures.DatasetTruth(truth.manual_dir, truth.splits_for(train_ids)))

    too_many = OccludedReidConfig(name="half_5", num_train_ids=5)
    with pytest.raises(ValueError, match="num_train_ids=5"):
        build("occluded_reid", truth.manual_dir, tmp_path / "tfds2", config=too_many)


def test_select_train_ids_fixed_per_seed():
    pids = list(range(1, 201))
    a = select_train_ids(pids, 100, seed=0)
    assert a == select_train_ids(list(reversed(pids)), 100, seed=0)  # independent of listing order
    assert len(set(a)) == 100 and set(a) <= set(pids) and a == sorted(a)
    assert select_train_ids(pids, 100, seed=1) != a


# ------------------------------------------------------------------------------------------------ bad input


def expect_error(exc, path_part, name, manual_dir, data_dir):
    with pytest.raises(exc) as info:
        build(name, manual_dir, data_dir)
    assert str(path_part) in str(info.value), str(info.value)
    return str(info.value)


def test_missing_manual_dir(tmp_path):
    msg = expect_error(DatasetLayoutError, tmp_path / "nope", "market1501", tmp_path / "nope", tmp_path / "tfds")
    assert "bounding_box_train" in msg  # shows the expected layout


def test_missing_split_folder(tmp_path):
    fixtures.make_market1501(tmp_path / "raw")
    for f in (tmp_path / "raw" / "Market-1501-v15.09.15" / "query").iterdir():
        f.unlink()
    (tmp_path / "raw" / "Market-1501-v15.09.15" / "query").rmdir()
    msg = expect_error(DatasetLayoutError, tmp_path / "raw", "market1501", tmp_path / "raw", tmp_path / "tfds")
    assert "query" in msg


def test_empty_split_folder(tmp_path):
    fixtures.make_dukemtmc_reid(tmp_path / "raw")
    gallery = tmp_path / "raw" / "DukeMTMC-reID" / "bounding_box_test"
    for f in gallery.iterdir():
        f.unlink()
    expect_error(DatasetLayoutError, gallery, "dukemtmc_reid", tmp_path / "raw", tmp_path / "tfds")


def test_corrupt_image(tmp_path):
    fixtures.make_market1501(tmp_path / "raw")
    bad = tmp_path / "raw" / "Market-1501-v15.09.15" / "bounding_box_test" / "0003_c2s1_000777_00.jpg"
    bad.write_bytes(b"not an image")
    expect_error(CorruptImageError, bad, "market1501", tmp_path / "raw", tmp_path / "tfds")
    assert not builders.Market1501(data_dir=str(tmp_path / "tfds")).is_prepared()  # nothing half-written kept


def test_truncated_jpeg(tmp_path):
    fixtures.make_synthetic_layout(tmp_path / "synth")
    victim = sorted((tmp_path / "synth" / "query").iterdir())[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    expect_error(CorruptImageError, victim, "synthetic_occluded", tmp_path / "synth", tmp_path / "tfds")


@pytest.mark.parametrize("bad_name", ["person.jpg", "0003_c7s1_000001_00.jpg", "1502_c1s1_000001_00.jpg"])
def test_unparsable_or_out_of_range_market_name(tmp_path, bad_name):
    fixtures.make_market1501(tmp_path / "raw")
    bad = tmp_path / "raw" / "Market-1501-v15.09.15" / "bounding_box_train" / bad_name
    fixtures.write_image(bad, np.random.default_rng(0))
    expect_error(DatasetLayoutError, bad, "market1501", tmp_path / "raw", tmp_path / "tfds")


def test_partial_reid_bad_name(tmp_path):
    fixtures.make_partial_reid(tmp_path / "raw")
    bad = tmp_path / "raw" / "Partial_REID" / "whole_body_images" / "x_01.jpg"
    fixtures.write_image(bad, np.random.default_rng(0))
    expect_error(DatasetLayoutError, bad, "partial_reid", tmp_path / "raw", tmp_path / "tfds")


def test_occluded_reid_prefix_must_match_folder(tmp_path):
    fixtures.make_occluded_reid(tmp_path / "raw")
    bad = tmp_path / "raw" / "Occluded_REID" / "whole_body_images" / "002" / "003_09.tif"
    fixtures.write_image(bad, np.random.default_rng(0))
    expect_error(DatasetLayoutError, bad, "occluded_reid", tmp_path / "raw", tmp_path / "tfds")


def test_msmt17_listed_image_missing_and_bad_line(tmp_path):
    truth = fixtures.make_msmt17(tmp_path / "raw")
    root = truth.manual_dir / "MSMT17_V1"
    query = root / "list_query.txt"
    original = query.read_text()
    query.write_text(original + "0009/0009_001_03_0303morning_0001_0.jpg 9\n")
    expect_error(DatasetLayoutError, root / "test" / "0009", "msmt17", tmp_path / "raw", tmp_path / "tfds")
    query.write_text(original + "just_a_path.jpg\n")
    expect_error(DatasetLayoutError, query, "msmt17", tmp_path / "raw", tmp_path / "tfds")

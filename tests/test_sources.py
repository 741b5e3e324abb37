"""open_split / ReIDSplit / decode_image over datasets built from generated release-layout folders."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

import fixtures
from tmspr_jax.data.builders import CorruptImageError, DatasetLayoutError
from tmspr_jax.data.sources import ReIDSplit, decode_image, open_split, prepare_dataset


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("market")
    truth = fixtures.make_market1501(root / "raw")
    return truth, root / "tfds"


def test_open_split_builds_from_manual_dir_then_reads_without_it(market):
    truth, data_dir = market
    train = open_split("market1501", "train", data_dir, manual_dir=truth.manual_dir)
    assert isinstance(train, ReIDSplit) and train.name == "market1501" and train.split == "train"
    again = open_split("market1501", "train", data_dir)  # prepared now: no manual_dir needed
    assert len(again) == len(train) == len(truth.splits["train"])


@pytest.mark.parametrize("split", ["train", "query", "gallery"])
def test_labels_match_records_and_truth(market, split):
    truth, data_dir = market
    ds = open_split("market1501", split, data_dir, manual_dir=truth.manual_dir)
    assert ds.pids.dtype == np.int64 and ds.camids.dtype == np.int64
    got = sorted(zip(ds.file_names.tolist(), ds.pids.tolist(), ds.camids.tolist()))
    assert got == sorted(truth.splits[split])
    for i in range(len(ds)):  # the arrays are in record order
        rec = ds[i]
        assert isinstance(rec["image"], bytes) and isinstance(rec["file_name"], str)
        assert (rec["file_name"], rec["pid"], rec["camid"]) == (ds.file_names[i], ds.pids[i], ds.camids[i])
    assert ds.stats() == truth.stats(split)
    assert ds.num_classes == truth.stats("train")["ids"]
    assert ds.num_cameras == max(c for _, _, c in truth.splits["train"]) + 1


def test_indexing(market):
    truth, data_dir = market
    ds = open_split("market1501", "query", data_dir, manual_dir=truth.manual_dir)
    assert ds[-1] == ds[len(ds) - 1]
    with pytest.raises(IndexError, match="market1501/query"):
        ds[len(ds)]


def test_decode_image_matches_source_pixels(market):
    truth, data_dir = market
    ds = open_split("market1501", "gallery", data_dir, manual_dir=truth.manual_dir)
    rec = ds[0]
    img = decode_image(rec)
    assert img.dtype == np.uint8 and img.shape == (16, 8, 3)
    src = truth.manual_dir / "Market-1501-v15.09.15" / "bounding_box_test" / rec["file_name"]
    with Image.open(src) as im:
        np.testing.assert_array_equal(img, np.asarray(im.convert("RGB")))


def test_decode_image_corrupt_names_file():
    with pytest.raises(CorruptImageError, match="0001_c1s1_000001_00.jpg"):
        decode_image({"image": b"\xff\xd8garbage", "file_name": "0001_c1s1_000001_00.jpg"})


def test_not_prepared_without_manual_dir_names_data_dir_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        open_split("occluded_duke", "train", tmp_path / "empty")
    msg = str(info.value)
    assert str(tmp_path / "empty") in msg
    assert "python -m tmspr_jax.tools.prepare --dataset occluded_duke" in msg


def test_unknown_dataset_and_split(market, tmp_path):
    truth, data_dir = market
    with pytest.raises(ValueError, match="known builders"):
        open_split("market1502", "train", tmp_path)
    with pytest.raises(ValueError, match="no split 'val'"):
        open_split("market1501", "val", data_dir, manual_dir=truth.manual_dir)


def test_config_name_and_test_only_dataset(tmp_path):
    truth = fixtures.make_occluded_reid(tmp_path / "raw", num_ids=200, per_kind=1, ext=".jpg", size=(4, 2))
    train = open_split("occluded_reid/half", "train", tmp_path / "tfds", manual_dir=truth.manual_dir)
    assert train.name == "occluded_reid/half"
    assert train.num_classes == 100 and len(np.unique(train.pids)) == 100 and set(train.camids.tolist()) == {0}
    full_query = open_split("occluded_reid", "query", tmp_path / "tfds", manual_dir=truth.manual_dir)
    assert full_query.num_classes == 0 and len(full_query) == 200 and set(full_query.camids.tolist()) == {0}
    with pytest.raises(ValueError, match="no split 'train'"):
        open_split("occluded_reid/full", "train", tmp_path / "tfds")


def test_tif_record_decodes_to_source_pixels(tmp_path):
    truth = fixtures.make_occluded_reid(tmp_path / "raw", num_ids=2)
    gallery = open_split("occluded_reid", "gallery", tmp_path / "tfds", manual_dir=truth.manual_dir)
    for i in range(len(gallery)):
        rec = gallery[i]
        with Image.open(truth.sources[rec["file_name"]]) as src:
            np.testing.assert_array_equal(decode_image(rec), np.asarray(src.convert("RGB")))
        with Image.open(io.BytesIO(rec["image"])) as im:
            assert im.format == "PNG"


def test_split_pickles_for_worker_processes(market):
    truth, data_dir = market
    ds = open_split("market1501", "train", data_dir, manual_dir=truth.manual_dir)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == len(ds) and clone[2] == ds[2]
    np.testing.assert_array_equal(clone.pids, ds.pids)


def test_empty_manual_dir_is_named(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DatasetLayoutError, match=str(tmp_path / "raw")):
        prepare_dataset("msmt17", tmp_path / "tfds", tmp_path / "raw")
    with pytest.raises(DatasetLayoutError, match="list_train.txt"):  # the expected layout is shown
        prepare_dataset("msmt17", tmp_path / "tfds", tmp_path / "missing")

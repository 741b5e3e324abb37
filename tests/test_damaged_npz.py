"""Every reader of an ``.npz`` (parsing targets, features files, the search gallery cache, parser weights, a converted
checkpoint) names a truncated or damaged file in one line instead of passing on ``zipfile.BadZipFile``."""

from __future__ import annotations

import json
import os
import types

import ml_collections
import numpy as np
import pytest

from convert_weights import readers
from tmspr_jax.data import parsing
from tmspr_jax.parser import weights as parser_weights
from tmspr_jax.tools import extract, search
from tmspr_jax.utils import DamagedFileError, read_npz


def _truncated(path: str, **arrays: np.ndarray) -> str:
    np.savez(path, **(arrays or {"x": np.arange(1000.0)}))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def _one_line(e: pytest.ExceptionInfo, path: str) -> None:
    text = str(e.value)
    assert path in text and "truncated or damaged" in text and "\n" not in text


@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped"])
def test_read_npz_names_a_damaged_file(tmp_path, damage):
    path = str(tmp_path / "a.npz")
    np.savez(path, x=np.arange(1000.0), y=np.arange(3))
    assert read_npz(path, keys=["y", "z"]).keys() == {"y"}
    data = bytearray(open(path, "rb").read())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    else:  # a CRC mismatch, found only when the array is read
        data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(DamagedFileError) as e:
        read_npz(path, what="features file", hint="extract again")
    _one_line(e, path)
    assert "features file" in str(e.value) and str(e.value).endswith(". Extract again")
    with pytest.raises(FileNotFoundError):
        read_npz(str(tmp_path / "missing.npz"))


def test_parsing_targets_at_training_start(tmp_path):
    path = _truncated(str(tmp_path / "22x11.npz"), targets=np.full((2, 3, 2, 6), 1 / 6, np.float32))
    cfg = ml_collections.ConfigDict({"path": path, "missing": "error", "method": "patch_mean"})
    split = types.SimpleNamespace(file_names=["a.jpg", "b.jpg"])
    with pytest.raises(DamagedFileError) as e:
        parsing.load_targets(cfg, split, (3, 2), str(tmp_path), "x")
    _one_line(e, path)
    assert "parsing_targets" in str(e.value)
    with pytest.raises(DamagedFileError):
        parsing.stored_geometry(path)


@pytest.mark.parametrize("reader", [extract.load_features, extract.load_image_features])
def test_features_files_read_back(tmp_path, reader):  # tools.visualize --features, search --features, compare
    path = _truncated(str(tmp_path / "features.npz"))
    with pytest.raises(DamagedFileError) as e:
        reader(path)
    _one_line(e, path)


def test_a_damaged_gallery_cache_is_recomputed(tmp_path, capsys):
    path = _truncated(str(tmp_path / "cache.npz"))
    assert search._read_cache(path, "m", "f") is None  # None: the features are extracted and cached again
    assert search._write_cache(path, {"model_key": np.str_("m"), "files_key": np.str_("f"), "x": np.arange(2)})
    assert search._read_cache(path, "m", "f")["x"].tolist() == [0, 1]
    err = capsys.readouterr().err
    assert path in err and "recomputing" in err


def test_convert_weights_on_a_truncated_npz(tmp_path):
    path = _truncated(str(tmp_path / "vit.npz"))
    with pytest.raises(readers.CheckpointError) as e:
        readers.read_checkpoint(path)
    _one_line(e, path)


def test_parser_weights(tmp_path):
    folder = tmp_path / "parser"
    folder.mkdir()
    (folder / parser_weights.META_FILE).write_text(json.dumps({"kind": parser_weights.KIND}))
    path = _truncated(os.path.join(folder, parser_weights.VARIABLES_FILE))
    with pytest.raises(DamagedFileError) as e:
        parser_weights.load_parser(str(folder))
    _one_line(e, path)


def test_a_damaged_default_targets_file_is_made_again_a_given_one_is_named(tmp_path, caplog):
    import logging

    import tiny
    from tmspr_jax.datagen import ensure
    from tmspr_jax.utils import patch_grid

    c = tiny.run_config(str(tmp_path))
    ensure.prepare_for_config(c)
    grid = patch_grid(c.img_size, c.model.patch_size, c.model.stride)
    ensure.ensure_parsing_targets(c, grid)
    path = parsing.default_path(c.data.data_dir, c.data.train, grid)
    want = read_npz(path)["targets"]
    given = tmp_path / "given.npz"
    data = open(path, "rb").read()
    for p in (path, given):
        with open(p, "wb") as f:
            f.write(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        ensure.ensure_parsing_targets(c, grid)  # the default file is a cache of parsing.maps_dir
    assert "truncated or damaged: making it again" in caplog.text
    np.testing.assert_array_equal(read_npz(path)["targets"], want)
    c.parsing.path = str(given)
    with pytest.raises(DamagedFileError, match="given.npz: cannot read this parsing-targets file"):
        ensure.ensure_parsing_targets(c, grid)


@pytest.mark.parametrize("ext", [".png", ".npy"])
def test_a_truncated_parsing_map_is_named(tmp_path, ext):
    from PIL import Image

    path = str(tmp_path / f"a{ext}")
    if ext == ".png":
        Image.fromarray(np.random.default_rng(0).integers(0, 20, (64, 32), dtype=np.uint8), mode="L").save(path)
    else:
        np.save(path, np.zeros((64, 32, 20), np.float32))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DamagedFileError) as e:
        parsing.read_map(path)
    _one_line(e, path)

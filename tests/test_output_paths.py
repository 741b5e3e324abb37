"""Output paths are checked before any work (utils.check_output_path): a folder where a tool writes a file
(tools.extract, tools.export), a file where it writes a folder (convert_weights), a file in the way of the parent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tmspr_jax.config import demo_config
from tmspr_jax.tools import dataset_sheet, export, extract
from tmspr_jax.utils import check_output_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_check_output_path(tmp_path):
    (tmp_path / "f").write_text("x")
    check_output_path(str(tmp_path / "new" / "a.npz"), "file")
    check_output_path(str(tmp_path), "folder")
    with pytest.raises(ValueError, match=r"^--out '.*' is a folder; expected the path of the file"):
        check_output_path(str(tmp_path), "file")
    with pytest.raises(ValueError, match=r"^--dir '.*/f' is a file; expected a folder"):
        check_output_path(str(tmp_path / "f"), "folder", flag="--dir")
    with pytest.raises(ValueError, match=r"/f' is a file, so nothing can be written under it"):
        check_output_path(str(tmp_path / "f" / "sub" / "a.npz"), "file")


# The checkpoints below do not exist: the output path must be refused before they are looked for.


def test_extract_refuses_a_folder_as_out_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="is a folder; expected the path of the file"):
        extract.extract_to_file(demo_config(), str(tmp_path / "no_checkpoint"), str(tmp_path))
    with pytest.raises(ValueError, match="is a folder; expected the path of the file"):
        extract.extract_images_to_file(
            demo_config(), str(tmp_path / "no_checkpoint"), str(tmp_path / "none"), str(tmp_path)
        )
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "features.npz").mkdir()  # the default output, <checkpoint>/features.npz
    with pytest.raises(ValueError, match="features.npz' is a folder"):
        extract.extract_to_file(demo_config(), str(tmp_path / "ckpt"))


def test_export_refuses_a_folder_as_out_or_description_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="is a folder; expected the path of the file"):
        export.export_to_file(demo_config(), str(tmp_path / "no_checkpoint"), str(tmp_path))
    (tmp_path / "m.bin.json").mkdir()
    with pytest.raises(ValueError, match=r"--out's description '.*m.bin.json' is a folder"):
        export.export_to_file(demo_config(), str(tmp_path / "no_checkpoint"), str(tmp_path / "m.bin"))


def test_convert_weights_refuses_a_file_or_a_used_folder_as_out_before_reading(tmp_path):
    (tmp_path / "file").write_text("x")
    used = tmp_path / "used"
    used.mkdir()
    (used / "other").write_text("x")
    config = os.path.join(REPO, "configs", "demo.py")
    cases = (("timm", tmp_path / "file", "is a file; expected a folder"), ("schp", used, "exists and is not empty"))
    for mode, out, message in cases:
        cmd = [sys.executable, "-m", "convert_weights", mode, str(tmp_path / "missing.npz"), f"--out={out}"]
        r = subprocess.run(cmd + [f"--config={config}"], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and r.stderr.startswith("error: --out ") and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_visualize_refuses_a_file_as_out_before_reading_the_features(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "features.npz").write_bytes(b"PK\x03\x04 truncated")
    cmd = [sys.executable, "-m", "tmspr_jax.tools.visualize", f"--features={tmp_path / 'features.npz'}"]
    r = subprocess.run(cmd + [f"--out={tmp_path / 'file'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error: --out ") and "is a file; expected a folder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_sheet_colour_baseline_and_compare_refuse_a_folder_as_out_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="is a folder; expected the path of the file"):  # no such dataset: not opened
        dataset_sheet.sheet_to_file("no_such_dataset", "query", str(tmp_path / "none"), str(tmp_path))
    demo = os.path.join(REPO, "configs", "demo.py")
    missing = f"--config.data.data_dir={tmp_path / 'no_data'}"
    for cmd, prefix in (
        (["tmspr_jax.tools.colour_baseline", f"--config={demo}", missing], "error: --out "),
        (["tmspr_jax.tools.compare", f"--config={demo}", f"--torch_checkpoint={tmp_path}/no.pth"], "compare: error"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", *cmd, f"--out={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        said = r.stderr
        assert r.returncode == 1 and said.startswith(prefix) and "is a folder; expected the path" in said, said
        assert len(r.stderr.strip().splitlines()) == 1

"""convert_weights/readers.py: a .pth holding pickled objects besides tensors is refused without passing on torch's
advice to load it with weights_only=False (which would run code from the file)."""

from __future__ import annotations

import argparse

import pytest

from convert_weights.readers import CheckpointError, read_checkpoint

torch = pytest.importorskip("torch")


def test_a_pickled_object_in_a_pth_is_refused_without_unsafe_advice(tmp_path):
    path = str(tmp_path / "with_args.pth")
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    message = str(e.value)
    assert "weights_only" not in message and "trust the source" not in message and "\n" not in message, message
    assert "argparse.Namespace" in message and "run code" in message and path in message
    # a plain state dict reads
    torch.save({"w": torch.ones(2)}, path)
    assert read_checkpoint(path)["w"].tolist() == [1.0, 1.0]

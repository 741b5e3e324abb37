"""Small SCHP parsers for the parser tests: the oracle's code at tiny widths, random weights, SCHP's .pth layout."""

from __future__ import annotations

import os

import numpy as np

# One block per stage, a few channels: the same code path as ResNet-101 (downsample in every stage, dilated stage 4).
TINY = dict(layers=(1, 1, 1, 1), stem=(8, 8, 16), planes=(4, 8, 16, 32), psp=16, decoder=(16, 8, 16), edge=8, fusion=16)


def tiny_oracle(num_classes: int = 20, seed: int = 0):
    from tmspr_jax.oracles import schp

    return schp.randomize_(schp.ResNet(num_classes=num_classes, **TINY), seed)


def state_of(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def save_schp_checkpoint(model, path: str) -> str:
    """As SCHP's training saves it: ``{'state_dict': {'module.<key>': tensor}, 'epoch': ...}``."""
    import torch

    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 149}, path)
    return path


def write_images(folder: str, sizes: dict[str, tuple[int, int]], seed: int = 0) -> None:
    """Smooth random BGR images (so that bilinear warps and ties behave as on photos)."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    for name, (h, w) in sizes.items():
        img = cv2.GaussianBlur(rng.randint(0, 256, (h, w, 3)).astype(np.uint8), (3, 3), 0)
        assert cv2.imwrite(os.path.join(folder, name), img)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def labels_agree_except_ties(got_logits: np.ndarray, want_logits: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """Pixels whose argmax differs although the oracle's best two classes are further apart than ``tol`` (relative to
    the largest logit): must be none."""
    top2 = np.sort(want_logits, axis=-1)[..., -2:]
    tie = (top2[..., 1] - top2[..., 0]) <= tol * np.abs(want_logits).max()
    differ = got_logits.argmax(-1) != want_logits.argmax(-1)
    return differ & ~tie

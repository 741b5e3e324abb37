"""Position-embedding resize with PyTorch's bilinear semantics, in NumPy.

The reference resizes the ImageNet 14x14 grid with ``F.interpolate(mode='bilinear', align_corners=False)``: half-pixel
centres, source index clamped at 0, no antialiasing even when downsampling. ``jax.image.resize`` antialiases by
default, which changes the downsampled axis, so the formula is written out here.
"""

from __future__ import annotations

import numpy as np


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices i0, i1 and weights w0, w1 such that out[i] = w0 v[i0] + w1 v[i1] along one axis.

    The source coordinate is computed in float32 from a float32 scale, as PyTorch's kernels do for float32 tensors, so
    the interpolation weights are bit-identical to PyTorch's; the weighted sum is then done in float64.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    # PyTorch's kernels evaluate scale * (i + 0.5) - 0.5 as one fused multiply-add: one rounding, done here by
    # computing in float64 and rounding once to float32.
    src = ((np.arange(out_size, dtype=np.float64) + 0.5) * np.float64(scale) - 0.5).astype(f32)
    src = np.maximum(src, f32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0))
    w0 = f32(1.0) - w1
    return i0, i1, w0.astype(np.float64), w1.astype(np.float64)


def bilinear_resize(grid: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``grid [H, W, C]`` to ``[out_h, out_w, C]`` exactly as PyTorch bilinear, align_corners=False."""
    if grid.ndim != 3:
        raise ValueError(f"bilinear_resize expects [H, W, C], got shape {grid.shape}")
    out_h, out_w = (int(s) for s in out_hw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"bilinear_resize: target size must be positive, got {out_hw}")
    dtype = grid.dtype
    g = grid.astype(np.float64)
    y0, y1, wy0, wy1 = _axis_weights(g.shape[0], out_h)
    x0, x1, wx0, wx1 = _axis_weights(g.shape[1], out_w)
    # Separable: rows first, then columns (bilinear is separable, so the order does not change the result).
    rows = wy0[:, None, None] * g[y0] + wy1[:, None, None] * g[y1]
    out = wx0[None, :, None] * rows[:, x0] + wx1[None, :, None] * rows[:, x1]
    return out.astype(dtype)


def resize_pos_embed(
    pos_embed: np.ndarray, src_grid: tuple[int, int], dst_grid: tuple[int, int], num_prefix: int = 1
) -> np.ndarray:
    """Resize ``pos_embed [1, num_prefix + gh*gw, D]`` from ``src_grid`` to ``dst_grid``; prefix tokens kept verbatim.

    The patch tokens are row-major over (y, x), as the patch embedding flattens them.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape [1, N, D], got {pos_embed.shape}")
    sh, sw = src_grid
    n = pos_embed.shape[1] - num_prefix
    if n != sh * sw:
        raise ValueError(
            f"pos_embed has {n} patch positions (+{num_prefix} prefix), which is not the source grid "
            f"{sh}x{sw} = {sh * sw}"
        )
    prefix = pos_embed[:, :num_prefix]
    grid = pos_embed[0, num_prefix:].reshape(sh, sw, -1)
    resized = bilinear_resize(grid, dst_grid).reshape(1, dst_grid[0] * dst_grid[1], -1)
    return np.concatenate([prefix, resized], axis=1)

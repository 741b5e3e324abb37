"""ImageNet ViT checkpoints (timm naming or Google's vit_jax ``.npz`` layout) -> the reference's T-MSPR state dict.

The reference (docs/reference.md §2.5) loads ``jx_vit_base_p16_224-80ecf9dd.pth`` as its backbone: ``head``/``dist``
keys are skipped, the position embedding is resized to the re-ID grid with PyTorch bilinear, the patch conv is reused
unchanged with the overlapping stride, and b1/b2 are copies of the pretrained last block + final norm (the backbone
itself runs ``depth - 1`` blocks). Everything that has no ImageNet counterpart is initialised as the reference does
(:func:`convert_weights.tmspr.init_heads`).
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np

from convert_weights.mapping import first_few
from convert_weights.readers import CheckpointError
from convert_weights.resize import resize_pos_embed
from convert_weights.tmspr import ConversionReport, init_heads

# ------------------------------------------------------------------------------------------------ vit_jax .npz layout

_NPZ_PREFIX = "opt/target/"  # full training-state npz files nest the params here
_NPZ_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/(.+)$")
_NPZ_LN = {"LayerNorm_0": "norm1", "LayerNorm_2": "norm2"}
_NPZ_LN_PARAM = {"scale": "weight", "bias": "bias"}


def is_vit_jax(state: dict[str, np.ndarray]) -> bool:
    """True for Google's vit_jax ``.npz`` layout (``embedding/kernel`` at the top or under ``opt/target/``)."""
    return "embedding/kernel" in state or _NPZ_PREFIX + "embedding/kernel" in state


def vit_jax_to_timm(arrays: dict[str, np.ndarray], source: str = "<npz>") -> dict[str, np.ndarray]:
    """Rename/reshape a vit_jax ``.npz`` dict into timm's PyTorch naming and layouts (strict: unknown keys raise).

    Dense kernels ``[in, out]`` -> weights ``[out, in]``; conv ``[kh, kw, in, out]`` -> ``[out, in, kh, kw]``;
    attention ``query/key/value`` kernels ``[D, H, hd]`` are flattened and stacked into ``qkv`` ``[3D, D]`` (order q, k,
    v, then head, then head_dim, as timm's fused qkv), ``out`` ``[H, hd, D]`` -> ``proj`` ``[D, D]``.
    """
    if _NPZ_PREFIX + "embedding/kernel" in arrays:
        arrays = {k[len(_NPZ_PREFIX) :]: v for k, v in arrays.items() if k.startswith(_NPZ_PREFIX)}
    out: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    attn: dict[int, dict[str, np.ndarray]] = {}
    for key, v in arrays.items():
        v = np.asarray(v)
        if key == "embedding/kernel":
            _need_ndim(source, key, v, 4)
            out["patch_embed.proj.weight"] = v.transpose(3, 2, 0, 1)
        elif key == "embedding/bias":
            out["patch_embed.proj.bias"] = v
        elif key == "cls":
            out["cls_token"] = v
        elif key == "dist":  # DeiT-style distillation token in some jax exports
            out["dist_token"] = v
        elif key == "Transformer/posembed_input/pos_embedding":
            out["pos_embed"] = v
        elif key in ("Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"):
            out["norm." + _NPZ_LN_PARAM[key.rsplit("/", 1)[1]]] = v
        elif key in ("head/kernel", "pre_logits/kernel"):
            _need_ndim(source, key, v, 2)
            out[_timm_head_name(key)] = v.T
        elif key in ("head/bias", "pre_logits/bias"):
            out[_timm_head_name(key)] = v
        elif (m := _NPZ_BLOCK.match(key)) is not None:
            i, rest = int(m.group(1)), m.group(2)
            name = _npz_block_param(rest)
            if name is None:
                unknown.append(key)
            elif name.startswith("attn."):
                attn.setdefault(i, {})[name] = v
            else:
                out[f"blocks.{i}.{name}"] = _npz_dense(source, key, v)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source!r}: unknown keys for the vit_jax .npz layout: {sorted(unknown)}")
    for i, parts in sorted(attn.items()):
        out.update(_npz_attention(source, i, parts))
    return out


def _timm_head_name(key: str) -> str:
    module, param = key.split("/")
    stem = "head" if module == "head" else "pre_logits.fc"
    return f"{stem}.{'weight' if param == 'kernel' else 'bias'}"


def _npz_block_param(rest: str) -> str | None:
    """Name inside a timm block for the part of a vit_jax encoder-block key after ``encoderblock_i/``."""
    parts = rest.split("/")
    if len(parts) == 2 and parts[0] in _NPZ_LN and parts[1] in _NPZ_LN_PARAM:
        return f"{_NPZ_LN[parts[0]]}.{_NPZ_LN_PARAM[parts[1]]}"
    if (
        len(parts) == 3
        and parts[0] == "MlpBlock_3"
        and parts[1] in ("Dense_0", "Dense_1")
        and parts[2] in ("kernel", "bias")
    ):
        fc = "fc1" if parts[1] == "Dense_0" else "fc2"
        return f"mlp.{fc}.{'weight' if parts[2] == 'kernel' else 'bias'}"
    if (
        len(parts) == 3
        and parts[0] == "MultiHeadDotProductAttention_1"
        and parts[1] in ("query", "key", "value", "out")
        and parts[2] in ("kernel", "bias")
    ):
        return f"attn.{parts[1]}.{parts[2]}"
    return None


def _npz_dense(source: str, key: str, v: np.ndarray) -> np.ndarray:
    if key.endswith("/kernel"):
        _need_ndim(source, key, v, 2)
        return v.T
    return v


def _npz_attention(source: str, i: int, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    prefix = f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
    needed = [f"attn.{n}.{p}" for n in ("query", "key", "value", "out") for p in ("kernel", "bias")]
    missing = [prefix + n[len("attn.") :].replace(".", "/") for n in needed if n not in parts]
    if missing:
        raise CheckpointError(f"{source!r}: missing keys {missing}")
    for n in ("query", "key", "value"):
        _need_ndim(source, f"{prefix}{n}/kernel", parts[f"attn.{n}.kernel"], 3)
        _need_ndim(source, f"{prefix}{n}/bias", parts[f"attn.{n}.bias"], 2)
    _need_ndim(source, f"{prefix}out/kernel", parts["attn.out.kernel"], 3)
    qkv_w = [parts[f"attn.{n}.kernel"] for n in ("query", "key", "value")]
    d = qkv_w[0].shape[0]
    out_k = parts["attn.out.kernel"]
    return {
        # [D, H, hd] -> [D, H*hd] -> [H*hd, D]; stacked q, k, v along the output axis
        f"blocks.{i}.attn.qkv.weight": np.concatenate([w.reshape(d, -1).T for w in qkv_w], axis=0),
        f"blocks.{i}.attn.qkv.bias": np.concatenate(
            [parts[f"attn.{n}.bias"].reshape(-1) for n in ("query", "key", "value")]
        ),
        # [H, hd, D] -> [H*hd, D] (in, out) -> [D, H*hd] (out, in)
        f"blocks.{i}.attn.proj.weight": out_k.reshape(-1, out_k.shape[-1]).T,
        f"blocks.{i}.attn.proj.bias": parts["attn.out.bias"],
    }


def _need_ndim(source: str, key: str, v: np.ndarray, ndim: int) -> None:
    if v.ndim != ndim:
        raise CheckpointError(f"{source!r}: key {key!r} has shape {v.shape}, expected a {ndim}-d array")


# ------------------------------------------------------------------------------------------------ timm naming

_BLOCK_PARAMS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)
# Keys the reference never loads, and why (docs/reference.md §2.5: 'head' and 'dist' keys are skipped).
_DROPPED = {
    "head.weight": "ImageNet classifier (the reference skips keys containing 'head')",
    "head.bias": "ImageNet classifier (the reference skips keys containing 'head')",
    "head_dist.weight": "distillation classifier (the reference skips keys containing 'dist')",
    "head_dist.bias": "distillation classifier (the reference skips keys containing 'dist')",
    "dist_token": "distillation token (the reference skips keys containing 'dist')",
    "pre_logits.fc.weight": "representation layer of the ImageNet head only (the re-ID model has none)",
    "pre_logits.fc.bias": "representation layer of the ImageNet head only (the re-ID model has none)",
}


def is_timm_vit(state: dict[str, Any]) -> bool:
    """True for a ViT state dict in timm naming (``patch_embed.proj.weight`` and ``cls_token`` at the top level)."""
    return "patch_embed.proj.weight" in state and "cls_token" in state


def timm_block_count(state: dict[str, Any]) -> int:
    """Number of transformer blocks (``blocks.{i}.*``) in a timm state dict."""
    idx = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def expected_timm_shapes(
    embed_dim: int, depth: int, patch: int, mlp_hidden: int, qkv_bias: bool = True
) -> dict[str, tuple[int, ...] | None]:
    """Shape of every timm key the converter needs (``pos_embed``: None, its length is checked separately); without
    ``qkv_bias`` (the old timm ViT-S) there is no ``attn.qkv.bias``."""
    d, m = embed_dim, mlp_hidden
    shapes: dict[str, tuple[int, ...] | None] = {
        "cls_token": (1, 1, d),
        "pos_embed": None,
        "patch_embed.proj.weight": (d, 3, patch, patch),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    block = {
        "norm1.weight": (d,),
        "norm1.bias": (d,),
        "attn.qkv.weight": (3 * d, d),
        "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d),
        "attn.proj.bias": (d,),
        "norm2.weight": (d,),
        "norm2.bias": (d,),
        "mlp.fc1.weight": (m, d),
        "mlp.fc1.bias": (m,),
        "mlp.fc2.weight": (d, m),
        "mlp.fc2.bias": (d,),
    }
    if not qkv_bias:
        del block["attn.qkv.bias"]
    for i in range(depth):
        shapes.update({f"blocks.{i}.{k}": s for k, s in block.items()})
    return shapes


def timm_to_reference(
    state: dict[str, np.ndarray], model: Any, rng: jax.Array, source: str = "<checkpoint>"
) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """Map an ImageNet ViT state dict in timm naming to the reference T-MSPR state dict for ``model``.

    ``model`` is the :class:`tmspr_jax.models.TMSPR` to load into (its depth, width, patch, grid, classes and cameras
    are the target). Strict: a missing key, an unknown key or a wrong shape raises :class:`CheckpointError` naming
    every offending key. Returns the reference-named dict and a report of what was converted, skipped, resized and
    initialised.
    """
    report = ConversionReport(source=source)
    d, depth, patch = int(model.embed_dim), int(model.depth), int(model.patch_size)
    mlp_hidden = int(d * model.mlp_ratio)
    qkv_bias = bool(model.qkv_bias)
    n_blocks = timm_block_count(state)
    if n_blocks != depth:
        raise CheckpointError(
            f"{source!r}: the checkpoint has {n_blocks} transformer blocks, config.model.depth={depth}; they must match"
            + backbone_hint(state, n_blocks)
        )
    expected = expected_timm_shapes(d, depth, patch, mlp_hidden, qkv_bias)
    missing = sorted(k for k in expected if k not in state)
    unknown = sorted(k for k in state if k not in expected and k not in _DROPPED)
    wrong = [
        f"{k}: {tuple(state[k].shape)} (expected {s})"
        for k, s in expected.items()
        if k in state and s is not None and tuple(state[k].shape) != s
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + first_few(missing, ", "))
    if unknown:
        problems.append(f"unknown keys ({len(unknown)}): " + first_few(unknown, ", "))
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): " + first_few(wrong, "; "))
    if problems:
        raise CheckpointError(
            f"{source!r} is not a ViT with embed_dim={d}, depth={depth}, patch={patch}, "
            f"mlp hidden={mlp_hidden}, {'a' if qkv_bias else 'no'} qkv bias (config.model.backbone="
            f"{model.backbone_type}) in timm naming: " + " | ".join(problems) + backbone_hint(state, n_blocks)
        )
    for k in sorted(state):
        if k in _DROPPED:
            report.skip(k, _DROPPED[k])

    num_prefix = 2 if "dist_token" in state else 1
    pos = np.asarray(state["pos_embed"], np.float32)
    src_grid = _square_grid(pos, num_prefix, source)
    dst_grid = tuple(model.grid)
    if num_prefix == 2:  # keep cls (position 0), drop the distillation position (1)
        pos = np.concatenate([pos[:, :1], pos[:, 2:]], axis=1)
        report.skip("pos_embed[:, 1]", "position of the distillation token (the reference has no such token)")
    if tuple(src_grid) != dst_grid:
        pos = resize_pos_embed(pos, src_grid, dst_grid)
        report.resize(
            "pos_embed",
            f"{src_grid[0]}x{src_grid[1]} -> {dst_grid[0]}x{dst_grid[1]} (PyTorch bilinear, "
            "align_corners=False, no antialias; cls kept)",
        )

    f32 = lambda k: np.asarray(state[k], np.float32)
    block_params = [p for p in _BLOCK_PARAMS if qkv_bias or p != "attn.qkv.bias"]
    ref: dict[str, np.ndarray] = {
        "base.cls_token": f32("cls_token"),
        "base.pos_embed": pos.astype(np.float32),
        # kernel 16 is reused unchanged with any stride (docs/reference.md §2.5)
        "base.patch_embed.proj.weight": f32("patch_embed.proj.weight"),
        "base.patch_embed.proj.bias": f32("patch_embed.proj.bias"),
    }
    for i in range(depth - 1):
        for p in block_params:
            ref[f"base.blocks.{i}.{p}"] = f32(f"blocks.{i}.{p}")
    # b1 and b2 both start as copies of the pretrained last block + final norm; the backbone runs depth-1 blocks.
    last = depth - 1
    for branch in ("b1", "b2"):
        for p in block_params:
            ref[f"{branch}.0.{p}"] = f32(f"blocks.{last}.{p}").copy()
        ref[f"{branch}.1.weight"] = f32("norm.weight").copy()
        ref[f"{branch}.1.bias"] = f32("norm.bias").copy()
    report.note(
        f"blocks.{last}.* and norm.* copied into b1.0/b1.1 and b2.0/b2.1 (the backbone runs {depth - 1} "
        "blocks; the reference's base.blocks.{last} and base.norm are never executed)".replace("{last}", str(last))
    )
    report.converted.extend(k for k in sorted(state) if k not in _DROPPED)

    heads = init_heads(model, rng)
    for k in heads:
        report.initialise(k, _init_reason(k))
    ref.update(heads)
    return ref, report


def backbone_hint(state: dict[str, Any], n_blocks: int) -> str:
    """Which of the reference's backbones (models.vit.BACKBONES) the file's width, depth and qkv bias are, if any."""
    from tmspr_jax.models.vit import BACKBONES

    width = int(np.shape(state["cls_token"])[-1]) if "cls_token" in state else -1
    bias = "blocks.0.attn.qkv.bias" in state
    names = [n for n, b in BACKBONES.items() if (b.embed_dim, b.depth, b.qkv_bias) == (width, n_blocks, bias)]
    if not names:
        return ""
    return f" (the file is a {' / '.join(names)}: convert it with a config of that model.backbone and its sizes)"


def _square_grid(pos: np.ndarray, num_prefix: int, source: str) -> tuple[int, int]:
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise CheckpointError(f"{source!r}: key 'pos_embed' has shape {pos.shape}, expected [1, N, D]")
    n = pos.shape[1] - num_prefix
    side = int(round(math.sqrt(max(n, 0))))
    if n <= 0 or side * side != n:
        raise CheckpointError(
            f"{source!r}: 'pos_embed' has {n} patch positions, which is not a square grid; an "
            "ImageNet ViT checkpoint is expected"
        )
    return side, side


def _init_reason(key: str) -> str:
    if key == "base.sie_embed":
        return "camera embedding: no ImageNet counterpart, N(0, 0.02^2) as the reference"
    if key.startswith("linear_layer"):
        return "part head: N(0, 1e-4^2) as the reference"
    if key.startswith("classifier"):
        return "classifier: N(0, 0.001^2) as the reference"
    return "BNNeck: weight 1, bias 0, running mean 0, running var 1 as the reference"

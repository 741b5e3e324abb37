"""Small generated checkpoints for the converter / weights tests (no network, tiny sizes).

``timm_vit_state`` makes random ImageNet-ViT weights in timm naming; ``timm_to_vit_jax_layout`` re-expresses them in
Google's vit_jax ``.npz`` layout (written here independently of the converter, from the layout's definition:
Dense kernels ``[in, out]``, conv ``HWIO``, attention ``[D, heads, head_dim]`` / ``out`` ``[heads, head_dim, D]``).
"""

from __future__ import annotations

import os

import numpy as np

D, DEPTH, HEADS, PATCH = 64, 2, 2, 16
MLP = 4 * D
CONFIG_PATH = os.path.join(os.path.dirname(__file__), "convert_tiny_config.py")


def converter_config():
    """The config of ``CONFIG_PATH`` (what the commands under test read)."""
    from convert_tiny_config import get_config

    return get_config()


def timm_vit_state(seed: int = 0, grid: int = 14, with_head: bool = True) -> dict[str, np.ndarray]:
    """Random ViT (D=64, depth 2, patch 16, 224 input -> 14x14 grid) in timm naming, float32."""
    rs = np.random.RandomState(seed)
    n = lambda *s: rs.randn(*s).astype(np.float32) * np.float32(0.1)
    st = {
        "cls_token": n(1, 1, D),
        "pos_embed": n(1, 1 + grid * grid, D),
        "patch_embed.proj.weight": n(D, 3, PATCH, PATCH),
        "patch_embed.proj.bias": n(D),
        "norm.weight": 1 + n(D),
        "norm.bias": n(D),
    }
    for i in range(DEPTH):
        p = f"blocks.{i}."
        st.update(
            {
                p + "norm1.weight": 1 + n(D),
                p + "norm1.bias": n(D),
                p + "attn.qkv.weight": n(3 * D, D),
                p + "attn.qkv.bias": n(3 * D),
                p + "attn.proj.weight": n(D, D),
                p + "attn.proj.bias": n(D),
                p + "norm2.weight": 1 + n(D),
                p + "norm2.bias": n(D),
                p + "mlp.fc1.weight": n(MLP, D),
                p + "mlp.fc1.bias": n(MLP),
                p + "mlp.fc2.weight": n(D, MLP),
                p + "mlp.fc2.bias": n(D),
            }
        )
    if with_head:
        st["head.weight"], st["head.bias"] = n(10, D), n(10)
    return st


def timm_to_vit_jax_layout(st: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same weights in the vit_jax ``.npz`` layout."""
    hd = D // HEADS
    out = {
        "embedding/kernel": st["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": st["patch_embed.proj.bias"],
        "cls": st["cls_token"],
        "Transformer/posembed_input/pos_embedding": st["pos_embed"],
        "Transformer/encoder_norm/scale": st["norm.weight"],
        "Transformer/encoder_norm/bias": st["norm.bias"],
    }
    if "head.weight" in st:
        out["head/kernel"], out["head/bias"] = st["head.weight"].T, st["head.bias"]
    for i in range(DEPTH):
        b, p = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = b + "MultiHeadDotProductAttention_1/"
        w, bias = st[p + "attn.qkv.weight"], st[p + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            out[mha + name + "/kernel"] = w[j * D : (j + 1) * D].T.reshape(D, HEADS, hd)  # x @ kernel -> [H, hd]
            out[mha + name + "/bias"] = bias[j * D : (j + 1) * D].reshape(HEADS, hd)
        out[mha + "out/kernel"] = st[p + "attn.proj.weight"].T.reshape(HEADS, hd, D)
        out[mha + "out/bias"] = st[p + "attn.proj.bias"]
        out[b + "LayerNorm_0/scale"], out[b + "LayerNorm_0/bias"] = st[p + "norm1.weight"], st[p + "norm1.bias"]
        out[b + "LayerNorm_2/scale"], out[b + "LayerNorm_2/bias"] = st[p + "norm2.weight"], st[p + "norm2.bias"]
        for r, fc in ((0, "fc1"), (1, "fc2")):
            out[b + f"MlpBlock_3/Dense_{r}/kernel"] = st[p + f"mlp.{fc}.weight"].T
            out[b + f"MlpBlock_3/Dense_{r}/bias"] = st[p + f"mlp.{fc}.bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def write_all_formats(st: dict[str, np.ndarray], folder: str) -> dict[str, str]:
    """Write ``st`` as .pth (torch), .safetensors and vit_jax .npz; returns the three paths."""
    import torch
    from safetensors.numpy import save_file

    paths = {
        "pth": os.path.join(folder, "vit.pth"),
        "safetensors": os.path.join(folder, "vit.safetensors"),
        "npz": os.path.join(folder, "vit.npz"),
    }
    torch.save({k: torch.from_numpy(v) for k, v in st.items()}, paths["pth"])
    save_file(st, paths["safetensors"])
    np.savez(paths["npz"], **timm_to_vit_jax_layout(st))
    return paths

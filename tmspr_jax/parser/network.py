"""SCHP's AugmentCE2P human parser (ResNet-101 backbone, PSP context, edge branch, decoder, fusion head) in Flax.

Inference only: every batch norm uses its running statistics. Layout NHWC. Module and parameter names follow SCHP's
PyTorch state dict: the key ``layer1.0.conv1.weight`` lives at ``params/layer1_0/conv1/kernel`` (a number joins the
name before it with ``_``), so the conversion is a mechanical rename (:func:`torch_key_to_path`).

SCHP's ``InPlaceABNSync`` is batch norm followed by an activation, but its kernel scales by ``|weight| + eps`` rather
than ``weight`` (:class:`ABN`). Where SCHP builds it through ``BatchNorm2d = partial(InPlaceABNSync,
activation='none')`` (stem, bottlenecks, downsample) there is no activation and a plain ReLU follows where SCHP has
one; everywhere else (PSP, edge, decoder, fusion) it is a leaky ReLU with slope 0.01.

Widths are an :class:`Arch`, read from a checkpoint's shapes, so the same code builds SCHP's ResNet-101 and the small
networks of the tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

PSP_SIZES = (1, 2, 3, 6)


@dataclasses.dataclass(frozen=True)
class Arch:
    """Widths and depths of an AugmentCE2P network; the defaults are SCHP's ResNet-101 (``resnet101()``)."""

    num_classes: int = 20
    layers: tuple[int, int, int, int] = (3, 4, 23, 3)
    stem: tuple[int, int, int] = (64, 64, 128)
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)  # bottleneck widths; stage outputs are 4x
    psp: int = 512
    decoder: tuple[int, int, int] = (256, 48, 256)  # decoder conv1, conv2, conv3 widths
    edge: int = 256  # edge branch's feature width (its three maps are concatenated for the fusion head)
    edge_classes: int = 2
    fusion: int = 256

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Arch:
        kw = {f.name: (tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name]) for f in dataclasses.fields(cls)}
        return cls(**kw)


def torch_key_to_path(key: str) -> tuple[str, ...]:
    """SCHP state-dict key -> Flax module path and torch leaf: ``a.0.b.weight`` -> ``('a_0', 'b', 'weight')``."""
    out: list[str] = []
    for tok in key.split("."):
        if tok.isdigit() and out:
            out[-1] = f"{out[-1]}_{tok}"
        else:
            out.append(tok)
    return tuple(out)


class ABN(nn.Module):
    """SCHP's ``InPlaceABNSync`` at inference: ``(x - mean) / sqrt(var + eps) * (|weight| + eps) + bias``, then an
    optional leaky ReLU (its CPU kernel's forward). Statistics and arithmetic in float32 whatever the input dtype."""

    activation: str = "leaky_relu"  # or 'none'
    slope: float = 0.01
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        weight = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)).value
        var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32)).value
        mul = jax.lax.rsqrt(var + self.eps) * (jnp.abs(weight) + self.eps)
        y = (x.astype(jnp.float32) - mean) * mul + bias
        if self.activation == "leaky_relu":
            y = jnp.where(y >= 0, y, y * self.slope)
        elif self.activation != "none":
            raise ValueError(f"ABN activation must be 'leaky_relu' or 'none', got {self.activation!r}")
        return y.astype(x.dtype)


class _Convs:
    """Conv factory shared by the modules: dtype and precision of the computation."""

    def __init__(self, dtype: Any, precision: Any):
        self.dtype, self.precision = dtype, precision

    def __call__(
        self,
        features: int,
        k: int,
        name: str,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = False,
        padding: int | None = None,
    ) -> nn.Conv:
        p = (k // 2) * dilation if padding is None else padding
        return nn.Conv(
            features,
            (k, k),
            strides=(stride, stride),
            padding=((p, p), (p, p)),
            kernel_dilation=(dilation, dilation),
            use_bias=bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            precision=self.precision,
            name=name,
        )


def _interp_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's align-corners bilinear source indices and weights along one axis (float32, as its CPU kernel)."""
    if n_in == n_out:
        idx = np.arange(n_out)
        return idx, idx, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
    ratio = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0.0)
    src = (ratio * np.arange(n_out, dtype=np.float32)).astype(np.float32)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return i0, i1, (np.float32(1.0) - l1).astype(np.float32), l1


def resize_align_corners(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """``F.interpolate(mode='bilinear', align_corners=True)`` on NHWC: two-tap lerps along W, then H (no matmul, so
    no reduced-precision dot on accelerators)."""
    h, w = int(size[0]), int(size[1])
    dt = x.dtype
    x = x.astype(jnp.float32)
    if x.shape[2] != w:
        i0, i1, l0, l1 = _interp_axis(x.shape[2], w)
        x = x[:, :, i0] * l0[None, None, :, None] + x[:, :, i1] * l1[None, None, :, None]
    if x.shape[1] != h:
        i0, i1, l0, l1 = _interp_axis(x.shape[1], h)
        x = x[:, i0] * l0[None, :, None, None] + x[:, i1] * l1[None, :, None, None]
    return x.astype(dt)


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """``nn.AdaptiveAvgPool2d(size)`` on NHWC: bin ``i`` covers ``[floor(i n / s), ceil((i + 1) n / s))``."""
    n_h, n_w = x.shape[1], x.shape[2]
    if n_h % size == 0 and n_w % size == 0:  # equal bins (SCHP's 30x30 map): one reshaped mean
        b, _, _, c = x.shape
        xr = x.astype(jnp.float32).reshape(b, size, n_h // size, size, n_w // size, c)
        return xr.mean(axis=(2, 4)).astype(x.dtype)

    def bins(n: int) -> list[tuple[int, int]]:
        return [((i * n) // size, -((-(i + 1) * n) // size)) for i in range(size)]

    xf = x.astype(jnp.float32)
    rows = []
    for y0, y1 in bins(n_h):
        rows.append(jnp.stack([xf[:, y0:y1, x0:x1].mean(axis=(1, 2)) for x0, x1 in bins(n_w)], axis=1))
    return jnp.stack(rows, axis=1).astype(x.dtype)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = _Convs(self.dtype, self.precision)
        out = nn.relu(ABN("none", name="bn1")(conv(self.planes, 1, "conv1")(x)))
        out = conv(self.planes, 3, "conv2", stride=self.stride, dilation=self.dilation)(out)
        out = nn.relu(ABN("none", name="bn2")(out))
        out = ABN("none", name="bn3")(conv(self.planes * 4, 1, "conv3")(out))
        if self.downsample:
            x = ABN("none", name="downsample_1")(conv(self.planes * 4, 1, "downsample_0", stride=self.stride)(x))
        return nn.relu(out + x)


class PSPModule(nn.Module):
    out_features: int
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, feats: jax.Array) -> jax.Array:
        conv = _Convs(self.dtype, self.precision)
        h, w = feats.shape[1:3]
        priors = []
        for k, s in enumerate(PSP_SIZES):
            y = conv(self.out_features, 1, f"stages_{k}_1")(adaptive_avg_pool(feats, s))
            priors.append(resize_align_corners(ABN(name=f"stages_{k}_2")(y), (h, w)))
        x = jnp.concatenate(priors + [feats], axis=-1)
        return ABN(name="bottleneck_1")(conv(self.out_features, 3, "bottleneck_0")(x))


class EdgeModule(nn.Module):
    mid: int
    out: int
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x1: jax.Array, x2: jax.Array, x3: jax.Array) -> tuple[jax.Array, jax.Array]:
        conv = _Convs(self.dtype, self.precision)
        h, w = x1.shape[1:3]
        conv4 = conv(self.out, 3, "conv4", bias=True)  # one conv shared by the three levels, as in SCHP
        feas, edges = [], []
        for k, x in enumerate((x1, x2, x3), start=1):
            fea = ABN(name=f"conv{k}_1")(conv(self.mid, 1, f"conv{k}_0")(x))
            edge = conv4(fea)
            feas.append(resize_align_corners(fea, (h, w)))
            edges.append(resize_align_corners(edge, (h, w)))
        edge = conv(self.out, 1, "conv5", bias=True)(jnp.concatenate(edges, axis=-1))
        return edge, jnp.concatenate(feas, axis=-1)


class DecoderModule(nn.Module):
    widths: tuple[int, int, int]
    num_classes: int
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, xt: jax.Array, xl: jax.Array) -> tuple[jax.Array, jax.Array]:
        conv = _Convs(self.dtype, self.precision)
        w1, w2, w3 = self.widths
        xt = ABN(name="conv1_1")(conv(w1, 1, "conv1_0")(xt))
        xt = resize_align_corners(xt, xl.shape[1:3])
        xl = ABN(name="conv2_1")(conv(w2, 1, "conv2_0")(xl))
        x = jnp.concatenate([xt, xl], axis=-1)
        x = ABN(name="conv3_1")(conv(w3, 1, "conv3_0")(x))
        x = ABN(name="conv3_3")(conv(w3, 1, "conv3_2")(x))
        return conv(self.num_classes, 1, "conv4", bias=True)(x), x


class AugmentCE2P(nn.Module):
    """SCHP's ``ResNet`` (networks/AugmentCE2P.py). Input: BGR, normalised, NHWC. Output: a dict of NHWC logits at a
    quarter of the input size: ``'fusion'`` (the parsing result SCHP's extractor uses), ``'parsing'`` (the decoder's)
    and ``'edge'``. Under ``jax.jit`` the outputs not used are never computed."""

    arch: Arch = Arch()
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        a = self.arch
        conv = _Convs(self.dtype, self.precision)
        x = x.astype(self.dtype)
        x = nn.relu(ABN("none", name="bn1")(conv(a.stem[0], 3, "conv1", stride=2)(x)))
        x = nn.relu(ABN("none", name="bn2")(conv(a.stem[1], 3, "conv2")(x)))
        x = nn.relu(ABN("none", name="bn3")(conv(a.stem[2], 3, "conv3")(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        feats = []
        inplanes = a.stem[2]
        for i, (n, planes) in enumerate(zip(a.layers, a.planes, strict=True)):
            stride, dilation = ((1, 1), (2, 1), (2, 1), (1, 2))[i]  # stage 4: stride 1, dilation 2
            for j in range(n):
                first = j == 0
                x = Bottleneck(
                    planes,
                    stride if first else 1,
                    dilation,
                    downsample=first and (stride != 1 or inplanes != planes * 4),
                    dtype=self.dtype,
                    precision=self.precision,
                    name=f"layer{i + 1}_{j}",
                )(x)
            inplanes = planes * 4
            feats.append(x)
        x2, x3, x4, x5 = feats
        ctx = PSPModule(a.psp, self.dtype, self.precision, name="context_encoding")(x5)
        parsing, parsing_fea = DecoderModule(a.decoder, a.num_classes, self.dtype, self.precision, name="decoder")(
            ctx, x2
        )
        edge, edge_fea = EdgeModule(a.edge, a.edge_classes, self.dtype, self.precision, name="edge")(x2, x3, x4)
        x = jnp.concatenate([parsing_fea, edge_fea], axis=-1)
        x = ABN(name="fushion_1")(conv(a.fusion, 1, "fushion_0")(x))  # fushion_2 is dropout: identity here
        fusion = conv(a.num_classes, 1, "fushion_3", bias=True)(x)
        return {
            "fusion": fusion.astype(jnp.float32),
            "parsing": parsing.astype(jnp.float32),
            "edge": edge.astype(jnp.float32),
        }

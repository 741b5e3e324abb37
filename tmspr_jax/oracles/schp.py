"""PyTorch oracle for SCHP's human parser (AugmentCE2P, networks/AugmentCE2P.py of Self-Correction-Human-Parsing)
and for its ``simple_extractor.py`` pipeline, with SCHP's state-dict key names.

SCHP's ``InPlaceABNSync`` is a compiled CUDA/C++ extension; :class:`InPlaceABNSync` here is plain PyTorch with the
forward of its CPU kernel at inference: ``(x - running_mean) * rsqrt(running_var + eps) * (|weight| + eps) + bias``,
then a leaky ReLU (slope 0.01) unless built with ``activation='none'``. Widths are keyword arguments so that the tests
build small networks with the same code; the defaults are SCHP's ``resnet101(num_classes=20)``.

The preprocessing and back-warp follow ``datasets/simple_extractor_dataset.py`` and ``utils/transforms.py`` (OpenCV
affine warps, bilinear, constant border). Used by the parity tests and ``tmspr_jax.tools.benchmark_parser``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BGR_MEAN = (0.406, 0.456, 0.485)
BGR_STD = (0.225, 0.224, 0.229)


class InPlaceABNSync(nn.Module):
    """Batch norm (running statistics) with the ``|weight| + eps`` scale of SCHP's kernel, then an activation."""

    def __init__(self, num_features: int, eps: float = 1e-5, activation: str = "leaky_relu", slope: float = 0.01):
        super().__init__()
        self.eps, self.activation, self.slope = eps, activation, slope
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        gamma = self.weight.abs() + self.eps
        mul = torch.rsqrt(self.running_var + self.eps) * gamma
        x = (x - self.running_mean.view(shape)) * mul.view(shape) + self.bias.view(shape)
        if self.activation == "leaky_relu":
            return F.leaky_relu(x, self.slope)
        if self.activation == "none":
            return x
        raise ValueError(f"unsupported activation {self.activation!r}")


BatchNorm2d = functools.partial(InPlaceABNSync, activation="none")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class PSPModule(nn.Module):
    def __init__(self, features: int, out_features: int = 512, sizes: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    nn.AdaptiveAvgPool2d((s, s)),
                    nn.Conv2d(features, out_features, 1, bias=False),
                    InPlaceABNSync(out_features),
                )
                for s in sizes
            ]
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(features + len(sizes) * out_features, out_features, kernel_size=3, padding=1, bias=False),
            InPlaceABNSync(out_features),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h, w = feats.shape[2:]
        priors = [
            F.interpolate(stage(feats), size=(h, w), mode="bilinear", align_corners=True) for stage in self.stages
        ] + [feats]
        return self.bottleneck(torch.cat(priors, 1))


class Edge_Module(nn.Module):
    def __init__(self, in_fea: Sequence[int] = (256, 512, 1024), mid_fea: int = 256, out_fea: int = 2):
        super().__init__()
        for k, c in enumerate(in_fea, start=1):
            setattr(self, f"conv{k}", nn.Sequential(nn.Conv2d(c, mid_fea, 1, bias=False), InPlaceABNSync(mid_fea)))
        self.conv4 = nn.Conv2d(mid_fea, out_fea, kernel_size=3, padding=1, bias=True)
        self.conv5 = nn.Conv2d(out_fea * 3, out_fea, kernel_size=1, bias=True)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x1.shape[2:]
        up = functools.partial(F.interpolate, size=(h, w), mode="bilinear", align_corners=True)
        f1, f2, f3 = self.conv1(x1), self.conv2(x2), self.conv3(x3)
        e1, e2, e3 = self.conv4(f1), self.conv4(f2), self.conv4(f3)
        edge = self.conv5(torch.cat([e1, up(e2), up(e3)], dim=1))
        return edge, torch.cat([f1, up(f2), up(f3)], dim=1)


class Decoder_Module(nn.Module):
    def __init__(self, num_classes: int, in_top: int = 512, in_low: int = 256, widths: Sequence[int] = (256, 48, 256)):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Sequential(nn.Conv2d(in_top, w1, 1, bias=False), InPlaceABNSync(w1))
        self.conv2 = nn.Sequential(nn.Conv2d(in_low, w2, 1, bias=False), InPlaceABNSync(w2))
        self.conv3 = nn.Sequential(
            nn.Conv2d(w1 + w2, w3, 1, bias=False),
            InPlaceABNSync(w3),
            nn.Conv2d(w3, w3, 1, bias=False),
            InPlaceABNSync(w3),
        )
        self.conv4 = nn.Conv2d(w3, num_classes, kernel_size=1, bias=True)

    def forward(self, xt: torch.Tensor, xl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = xl.shape[2:]
        xt = F.interpolate(self.conv1(xt), size=(h, w), mode="bilinear", align_corners=True)
        x = self.conv3(torch.cat([xt, self.conv2(xl)], dim=1))
        return self.conv4(x), x


class ResNet(nn.Module):
    """SCHP's AugmentCE2P ``ResNet``; forward returns ``[[parsing, fusion], [edge]]`` like SCHP's."""

    def __init__(
        self,
        num_classes: int = 20,
        layers: Sequence[int] = (3, 4, 23, 3),
        stem: Sequence[int] = (64, 64, 128),
        planes: Sequence[int] = (64, 128, 256, 512),
        psp: int = 512,
        decoder: Sequence[int] = (256, 48, 256),
        edge: int = 256,
        edge_classes: int = 2,
        fusion: int = 256,
    ):
        super().__init__()
        self.conv1 = conv3x3(3, stem[0], stride=2)
        self.bn1 = BatchNorm2d(stem[0])
        self.conv2 = conv3x3(stem[0], stem[1])
        self.bn2 = BatchNorm2d(stem[1])
        self.conv3 = conv3x3(stem[1], stem[2])
        self.bn3 = BatchNorm2d(stem[2])
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = stem[2]
        self.layer1 = self._make_layer(planes[0], layers[0])
        self.layer2 = self._make_layer(planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(planes[3], layers[3], stride=1, dilation=2)
        self.context_encoding = PSPModule(planes[3] * 4, psp)
        self.edge = Edge_Module((planes[0] * 4, planes[1] * 4, planes[2] * 4), edge, edge_classes)
        self.decoder = Decoder_Module(num_classes, psp, planes[0] * 4, decoder)
        self.fushion = nn.Sequential(
            nn.Conv2d(decoder[2] + 3 * edge, fusion, kernel_size=1, bias=False),
            InPlaceABNSync(fusion),
            nn.Dropout2d(0.1),
            nn.Conv2d(fusion, num_classes, kernel_size=1, bias=True),
        )

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False), BatchNorm2d(planes * 4)
            )
        layers = [Bottleneck(self.inplanes, planes, stride, dilation=dilation, downsample=downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        x2 = self.layer1(x)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        x5 = self.layer4(x4)
        parsing_result, parsing_fea = self.decoder(self.context_encoding(x5), x2)
        edge_result, edge_fea = self.edge(x2, x3, x4)
        fusion_result = self.fushion(torch.cat([parsing_fea, edge_fea], dim=1))
        return [[parsing_result, fusion_result], [edge_result]]


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fills every parameter and statistic with random values of sensible scale (negative batch-norm weights
    included, so the ``|weight|`` of SCHP's kernel matters). For tests and benchmarks without the real weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
            elif isinstance(mod, InPlaceABNSync):
                n = mod.weight.numel()
                sign = torch.where(torch.rand(n, generator=g) < 0.3, -1.0, 1.0)
                mod.weight.copy_(sign * (0.5 + torch.rand(n, generator=g)))
                mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


# ------------------------------------------------------------------- simple_extractor.py's pipeline, one image


def _get_3rd_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    direct = a - b
    return b + np.array([-direct[1], direct[0]], dtype=np.float32)


def get_affine_transform(
    center: np.ndarray, scale: np.ndarray, output_size: Sequence[int], inv: bool = False
) -> np.ndarray:
    """utils/transforms.py ``get_affine_transform`` with rotation 0 and no shift."""
    import cv2

    src_w = scale[0]
    dst_w, dst_h = output_size[1], output_size[0]
    src_dir = np.array([0, src_w * -0.5], np.float32)
    dst_dir = np.array([0, (dst_w - 1) * -0.5], np.float32)
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0, :] = center
    src[1, :] = center + src_dir
    dst[0, :] = [(dst_w - 1) * 0.5, (dst_h - 1) * 0.5]
    dst[1, :] = np.array([(dst_w - 1) * 0.5, (dst_h - 1) * 0.5]) + dst_dir
    src[2:, :] = _get_3rd_point(src[0, :], src[1, :])
    dst[2:, :] = _get_3rd_point(dst[0, :], dst[1, :])
    return (
        cv2.getAffineTransform(np.float32(dst), np.float32(src))
        if inv
        else cv2.getAffineTransform(np.float32(src), np.float32(dst))
    )


def whole_image_box(h: int, w: int, input_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """SimpleFolderDataset's ``_box2cs([0, 0, w - 1, h - 1])``: centre and aspect-corrected scale."""
    aspect_ratio = input_size[1] * 1.0 / input_size[0]
    bw, bh = w - 1, h - 1
    center = np.zeros(2, dtype=np.float32)
    center[0], center[1] = bw * 0.5, bh * 0.5
    if bw > aspect_ratio * bh:
        bh = bw * 1.0 / aspect_ratio
    elif bw < aspect_ratio * bh:
        bw = bh * aspect_ratio
    return center, np.array([bw, bh], dtype=np.float32)


def extract(model: ResNet, img_bgr: np.ndarray, input_size: Sequence[int] = (473, 473)) -> np.ndarray:
    """simple_extractor.py for one image (``cv2.imread`` BGR ``uint8``): the fusion logits ``[h, w, C]`` float32."""
    import cv2

    h, w = img_bgr.shape[:2]
    center, scale = whole_image_box(h, w, input_size)
    trans = get_affine_transform(center, scale, input_size)
    warped = cv2.warpAffine(
        img_bgr,
        trans,
        (int(input_size[1]), int(input_size[0])),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    x = torch.from_numpy(warped).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(BGR_MEAN).view(3, 1, 1)) / torch.tensor(BGR_STD).view(3, 1, 1)
    with torch.no_grad():
        out = model(x[None])[0][-1][0]
        up = F.interpolate(out[None], size=tuple(input_size), mode="bilinear", align_corners=True)[0]
    return transform_logits(up.permute(1, 2, 0).numpy(), center, scale, w, h, input_size)


def transform_logits(
    logits: np.ndarray, center: np.ndarray, scale: np.ndarray, width: int, height: int, input_size: Sequence[int]
) -> np.ndarray:
    """utils/transforms.py ``transform_logits``: each channel warped back to the image by the inverse affine."""
    import cv2

    trans = get_affine_transform(center, scale, input_size, inv=True)
    chans = [
        cv2.warpAffine(
            logits[:, :, i],
            trans,
            (int(width), int(height)),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0,),
        )
        for i in range(logits.shape[2])
    ]
    return np.stack(chans, axis=2)

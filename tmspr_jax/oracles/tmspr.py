"""PyTorch oracle: our own plain implementation of the reference T-MSPR forward (docs/reference.md §2-§8), with the
reference's state-dict key names, used by the parity tests and the comparison tool.

It holds only the modules the reference actually uses; ``convert_weights.tmspr.strip_unused`` drops the others from a
real reference checkpoint so that it loads strictly. ``torch`` is an optional dependency: the oracles import it, the
library below them does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tmspr_jax.models.vit import backbone, drop_path_rates, patch_grid


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * mask


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5  # the reference: qk_scale or head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, stride: Sequence[int], dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=tuple(stride))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, gh*gw, D], row-major


class TransReIDBase(nn.Module):
    """The backbone in JPM mode: blocks 0..depth-2, raw residual stream out (no final norm)."""

    def __init__(
        self,
        img_size,
        patch,
        stride,
        dim,
        depth,
        num_heads,
        mlp_ratio,
        drop_path,
        num_cameras,
        num_views,
        sie_coe,
        qkv_bias=True,
        qk_scale=None,
    ):
        super().__init__()
        gh, gw = patch_grid(img_size, patch, stride)
        self.cam_num, self.view_num, self.sie_coe = num_cameras, num_views, sie_coe
        self.patch_embed = PatchEmbed(patch, stride, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + gh * gw, dim))
        if num_cameras > 1 and num_views > 1:
            self.sie_embed = nn.Parameter(torch.zeros(num_cameras * num_views, 1, dim))
        elif num_cameras > 1:
            self.sie_embed = nn.Parameter(torch.zeros(num_cameras, 1, dim))
        elif num_views > 1:
            self.sie_embed = nn.Parameter(torch.zeros(num_views, 1, dim))
        dpr = drop_path_rates(drop_path, depth)
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, dpr[i], qkv_bias, qk_scale) for i in range(depth - 1)]
        )

    def forward(self, x, cam_label, view_label=None):
        b = x.shape[0]
        x = torch.cat((self.cls_token.expand(b, -1, -1), self.patch_embed(x)), dim=1)
        if view_label is None:
            view_label = torch.zeros_like(cam_label)
        has_sie = hasattr(self, "sie_embed")
        if has_sie and self.cam_num > 0 and self.view_num > 0:
            x = x + self.pos_embed + self.sie_coe * self.sie_embed[cam_label * self.view_num + view_label]
        elif has_sie and self.cam_num > 0:
            x = x + self.pos_embed + self.sie_coe * self.sie_embed[cam_label]
        elif has_sie and self.view_num > 0:
            x = x + self.pos_embed + self.sie_coe * self.sie_embed[view_label]
        else:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x


def _shuffle_unit(features, shift: int, group: int, begin: int = 1):
    b, d = features.size(0), features.size(-1)
    x = torch.cat([features[:, begin - 1 + shift :], features[:, begin : begin - 1 + shift]], dim=1)
    if x.size(1) % group:
        x = torch.cat([x, x[:, -2:-1, :]], dim=1)
    x = x.view(b, group, -1, d)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, d)


class TorchTMSPR(nn.Module):
    """The reference ``build_transformer_local`` forward, written plainly (four separate view passes).

    ``forward(x1, x2, x3, x4, cam_label)``: in training mode returns ``(scores[15], feats[18])``; in eval mode the
    test feature (neck_feat 'before': ``[B, 10*D]``, 'after': ``[B, 5*D]``), computed from the full graph as the
    reference does.
    """

    def __init__(
        self,
        num_classes: int,
        img_size=(256, 128),
        num_cameras: int = 0,
        num_views: int = 0,
        patch_size: int = 16,
        stride=(11, 11),
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        sie_coe: float = 3.0,
        re_arrange: bool = True,
        shift_num: int = 5,
        shuffle_groups: int = 2,
        divide_length: int = 6,
        neck_feat: str = "before",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
    ):
        super().__init__()
        d = embed_dim
        self.grid = patch_grid(img_size, patch_size, stride)
        self.embed_dim = d
        self.rearrange, self.shift_num, self.shuffle_groups = re_arrange, shift_num, shuffle_groups
        self.divide_length, self.neck_feat = divide_length, neck_feat
        self.base = TransReIDBase(
            img_size,
            patch_size,
            stride,
            d,
            depth,
            num_heads,
            mlp_ratio,
            drop_path,
            num_cameras,
            num_views,
            sie_coe,
            qkv_bias,
            qk_scale,
        )
        last = drop_path_rates(drop_path, depth)[-1]
        head = lambda: Block(d, num_heads, mlp_ratio, last, qkv_bias, qk_scale)
        self.b1 = nn.Sequential(head(), nn.LayerNorm(d, eps=1e-6))
        self.b2 = nn.Sequential(head(), nn.LayerNorm(d, eps=1e-6))
        self.linear_layer = nn.Linear(d, 6, bias=False)
        for name in (
            "classifier",
            "classifier_occ1",
            "classifier_occ2",
            "classifier_occ3",
            "classifier_1",
            "classifier_2",
            "classifier_3",
            "classifier_4",
            "classifier_5",
            "classifier_0",
            "classifier_cp",
        ):
            setattr(self, name, nn.Linear(d, num_classes, bias=False))
        for name in (
            "bottleneck",
            "bottleneck_occ1",
            "bottleneck_occ2",
            "bottleneck_occ3",
            "bottleneck_1",
            "bottleneck_2",
            "bottleneck_3",
            "bottleneck_4",
            "bottleneck_cp",
            "bottleneck_bp0",
            "bottleneck_bp1",
            "bottleneck_bp2",
            "bottleneck_bp3",
            "bottleneck_bp4",
            "bottleneck_bp5",
        ):
            bn = nn.BatchNorm1d(d)
            bn.bias.requires_grad_(False)  # the reference freezes the BNNeck bias at 0
            setattr(self, name, bn)

    def forward(self, x1, x2, x3, x4, cam_label):
        features = self.base(x1, cam_label)
        global_feat = self.b1(features)[:, 0]
        global_feat2 = self.b1(self.base(x2, cam_label))[:, 0]
        global_feat3 = self.b1(self.base(x3, cam_label))[:, 0]
        global_feat4 = self.b1(self.base(x4, cam_label))[:, 0]

        # JPM
        feature_length = features.size(1) - 1
        patch_length = feature_length // self.divide_length
        token = features[:, 0:1]
        x = _shuffle_unit(features, self.shift_num, self.shuffle_groups) if self.rearrange else features[:, 1:]
        local_feats = []
        for k in range(4):
            seq = torch.cat((token, x[:, patch_length * k : patch_length * (k + 1)]), dim=1)
            local_feats.append(self.b2(seq)[:, 0])

        feat = self.bottleneck(global_feat)
        feat2 = self.bottleneck_occ1(global_feat2)
        feat3 = self.bottleneck_occ2(global_feat3)
        feat4 = self.bottleneck_occ3(global_feat4)
        local_bn = [
            self.bottleneck_1(local_feats[0]),
            self.bottleneck_2(local_feats[1]),
            self.bottleneck_3(local_feats[2]),
            self.bottleneck_4(local_feats[3]),
        ]

        # HSPM
        b = features.size(0)
        gh, gw = self.grid
        patches = features[:, 1:].reshape(b, gh, gw, self.embed_dim)
        output_features = self.linear_layer(patches)  # [B, gh, gw, 6]
        mn = output_features.amin(dim=(0, 1, 2), keepdim=True)
        mx = output_features.amax(dim=(0, 1, 2), keepdim=True)
        attn = F.softmax((output_features - mn) / (mx - mn + 1e-8), dim=-1)
        mask_fore = attn[..., 1:].sum(dim=-1, keepdim=True)
        part_feats = []
        for i in range(6):
            w = mask_fore if i == 0 else attn[..., i : i + 1]
            z = (w * patches).reshape(b, gh * gw, self.embed_dim)
            part_feats.append(self.b2(torch.cat((token, z), dim=1))[:, 0])

        # visibility from the raw logits
        parsing = output_features.argmax(dim=-1)
        vis = torch.stack([(parsing == i).flatten(1).any(dim=1) for i in range(1, 6)], dim=1).float().unsqueeze(-1)

        # HSRM
        n = F.normalize(global_feat, dim=1)
        sim = n @ n.t()
        sim.fill_diagonal_(0)
        nn_idx = sim.detach().argmax(dim=1)
        channel_features = torch.stack(part_feats[1:], dim=1)  # [B, 5, D]
        complemented = channel_features * vis + channel_features[nn_idx] * (1 - vis)
        feat_c1 = self.b2(complemented)[:, 0]

        bp_feat_cp = self.bottleneck_cp(feat_c1)
        bps = [getattr(self, f"bottleneck_bp{i}")(part_feats[i]) for i in range(6)]

        if self.training:
            scores = [
                self.classifier(feat),
                self.classifier_occ1(feat2),
                self.classifier_occ2(feat3),
                self.classifier_occ3(feat4),
                self.classifier_1(local_bn[0]),
                self.classifier_2(local_bn[1]),
                self.classifier_3(local_bn[2]),
                self.classifier_4(local_bn[3]),
                self.classifier_cp(bp_feat_cp),
                self.classifier_0(bps[0]),
                self.classifier_1(bps[1]),
                self.classifier_2(bps[2]),
                self.classifier_3(bps[3]),
                self.classifier_4(bps[4]),
                self.classifier_5(bps[5]),
            ]
            feats = [
                global_feat,
                output_features,
                channel_features,
                complemented,
                global_feat2,
                global_feat3,
                global_feat4,
                *local_feats,
                feat_c1,
                *part_feats,
            ]
            return scores, feats
        if self.neck_feat == "after":
            return torch.cat([feat] + [lb / 4 for lb in local_bn], dim=1)
        return torch.cat([global_feat, *local_feats, *part_feats[1:]], dim=1)

    def extract(self, images, cam_label):
        """Eval feature as the reference's test path: the same image passed as all four views."""
        return self.forward(images, images, images, images, cam_label)


class TorchTransReID(nn.Module):
    """TransReID's JPM model (``build_transformer_local``), the baseline T-MSPR builds on, written plainly.

    Its state dict is T-MSPR's without the additions: ``base``, ``b1``, ``b2``, ``classifier`` and ``classifier_1..4``,
    ``bottleneck`` and ``bottleneck_1..4``. ``forward(x, cam_label)``: in training mode ``(scores[5], feats[5])``
    (global, then the four JPM groups); in eval mode the test feature: 'before' ``[g, jpm_1/4, .., jpm_4/4]``,
    'after' ``[bn(g), bn_k(jpm_k)/4]``.
    """

    def __init__(
        self,
        num_classes: int,
        img_size=(256, 128),
        num_cameras: int = 0,
        num_views: int = 0,
        patch_size: int = 16,
        stride=(11, 11),
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        sie_coe: float = 3.0,
        re_arrange: bool = True,
        shift_num: int = 5,
        shuffle_groups: int = 2,
        divide_length: int = 4,
        neck_feat: str = "before",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
    ):
        super().__init__()
        d = embed_dim
        self.rearrange, self.shift_num, self.shuffle_groups = re_arrange, shift_num, shuffle_groups
        self.divide_length, self.neck_feat = divide_length, neck_feat
        self.base = TransReIDBase(
            img_size,
            patch_size,
            stride,
            d,
            depth,
            num_heads,
            mlp_ratio,
            drop_path,
            num_cameras,
            num_views,
            sie_coe,
            qkv_bias,
            qk_scale,
        )
        last = drop_path_rates(drop_path, depth)[-1]
        head = lambda: Block(d, num_heads, mlp_ratio, last, qkv_bias, qk_scale)
        self.b1 = nn.Sequential(head(), nn.LayerNorm(d, eps=1e-6))
        self.b2 = nn.Sequential(head(), nn.LayerNorm(d, eps=1e-6))
        for name in ("classifier", "classifier_1", "classifier_2", "classifier_3", "classifier_4"):
            setattr(self, name, nn.Linear(d, num_classes, bias=False))
        for name in ("bottleneck", "bottleneck_1", "bottleneck_2", "bottleneck_3", "bottleneck_4"):
            bn = nn.BatchNorm1d(d)
            bn.bias.requires_grad_(False)
            setattr(self, name, bn)

    def forward(self, x, cam_label):
        features = self.base(x, cam_label)
        global_feat = self.b1(features)[:, 0]
        patch_length = (features.size(1) - 1) // self.divide_length
        token = features[:, 0:1]
        x = _shuffle_unit(features, self.shift_num, self.shuffle_groups) if self.rearrange else features[:, 1:]
        local_feats = [
            self.b2(torch.cat((token, x[:, patch_length * k : patch_length * (k + 1)]), dim=1))[:, 0] for k in range(4)
        ]
        feat = self.bottleneck(global_feat)
        local_bn = [getattr(self, f"bottleneck_{k + 1}")(lf) for k, lf in enumerate(local_feats)]
        if self.training:
            scores = [self.classifier(feat)] + [
                getattr(self, f"classifier_{k + 1}")(lb) for k, lb in enumerate(local_bn)
            ]
            return scores, [global_feat, *local_feats]
        if self.neck_feat == "after":
            return torch.cat([feat] + [lb / 4 for lb in local_bn], dim=1)
        return torch.cat([global_feat] + [lf / 4 for lf in local_feats], dim=1)

    def extract(self, images, cam_label):
        return self.forward(images, cam_label)


def build_torch_model(
    model_cfg: Any, img_size: Sequence[int], num_classes: int, num_cameras: int
) -> TorchTMSPR | TorchTransReID:
    """The oracle for a ``config.model`` node, with the same geometry rules as ``tmspr_jax.models.build_model``:
    T-MSPR, or TransReID when the three additions are off (``multi_view``, ``perception``, ``recovery``)."""
    stride = model_cfg.stride
    stride = (int(stride), int(stride)) if isinstance(stride, int) else tuple(int(s) for s in stride)
    if len(stride) == 1:
        stride = stride * 2
    on = [bool(model_cfg.multi_view), bool(model_cfg.perception), bool(model_cfg.recovery)]
    if any(on) and not all(on):
        raise ValueError(
            "the PyTorch oracles are T-MSPR (every addition on) and TransReID (every addition off); "
            f"multi_view, perception, recovery = {on}"
        )
    cls = TorchTMSPR if all(on) else TorchTransReID
    spec = backbone(str(model_cfg.backbone))
    d = int(model_cfg.embed_dim)
    return cls(
        num_classes=int(num_classes),
        img_size=tuple(int(s) for s in img_size),
        num_cameras=int(num_cameras) if model_cfg.sie_camera else 0,
        num_views=1 if model_cfg.sie_view else 0,
        patch_size=int(model_cfg.patch_size),
        stride=stride,
        embed_dim=int(model_cfg.embed_dim),
        depth=int(model_cfg.depth),
        num_heads=int(model_cfg.num_heads),
        mlp_ratio=float(model_cfg.mlp_ratio),
        drop_path=float(model_cfg.drop_path),
        sie_coe=float(model_cfg.sie_coe),
        re_arrange=bool(model_cfg.re_arrange),
        shift_num=int(model_cfg.shift_num),
        shuffle_groups=int(model_cfg.shuffle_groups),
        divide_length=int(model_cfg.divide_length),
        neck_feat=str(model_cfg.neck_feat),
        qkv_bias=spec.qkv_bias,
        # the factory's qk_scale: 768 ** -0.5 for vit_small (embed_dim ** -0.5 at any width), else head_dim ** -0.5
        qk_scale=d**-0.5 if spec.width_scale else None,
    )


def state_dict_numpy(model: nn.Module) -> dict[str, Any]:
    """The model's state dict as NumPy arrays (for ``convert_weights.mapping``)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Load a dict of NumPy arrays strictly into ``model``."""
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)

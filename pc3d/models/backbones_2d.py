"""2D BEV backbones: `(B, C_in, H, W) -> (B, C_out, H / s, W / s)`.

`SECONDBackbone` (type `second`): SECOND / PointPillars multi-scale conv stages; each stage is
downsampled by its stride, upsampled back (transposed conv, or a strided conv for strides < 1) and
all stages are concatenated. With `residual: true` (type `resnet`) every stage is made of ResNet
basic blocks, like DSVT's `BaseBEVResBackbone`. `stride` (a `Fraction`) is the output's downsampling factor.
`project_first: true` (type `resnet`) gives the first block of every stage a 1x1 conv + BN shortcut even
when its stride is 1 and its width unchanged, as `BaseBEVResBackbone` always does (set by the DSVT
checkpoint converter; pc3d's default uses the identity there).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + identity / 1x1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, project: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.shortcut = nn.Identity()
        if project or stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SECONDBackbone(nn.Module):
    def __init__(self, in_channels: int, layer_nums: Sequence[int], layer_strides: Sequence[int],
                 num_filters: Sequence[int], upsample_strides: Sequence[float] = (),
                 num_upsample_filters: Sequence[int] = (), residual: bool = False, project_first: bool = False,
                 channels_last: bool = False):
        super().__init__()
        if project_first and not residual:
            raise ValueError("backbone_2d.project_first applies to type 'resnet' only")
        # channels_last: run the convolutions on an NHWC copy of the map (oneDNN's faster CPU layout, ~1.2x on
        # 3x3 convs); the output stays NHWC, so the head's convs run that way too. Same numbers up to rounding
        # (~1e-7); off by default so existing configs compute bit-for-bit what they did.
        self.channels_last = bool(channels_last)
        if not (len(layer_nums) == len(layer_strides) == len(num_filters)) or not layer_nums:
            raise ValueError("backbone_2d: layer_nums, layer_strides and num_filters need the same non-zero length, "
                             f"got {list(layer_nums)}, {list(layer_strides)}, {list(num_filters)}")
        if len(upsample_strides) != len(num_upsample_filters) or (
                upsample_strides and len(upsample_strides) != len(layer_nums)):
            raise ValueError("backbone_2d: upsample_strides / num_upsample_filters must be empty or one per stage, "
                             f"got {list(upsample_strides)}, {list(num_upsample_filters)}")
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        cin = in_channels
        cumulative = Fraction(1)
        scales = []
        for i, (num, stride, width) in enumerate(zip(layer_nums, layer_strides, num_filters)):
            if residual:
                layers = [BasicBlock(cin, width, stride, project_first)] + [BasicBlock(width, width) for _ in range(num)]
            else:
                layers = [_conv_bn_relu(cin, width, stride)] + [_conv_bn_relu(width, width) for _ in range(num)]
            self.blocks.append(nn.Sequential(*layers))
            cumulative *= int(stride)
            cin = width
            if upsample_strides:
                up = Fraction(upsample_strides[i]).limit_denominator(16)
                out = int(num_upsample_filters[i])
                if up >= 1:
                    k = int(up)
                    deblock = nn.ConvTranspose2d(width, out, k, stride=k, bias=False)
                else:
                    k = int(round(1 / up))
                    deblock = nn.Conv2d(width, out, k, stride=k, bias=False)
                self.deblocks.append(nn.Sequential(deblock, nn.BatchNorm2d(out, eps=1e-3, momentum=0.01),
                                                   nn.ReLU(inplace=True)))
                scales.append(cumulative / up)
        if scales and len(set(scales)) != 1:
            raise ValueError(f"backbone_2d: upsampled stages end at different strides {[float(s) for s in scales]}; "
                             "upsample_strides[i] must equal prod(layer_strides[:i+1]) / output stride")
        # A Fraction: upsampling past the input resolution (stride 1/2) is legal after a strided 3D backbone.
        self.stride = scales[0] if scales else cumulative
        self.out_channels = int(sum(num_upsample_filters)) if upsample_strides else int(num_filters[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        ups = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.deblocks:
                ups.append(self.deblocks[i](x))
        return torch.cat(ups, dim=1) if ups else x


class IdentityBEV(nn.Module):
    """No 2D backbone: the BEV map goes straight to the head."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.out_channels = in_channels
        self.stride = Fraction(1)

    def forward(self, x):
        return x


def build_backbone_2d(cfg: dict | None, in_channels: int) -> nn.Module:
    """`backbone_2d: {type: second | resnet | none, layer_nums, layer_strides, num_filters, upsample_strides,
    num_upsample_filters, project_first (resnet), channels_last}`."""
    cfg = dict(cfg or {"type": "none"})
    kind = cfg.pop("type", "second")
    if kind == "none":
        if cfg:
            raise ValueError(f"backbone_2d type 'none' takes no options, got {sorted(cfg)}")
        return IdentityBEV(in_channels)
    if kind in ("second", "resnet"):
        try:
            return SECONDBackbone(in_channels, residual=kind == "resnet", **cfg)
        except TypeError as err:
            raise ValueError(f"backbone_2d {kind!r}: {err}") from err
    raise ValueError(f"unknown backbone_2d type {kind!r} (second, resnet, none)")

"""Backbones in plain torch, registered by name. Every backbone maps NCHW images to (N, dim).

All are ONNX-exportable with static ops (no data-dependent control flow).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = fn
        return fn

    return deco


def create_backbone(name: str, **kwargs: object) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**kwargs)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet of basic blocks; `small_stem` is the 3x3 stem without max-pool for small images."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], stem_width: int, small_stem: bool) -> None:
        super().__init__()
        if small_stem:
            self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers: list[nn.Module] = []
        cin = stem_width
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: each block starts as identity.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


@register("resnet_tiny")
def resnet_tiny(small_stem: bool = True) -> nn.Module:
    """The CPU benchmark backbone: 3x3 stem to 32 channels, one basic block per stage, 256-d."""
    return ResNet((32, 64, 128, 256), (1, 1, 1, 1), stem_width=32, small_stem=small_stem)


@register("resnet18")
def resnet18(small_stem: bool = False, width: int = 64) -> nn.Module:
    return ResNet(tuple(width * m for m in (1, 2, 4, 8)), (2, 2, 2, 2), stem_width=width, small_stem=small_stem)

"""Backbones in plain torch, registered by name. Every backbone maps NCHW images to (N, dim).

Besides `forward(x) -> (N, dim)` every backbone has `forward_features(x) -> (N, dim, h, w)`,
the last feature map (patch tokens for a ViT), which the dense methods (dae, colorization,
infomax) decode or contrast. All are ONNX-exportable with static ops (no data-dependent
control flow). `timm:NAME` wraps any timm model when timm is installed (never required).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = fn
        return fn

    return deco


def _timm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def backbone_names() -> list[str]:
    return sorted(BACKBONES) + (["timm:NAME"] if _timm_available() else [])


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    if name.startswith("timm:"):
        return TimmBackbone(name[len("timm:"):], **kwargs)
    if name not in BACKBONES:
        hint = "" if _timm_available() else " (timm:NAME needs `pip install timm`)"
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(backbone_names())}{hint}")
    params = inspect.signature(BACKBONES[name]).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"backbone {name!r} has no option {', '.join(unknown)}; "
                         f"valid: {', '.join(params) or 'none'}")
    return BACKBONES[name](**kwargs)


def output_dim(backbone: nn.Module) -> int:
    """The embedding size of a backbone (its `dim` attribute)."""
    dim = getattr(backbone, "dim", None)
    if not isinstance(dim, int):
        raise ValueError(f"{type(backbone).__name__} is not a backbone: it has no integer `dim` attribute")
    return dim


def accepts_option(name: str, option: str) -> bool:
    """Whether the registered backbone `name` takes `option` (e.g. img_size for a ViT)."""
    return name in BACKBONES and option in inspect.signature(BACKBONES[name]).parameters


@torch.no_grad()
def feature_shape(backbone: nn.Module, size: int) -> tuple[int, int, int]:
    """(channels, h, w) of `forward_features` for size x size inputs (one dummy pass in eval mode)."""
    was_training = backbone.training
    backbone.eval()
    p = next(backbone.parameters())
    out = backbone.forward_features(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))  # type: ignore[operator]
    backbone.train(was_training)
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


# ---------------------------------------------------------------- ResNet

class BasicBlock(nn.Module):
    expansion = 1

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


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride, as in torchvision's ResNet v1.5), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet of basic or bottleneck blocks; `small_stem` is the 3x3 stem without max-pool for small images."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], stem_width: int, small_stem: bool,
                 block: type[BasicBlock] | type[Bottleneck] = BasicBlock) -> None:
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
                layers.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width * block.expansion
        self.stages = nn.Sequential(*layers)
        self.dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: each block starts as identity.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))


@register("resnet_tiny")
def resnet_tiny(small_stem: bool = True) -> nn.Module:
    """The CPU benchmark backbone: 3x3 stem to 32 channels, one basic block per stage, 256-d."""
    return ResNet((32, 64, 128, 256), (1, 1, 1, 1), stem_width=32, small_stem=small_stem)


@register("resnet18")
def resnet18(small_stem: bool = False, width: int = 64) -> nn.Module:
    return ResNet(tuple(width * m for m in (1, 2, 4, 8)), (2, 2, 2, 2), stem_width=width, small_stem=small_stem)


@register("resnet34")
def resnet34(small_stem: bool = False, width: int = 64) -> nn.Module:
    return ResNet(tuple(width * m for m in (1, 2, 4, 8)), (3, 4, 6, 3), stem_width=width, small_stem=small_stem)


@register("resnet50")
def resnet50(small_stem: bool = False, width: int = 64) -> nn.Module:
    return ResNet(tuple(width * m for m in (1, 2, 4, 8)), (3, 4, 6, 3), stem_width=width, small_stem=small_stem,
                  block=Bottleneck)


# ---------------------------------------------------------------- MobileNetV3 and EfficientNet

def _divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8, never below 90% of the request (the MobileNet rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _ConvFeatures(nn.Module):
    """A CNN whose `features` end in a feature map; the embedding is its global average."""

    features: nn.Sequential

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class SqueezeExcite(nn.Module):
    """Channel gates from the global mean (a static ReduceMean in ONNX, not an adaptive pool)."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU,
                 gate: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV3 / EfficientNet block: expand 1x1, depthwise kxk, optional SE, project 1x1."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expanded: int, se_channels: int,
                 act: type[nn.Module], se_act: type[nn.Module] = nn.ReLU,
                 se_gate: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn(cin, expanded, 1, act=act))
        layers.append(_conv_bn(expanded, expanded, k, stride, groups=expanded, act=act))
        if se_channels:
            layers.append(SqueezeExcite(expanded, se_channels, se_act, se_gate))
        layers.append(_conv_bn(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


_RE, _HS = nn.ReLU, nn.Hardswish
# kernel, expanded, out, squeeze-excite, activation, stride (Howard et al. 2019, tables 1 and 2)
_MNV3_SMALL = [(3, 16, 16, True, _RE, 2), (3, 72, 24, False, _RE, 2), (3, 88, 24, False, _RE, 1),
               (5, 96, 40, True, _HS, 2), (5, 240, 40, True, _HS, 1), (5, 240, 40, True, _HS, 1),
               (5, 120, 48, True, _HS, 1), (5, 144, 48, True, _HS, 1), (5, 288, 96, True, _HS, 2),
               (5, 576, 96, True, _HS, 1), (5, 576, 96, True, _HS, 1)]
_MNV3_LARGE = [(3, 16, 16, False, _RE, 1), (3, 64, 24, False, _RE, 2), (3, 72, 24, False, _RE, 1),
               (5, 72, 40, True, _RE, 2), (5, 120, 40, True, _RE, 1), (5, 120, 40, True, _RE, 1),
               (3, 240, 80, False, _HS, 2), (3, 200, 80, False, _HS, 1), (3, 184, 80, False, _HS, 1),
               (3, 184, 80, False, _HS, 1), (3, 480, 112, True, _HS, 1), (3, 672, 112, True, _HS, 1),
               (5, 672, 160, True, _HS, 2), (5, 960, 160, True, _HS, 1), (5, 960, 160, True, _HS, 1)]


class MobileNetV3(_ConvFeatures):
    """MobileNetV3 features up to the last 1x1 conv (576 / 960 channels), global mean pooled."""

    def __init__(self, config: list[tuple[int, int, int, bool, type[nn.Module], int]], last: int,
                 width_mult: float, small_stem: bool) -> None:
        super().__init__()
        cin = _divisible(16 * width_mult)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 1 if small_stem else 2, act=_HS)]
        for k, exp, out, se, act, stride in config:
            exp_c, out_c = _divisible(exp * width_mult), _divisible(out * width_mult)
            layers.append(InvertedResidual(cin, out_c, k, stride, exp_c, _divisible(exp_c // 4) if se else 0, act))
            cin = out_c
        self.dim = _divisible(last * width_mult)
        layers.append(_conv_bn(cin, self.dim, 1, act=_HS))
        self.features = nn.Sequential(*layers)
        _init_convnet(self)


def _init_convnet(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register("mobilenetv3_small")
def mobilenetv3_small(width_mult: float = 1.0, small_stem: bool = False) -> nn.Module:
    return MobileNetV3(_MNV3_SMALL, 576, width_mult, small_stem)


@register("mobilenetv3_large")
def mobilenetv3_large(width_mult: float = 1.0, small_stem: bool = False) -> nn.Module:
    return MobileNetV3(_MNV3_LARGE, 960, width_mult, small_stem)


# expand ratio, kernel, stride, out channels, repeats (Tan & Le 2019, table 1: B0)
_EFFNET_B0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


class EfficientNet(_ConvFeatures):
    """EfficientNet (MBConv with SE and SiLU, compound width/depth multipliers), no stochastic depth."""

    def __init__(self, width_mult: float, depth_mult: float, small_stem: bool) -> None:
        super().__init__()
        cin = _divisible(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 1 if small_stem else 2, act=nn.SiLU)]
        for expand, k, stride, out, repeats in _EFFNET_B0:
            out_c = _divisible(out * width_mult)
            for i in range(math.ceil(repeats * depth_mult)):
                layers.append(InvertedResidual(cin, out_c, k, stride if i == 0 else 1, cin * expand,
                                               max(1, cin // 4), nn.SiLU, nn.SiLU, nn.Sigmoid))
                cin = out_c
        self.dim = _divisible(1280 * max(1.0, width_mult))
        layers.append(_conv_bn(cin, self.dim, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        _init_convnet(self)


@register("efficientnet_b0")
def efficientnet_b0(width_mult: float = 1.0, depth_mult: float = 1.0, small_stem: bool = False) -> nn.Module:
    """EfficientNet-B0 by default; width_mult=0.5, depth_mult=0.5 gives a small CPU-friendly net."""
    return EfficientNet(width_mult, depth_mult, small_stem)


# ---------------------------------------------------------------- Vision Transformer

class Attention(nn.Module):
    """Multi-head self-attention written out (matmul + softmax): plain ONNX ops, no fused kernel."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, length, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT with a CLS token (its output is the embedding) and learned position embeddings for
    `img_size`; other sizes interpolate them (static for any one exported input size)."""

    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.dim = dim
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def _patch_pos(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.pos_embed[:, 1:]
        if (gh, gw) == (self.grid, self.grid):
            return pos
        pos = pos.reshape(1, self.grid, self.grid, self.dim).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(gh, gw), mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1).reshape(1, gh * gw, self.dim)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with position embeddings (N, L, dim) and the patch grid (gh, gw)."""
        t = self.patch_embed(x)
        gh, gw = t.shape[2], t.shape[3]
        return t.flatten(2).transpose(1, 2) + self._patch_pos(gh, gw), (gh, gw)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the CLS token, run the blocks: (N, 1 + L, dim). MAE passes only visible tokens."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, (gh, gw) = self.embed(x)
        out = self.encode(tokens)[:, 1:]
        return out.transpose(1, 2).reshape(x.shape[0], self.dim, gh, gw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.embed(x)
        return self.encode(tokens)[:, 0]


@register("vit_tiny")
def vit_tiny(patch_size: int = 16, img_size: int = 224, depth: int = 12) -> nn.Module:
    return ViT(img_size, patch_size, dim=192, depth=depth, heads=3)


@register("vit_small")
def vit_small(patch_size: int = 16, img_size: int = 224, depth: int = 12) -> nn.Module:
    return ViT(img_size, patch_size, dim=384, depth=depth, heads=6)


# ---------------------------------------------------------------- timm (optional)

class TimmBackbone(nn.Module):
    """`timm:NAME`: any timm model without its classifier; untrained unless pretrained=True."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__()
        try:
            import timm
        except ModuleNotFoundError as exc:
            raise ValueError(f"backbone timm:{name} needs timm (pip install timm)") from exc
        kwargs.setdefault("pretrained", False)
        self.model = timm.create_model(name, num_classes=0, **kwargs)
        self.dim = int(self.model.num_features)
        self.prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_features(x)
        if out.dim() == 3:  # tokens (N, prefix + L, C) of a transformer: a square grid of patches
            out = out[:, self.prefix_tokens:]
            side = math.isqrt(out.shape[1])
            out = out.transpose(1, 2).reshape(x.shape[0], out.shape[2], side, side)
        elif out.shape[1] != self.dim and out.shape[-1] == self.dim:  # NHWC models
            out = out.permute(0, 3, 1, 2)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

"""SSL methods: one file each, composed of a view generator, a backbone, a head and a loss.

A method is an `nn.Module` built as `Method(backbone, views, **options)`. Its
`training_step(batch, g)` takes a uint8 batch and returns the loss; `on_step_end(progress)`
is the hook for momentum/EMA updates. `input` says what the batch holds: "images" (N, C, H, W)
or "clips" (N, T, C, H, W) of `clip_length` frames, which the data module then provides.
`defaults` is the method's recipe, the one place its training settings live: optimiser, lr,
weight decay and optionally batch_size, warmup_fraction, crop_min_scale and view_scale (the
training views' size as a share of the input size, CNN backbones only), used unless the run sets
them; options such as the temperature are the class's keyword defaults.

Adding a method is one line in `METHODS` (name -> "module:Class"); modules are imported
only when their method is used.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from edgessl.train.views import ViewConfig

METHODS: dict[str, str] = {
    # contrastive
    "simclr": "edgessl.train.methods.simclr:SimCLR",
    "moco": "edgessl.train.methods.moco:MoCo",
    # redundancy reduction (no negatives, no momentum encoder)
    "vicreg": "edgessl.train.methods.vicreg:VICReg",
    "barlow": "edgessl.train.methods.barlow:BarlowTwins",
    # self-distillation
    "byol": "edgessl.train.methods.byol:BYOL",
    "dino": "edgessl.train.methods.dino:DINO",
    # autoencoding
    "mae": "edgessl.train.methods.mae:MAE",
    "dae": "edgessl.train.methods.dae:DAE",
    # pretext tasks
    "rotation": "edgessl.train.methods.rotation:Rotation",
    "colorization": "edgessl.train.methods.colorization:Colorization",
    # clustering
    "swav": "edgessl.train.methods.swav:SwAV",
    # mutual information
    "infomax": "edgessl.train.methods.infomax:InfoMax",
    # video (clips)
    "temporal": "edgessl.train.methods.temporal:Temporal",
    "cpc": "edgessl.train.methods.cpc:CPC",
    # knowledge distillation into a small student (`edgessl distill`)
    "distill": "edgessl.train.methods.distill:Distill",
}


class Method(nn.Module):
    input: ClassVar[Literal["images", "clips"]] = "images"
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 1.0, "weight_decay": 1e-5}
    clip_length: int = 1

    def __init__(self, backbone: nn.Module, views: ViewConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.view_cfg = views

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def on_step_end(self, progress: float) -> None:
        """Called after each optimiser step with training progress in [0, 1]."""

    def forward(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        # DDP synchronises gradients of what runs inside forward(): route the step through it.
        return self.training_step(images, g)


# ---------------------------------------------------------------- small shared parts

def mlp_head(dim: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def mlp(dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU blocks, then a linear output (MoCo v3 / BYOL projectors and predictors)."""
    mods: list[nn.Module] = []
    d = dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that receives no gradients: the EMA teacher / momentum encoder."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def momentum_at(base: float, progress: float) -> float:
    """EMA momentum rising from `base` to 1 on a cosine (BYOL, MoCo v3, DINO)."""
    return 1 - (1 - base) * (math.cos(math.pi * min(1.0, progress)) + 1) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student (parameters; buffers copied)."""
    t_params: list[torch.Tensor] = list(teacher.parameters())
    s_params: list[torch.Tensor] = list(student.parameters())
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
        tb.copy_(sb)


class ConvDecoder(nn.Module):
    """Feature map (N, C, h, w) -> (N, out, size, size): x2 upsampling + conv blocks (dae, colorization)."""

    def __init__(self, channels: int, h: int, size: int, out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, cur = channels, h
        while cur * 2 <= size:
            nxt = max(32, c // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, nxt, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
            c, cur = nxt, cur * 2
        layers.append(nn.Conv2d(c, out, 3, 1, 1))
        self.net = nn.Sequential(*layers)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if y.shape[-1] != self.size or y.shape[-2] != self.size:
            y = nn.functional.interpolate(y, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return y


# ---------------------------------------------------------------- the registry

def method_names() -> list[str]:
    return sorted(METHODS)


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(method_names())}")
    module, cls = METHODS[name].split(":")
    found: type[Method] = getattr(importlib.import_module(module), cls)
    return found


def method_options(name: str) -> dict[str, Any]:
    """The options a method takes and their defaults (besides backbone and views)."""
    params = list(inspect.signature(method_class(name).__init__).parameters.values())[3:]
    return {p.name: p.default for p in params if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY}


def create_method(name: str, backbone: nn.Module, views: ViewConfig, **kwargs: Any) -> Method:
    cls = method_class(name)
    valid = method_options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"method {name!r} has no option {', '.join(unknown)}; valid: "
                         + (", ".join(f"{k} (default {v!r})" for k, v in valid.items()) or "none"))
    return cls(backbone, views, **kwargs)

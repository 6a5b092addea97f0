"""SSL methods: one file each, composed of a view generator, a backbone, a head and a loss.

A method is an `nn.Module` whose `training_step(images)` takes a uint8 NCHW batch and
returns the loss; `on_step_end(progress)` is the hook for momentum/EMA updates.
"""

from __future__ import annotations

import torch
from torch import nn

from edgessl.train.views import ViewConfig


class Method(nn.Module):
    def __init__(self, backbone: nn.Module, views: ViewConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.view_cfg = views

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def on_step_end(self, progress: float) -> None:
        """Called after each optimiser step with training progress in [0, 1]."""


def mlp_head(dim: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def _registry() -> dict[str, type[Method]]:
    from edgessl.train.methods.simclr import SimCLR

    return {"simclr": SimCLR}


def method_names() -> list[str]:
    return sorted(_registry())


def create_method(name: str, backbone: nn.Module, views: ViewConfig, **kwargs: object) -> Method:
    methods = _registry()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(methods))}")
    return methods[name](backbone, views, **kwargs)

"""BYOL (Grill et al. 2020): an online network with a predictor regresses the projection of an
EMA target network on the other view; no negatives."""

from __future__ import annotations

import torch
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.losses import byol_loss
from edgessl.train.methods import Method, ema_update, frozen_copy, mlp, momentum_at
from edgessl.train.views import ViewConfig, ViewGenerator


class BYOL(Method):
    def __init__(self, backbone: nn.Module, views: ViewConfig, hidden_dim: int = 1024, out_dim: int = 256,
                 momentum: float = 0.99) -> None:
        super().__init__(backbone, views)
        self.views = ViewGenerator(views, n_views=2)
        self.projector = mlp(output_dim(backbone), hidden_dim, out_dim)
        self.predictor = mlp(out_dim, hidden_dim, out_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.momentum = momentum

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        x = torch.cat(self.views(images, g))
        p1, p2 = self.predictor(self.projector(self.backbone(x))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(x)).chunk(2)
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    def on_step_end(self, progress: float) -> None:
        m = momentum_at(self.momentum, progress)
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projector, self.projector, m)

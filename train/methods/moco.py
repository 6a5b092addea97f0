"""MoCo v3 (Chen, Xie, He 2021): a query encoder with a predictor against a momentum key
encoder, InfoNCE with the keys of the batch as negatives (no memory bank), symmetrised."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import gather, gather_no_grad
from edgessl.train.losses import infonce
from edgessl.train.methods import Method, ema_update, frozen_copy, mlp, momentum_at
from edgessl.train.views import ViewConfig, ViewGenerator


class MoCo(Method):
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 0.6, "weight_decay": 1e-6}

    def __init__(self, backbone: nn.Module, views: ViewConfig, temperature: float = 0.2,
                 hidden_dim: int = 1024, out_dim: int = 256, momentum: float = 0.99) -> None:
        super().__init__(backbone, views)
        self.views = ViewGenerator(views, n_views=2)
        self.projector = mlp(output_dim(backbone), hidden_dim, out_dim, layers=3, last_bn=True)
        self.predictor = mlp(out_dim, hidden_dim, out_dim, layers=2, last_bn=True)
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projector = frozen_copy(self.projector)
        self.temperature, self.momentum = temperature, momentum

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        x = torch.cat(self.views(images, g))
        q1, q2 = self.predictor(self.projector(self.backbone(x))).chunk(2)
        with torch.no_grad():
            k1, k2 = self.momentum_projector(self.momentum_backbone(x)).chunk(2)
        q1, q2, k1, k2 = gather(q1), gather(q2), gather_no_grad(k1), gather_no_grad(k2)
        return infonce(q1, k2, self.temperature) + infonce(q2, k1, self.temperature)

    def on_step_end(self, progress: float) -> None:
        m = momentum_at(self.momentum, progress)
        ema_update(self.momentum_backbone, self.backbone, m)
        ema_update(self.momentum_projector, self.projector, m)

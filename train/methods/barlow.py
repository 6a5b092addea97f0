"""Barlow Twins (Zbontar et al. 2021): two views, a projector MLP, the cross-correlation of the two
embeddings pushed to the identity. No negatives, no momentum encoder, no temperature."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import gather
from edgessl.train.losses import barlow_twins_loss
from edgessl.train.methods import Method, mlp
from edgessl.train.views import ViewConfig, ViewGenerator


class BarlowTwins(Method):
    # Not swept: LARS lr 0.3 per 256, batch 128 as SimCLR.
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-5, "batch_size": 128}

    def __init__(self, backbone: nn.Module, views: ViewConfig, hidden_dim: int = 2048, out_dim: int = 2048,
                 lambda_offdiag: float = 5e-3) -> None:
        super().__init__(backbone, views)
        self.views = ViewGenerator(views, n_views=2)
        self.head = mlp(output_dim(backbone), hidden_dim, out_dim, layers=2)
        self.lambda_offdiag = lambda_offdiag

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        v1, v2 = self.views(images, g)
        z1, z2 = self.head(self.backbone(torch.cat([v1, v2]))).chunk(2)
        # The cross-correlation is a batch statistic: over the global batch under DDP.
        return barlow_twins_loss(gather(z1), gather(z2), self.lambda_offdiag)

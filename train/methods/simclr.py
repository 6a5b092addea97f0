"""SimCLR (Chen et al. 2020): two augmented views, a projection MLP, NT-Xent."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import gather
from edgessl.train.losses import nt_xent
from edgessl.train.methods import Method, mlp_head
from edgessl.train.views import ViewConfig, ViewGenerator


class SimCLR(Method):
    # Batch 128 at LARS lr 0.6 per 256: the tuned value of the 20-minute CIFAR-10 benchmark (more
    # steps per minute beat bigger batches at short budgets on 2 cores).
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 0.6, "weight_decay": 1e-5, "batch_size": 128}

    def __init__(self, backbone: nn.Module, views: ViewConfig, temperature: float = 0.2,
                 hidden_dim: int = 1024, out_dim: int = 128) -> None:
        super().__init__(backbone, views)
        self.views = ViewGenerator(views, n_views=2)
        self.head = mlp_head(output_dim(backbone), hidden_dim, out_dim)
        self.temperature = temperature

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        v1, v2 = self.views(images, g)
        # One forward pass over both views: BatchNorm sees the whole 2N batch, and it is faster.
        z = self.head(self.backbone(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        # Negatives come from the global batch (all processes); a no-op in a single process.
        return nt_xent(gather(z1), gather(z2), self.temperature)

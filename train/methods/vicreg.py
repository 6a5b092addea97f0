"""VICReg (Bardes et al. 2022): two views, an expander MLP, variance-invariance-covariance loss.

No negatives, no momentum encoder, no temperature: the variance and covariance terms prevent
collapse, so it needs neither large batches nor a queue (suited to small CPU batches).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import gather
from edgessl.train.losses import vicreg_loss
from edgessl.train.methods import Method, mlp
from edgessl.train.views import ViewConfig, ViewGenerator


class VICReg(Method):
    # Not swept: LARS at the paper's base lr 0.2 per 256 scaled up for short budgets; batch 128 as SimCLR.
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-5, "batch_size": 128}

    def __init__(self, backbone: nn.Module, views: ViewConfig, hidden_dim: int = 2048, out_dim: int = 2048,
                 sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0) -> None:
        super().__init__(backbone, views)
        self.views = ViewGenerator(views, n_views=2)
        # The paper's expander: Linear-BN-ReLU blocks then a linear output (3 layers; 2 here, smaller, for CPUs).
        self.head = mlp(output_dim(backbone), hidden_dim, out_dim, layers=2)
        self.weights = (sim_weight, var_weight, cov_weight)

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        v1, v2 = self.views(images, g)
        z1, z2 = self.head(self.backbone(torch.cat([v1, v2]))).chunk(2)
        # Variance and covariance are batch statistics: over the global batch under DDP.
        return vicreg_loss(gather(z1), gather(z2), *self.weights)

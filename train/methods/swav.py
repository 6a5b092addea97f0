"""SwAV (Caron et al. 2020): online clustering. Codes of the global crops are computed with
Sinkhorn-Knopp (equal-sized clusters over the batch) and predicted from the other crops."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import all_reduce_sum
from edgessl.train.losses import sinkhorn_knopp, swav_loss
from edgessl.train.methods import Method, mlp
from edgessl.train.views import MultiCropViews, ViewConfig


class SwAV(Method):
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 0.6, "weight_decay": 1e-6}

    def __init__(self, backbone: nn.Module, views: ViewConfig, temperature: float = 0.1, epsilon: float = 0.05,
                 sinkhorn_iterations: int = 3, n_prototypes: int = 512, hidden_dim: int = 1024,
                 out_dim: int = 128, n_local: int = 2) -> None:
        super().__init__(backbone, views)
        self.views = MultiCropViews(views, n_global=2, n_local=n_local)
        self.projector = mlp(output_dim(backbone), hidden_dim, out_dim)
        self.prototypes = nn.Linear(out_dim, n_prototypes, bias=False)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():  # prototypes stay on the unit sphere
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        crops = self.views(images, g)
        parts = [torch.cat(crops[:2])] + ([torch.cat(crops[2:])] if len(crops) > 2 else [])
        scores = []
        for x in parts:
            s = self.prototypes(F.normalize(self.projector(self.backbone(x)), dim=1))
            scores += list(s.chunk(len(s) // len(images)))
        codes = [sinkhorn_knopp(s.detach(), self.epsilon, self.iterations, all_reduce_sum) for s in scores[:2]]
        return swav_loss(scores, codes, self.temperature)

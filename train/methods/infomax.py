"""Deep InfoMax (Hjelm et al. 2019): maximise mutual information between an image's global
vector and its local features (Jensen-Shannon estimator; other images' locals are the
negatives). As in AMDIM, global and local features come from two augmented views."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import gather
from edgessl.train.losses import infomax_jsd
from edgessl.train.methods import Method, mlp
from edgessl.train.views import ViewConfig, ViewGenerator


class InfoMax(Method):
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(self, backbone: nn.Module, views: ViewConfig, dim: int = 128, hidden_dim: int = 512,
                 cross_view: bool = True) -> None:
        super().__init__(backbone, views)
        self.views = ViewGenerator(views, n_views=2 if cross_view else 1)
        self.global_head = mlp(output_dim(backbone), hidden_dim, dim)
        self.local_head = nn.Sequential(nn.Conv2d(output_dim(backbone), hidden_dim, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(hidden_dim, dim, 1))
        self.scale = dim ** -0.5  # keeps the initial scores near 0 whatever `dim` is

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        views = self.views(images, g)
        fmap = self.backbone.forward_features(torch.cat(views))
        glob = self.global_head(fmap.mean(dim=(2, 3))) * self.scale
        local = self.local_head(fmap).flatten(2)  # (V*N, dim, P)
        if len(views) == 1:
            return infomax_jsd(gather(glob), gather(local))
        g1, g2 = glob.chunk(2)
        l1, l2 = local.chunk(2)
        return (infomax_jsd(gather(g1), gather(l2)) + infomax_jsd(gather(g2), gather(l1))) / 2

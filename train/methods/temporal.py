"""Time-contrastive learning on clips (Sermanet et al. 2018; Knights et al. 2021): frames close
in time within a clip are positives, frames of other clips are negatives."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import gather
from edgessl.train.losses import temporal_infonce
from edgessl.train.methods import Method, mlp_head
from edgessl.train.views import ViewConfig, ViewGenerator


class Temporal(Method):
    input: ClassVar[Literal["images", "clips"]] = "clips"

    def __init__(self, backbone: nn.Module, views: ViewConfig, clip_length: int = 4, window: int = 1,
                 temperature: float = 0.2, hidden_dim: int = 1024, out_dim: int = 128) -> None:
        super().__init__(backbone, views)
        if clip_length < 2 or not 1 <= window < clip_length:
            raise ValueError(f"temporal needs clip_length >= 2 and 1 <= window < clip_length, "
                             f"got {clip_length} and {window}")
        self.clip_length, self.window, self.temperature = clip_length, window, temperature
        self.views = ViewGenerator(views, n_views=1)  # each frame augmented on its own
        self.head = mlp_head(output_dim(backbone), hidden_dim, out_dim)

    def training_step(self, clips: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        n, t = clips.shape[:2]
        x = self.views(clips.flatten(0, 1), g)[0]  # (N*T, C, H, W), sample-major
        z = self.head(self.backbone(x)).view(n, t, -1)
        return temporal_infonce(gather(z), self.temperature, self.window)

"""Contrastive predictive coding (van den Oord et al. 2018) on clips: a GRU summarises the frame
embeddings seen so far and predicts the embeddings of the next `predict_steps` frames; InfoNCE
against the same step of the other clips."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import gather
from edgessl.train.losses import cpc_infonce
from edgessl.train.methods import Method
from edgessl.train.views import ViewConfig, ViewGenerator


class CPC(Method):
    input: ClassVar[Literal["images", "clips"]] = "clips"
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(self, backbone: nn.Module, views: ViewConfig, clip_length: int = 5, predict_steps: int = 2,
                 dim: int = 256, temperature: float = 0.1) -> None:
        super().__init__(backbone, views)
        if not 1 <= predict_steps < clip_length:
            raise ValueError(f"cpc needs 1 <= predict_steps < clip_length, got {predict_steps} and {clip_length}")
        self.clip_length, self.steps, self.temperature = clip_length, predict_steps, temperature
        self.views = ViewGenerator(views, n_views=1)
        self.project = nn.Linear(output_dim(backbone), dim)
        self.context = nn.GRU(dim, dim, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(dim, dim) for _ in range(predict_steps))

    def training_step(self, clips: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        n, t = clips.shape[:2]
        x = self.views(clips.flatten(0, 1), g)[0]
        z = self.project(self.backbone(x)).view(n, t, -1)
        c, _ = self.context(z.float())
        s = t - self.steps  # context positions that have all `steps` futures inside the clip
        preds = torch.stack([w(c[:, :s]) for w in self.predictors], dim=2)  # (N, S, K, D)
        futures = torch.stack([z[:, k + 1:k + 1 + s] for k in range(self.steps)], dim=2)
        preds, futures = F.normalize(preds, dim=-1), F.normalize(futures.float(), dim=-1)
        return cpc_infonce(gather(preds) / self.temperature, gather(futures))

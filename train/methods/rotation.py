"""RotNet (Gidaris et al. 2018): predict which of 0, 90, 180, 270 degrees an image was rotated by."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgessl.train import rng
from edgessl.train.backbones import output_dim
from edgessl.train.methods import Method, mlp_head
from edgessl.train.views import ViewConfig, ViewGenerator


def rotate(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate image i of (N, C, S, S) by quarter_turns[i] * 90 degrees counter-clockwise."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    all4 = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])  # (4, N, C, S, S)
    return all4[quarter_turns.to(x.device), torch.arange(x.shape[0], device=x.device)]


class Rotation(Method):
    def __init__(self, backbone: nn.Module, views: ViewConfig, hidden_dim: int = 512) -> None:
        super().__init__(backbone, views)
        self.views = ViewGenerator(views, n_views=2)
        self.head = mlp_head(output_dim(backbone), hidden_dim, 4)

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        views = self.views(images, g)
        turns = rng.randint(g, 4, len(images), len(views)).T.reshape(-1)  # per sample and view
        x = rotate(torch.cat(views), turns).contiguous(memory_format=torch.channels_last)
        return F.cross_entropy(self.head(self.backbone(x)).float(), turns.to(x.device))

"""Colorization (Zhang et al. 2016; Larsson et al. 2016): from the grayscale image, predict its
colour (the two chroma channels of YIQ) at every pixel."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from edgessl.train.backbones import feature_shape
from edgessl.train.methods import ConvDecoder, Method
from edgessl.train.views import ViewConfig, augment, normalize, to_float

_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def luma_chroma(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB 0..1 (N, 3, H, W) -> luma Y (N, 1, H, W) and chroma I, Q (N, 2, H, W)."""
    m = torch.tensor(_YIQ, device=rgb.device, dtype=rgb.dtype)
    yiq = torch.einsum("ij,njhw->nihw", m, rgb)
    return yiq[:, :1], yiq[:, 1:]


class Colorization(Method):
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}

    def __init__(self, backbone: nn.Module, views: ViewConfig) -> None:
        super().__init__(backbone, views)
        self.crop_cfg = replace(views, jitter_p=0.0, gray_p=0.0)  # the colours are the target
        c, h, _ = feature_shape(backbone, views.size)
        self.decoder = ConvDecoder(c, h, views.size, 2)

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        rgb = augment(to_float(images), self.crop_cfg, g)
        y, chroma = luma_chroma(rgb)
        # The backbone sees the gray image as three equal channels, normalised like any input.
        x = normalize(y.expand(-1, 3, -1, -1), self.view_cfg.mean, self.view_cfg.std)
        pred = self.decoder(self.backbone.forward_features(x.contiguous(memory_format=torch.channels_last)))
        return F.mse_loss(pred.float(), chroma.float() * 4)  # chroma x4: about unit scale

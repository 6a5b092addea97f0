"""Denoising / masked convolutional autoencoder for CNN backbones (Vincent et al. 2008; the
masked-patch corruption of context encoders and MAE): hide random patches and add noise, then
reconstruct the clean view from the backbone's feature map with a small upsampling decoder."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from edgessl.train import rng
from edgessl.train.backbones import feature_shape
from edgessl.train.methods import ConvDecoder, Method
from edgessl.train.views import ViewConfig, ViewGenerator


class DAE(Method):
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}

    def __init__(self, backbone: nn.Module, views: ViewConfig, mask_ratio: float = 0.5, mask_patch: int = 0,
                 noise_std: float = 0.2) -> None:
        super().__init__(backbone, views)
        self.views = ViewGenerator(views, n_views=1)
        self.mask_ratio, self.noise_std = mask_ratio, noise_std
        self.mask_patch = mask_patch or max(2, views.size // 8)
        c, h, _ = feature_shape(backbone, views.size)
        self.decoder = ConvDecoder(c, h, views.size, 3)

    def corrupt(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Zero (the mean colour, after normalisation) a random `mask_ratio` of the patches, add noise."""
        n, _, h, w = x.shape
        gh, gw = -(-h // self.mask_patch), -(-w // self.mask_patch)
        keep = (rng.rand(g, n, 1, gh, gw) >= self.mask_ratio).to(x.device, x.dtype)
        keep = F.interpolate(keep, scale_factor=self.mask_patch, mode="nearest")[:, :, :h, :w]
        noise = rng.randn(g, n, *x.shape[1:]).to(x.device, x.dtype) * self.noise_std
        return x * keep + noise

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        x = self.views(images, g)[0]
        recon = self.decoder(self.backbone.forward_features(self.corrupt(x, g).contiguous(
            memory_format=torch.channels_last)))
        return F.mse_loss(recon.float(), x.float())

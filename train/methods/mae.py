"""MAE (He et al. 2022) for the ViT backbones: encode a random 25% of the patches, decode all
patches with a small transformer from the visible ones plus mask tokens, and regress the
(per-patch normalised) pixels of the masked patches."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from edgessl.train import rng
from edgessl.train.backbones import TransformerBlock, ViT
from edgessl.train.losses import masked_mse
from edgessl.train.methods import Method
from edgessl.train.views import ViewConfig, ViewGenerator


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), patches in row-major order like the ViT's patch embedding."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


class MAE(Method):
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.05}

    def __init__(self, backbone: nn.Module, views: ViewConfig, mask_ratio: float = 0.75,
                 decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4,
                 norm_pix: bool = True) -> None:
        if not isinstance(backbone, ViT):
            raise ValueError(f"mae needs a ViT backbone (vit_tiny, vit_small), got {type(backbone).__name__}; "
                             "use dae for convolutional backbones")
        super().__init__(backbone, views)
        if views.size % backbone.patch_size:
            raise ValueError(f"image size {views.size} is not a multiple of the patch size {backbone.patch_size}")
        # MAE needs little augmentation: crops and flips, no colour changes.
        self.views = ViewGenerator(replace(views, jitter_p=0.0, gray_p=0.0), n_views=1)
        self.mask_ratio, self.norm_pix = mask_ratio, norm_pix
        self.patches = (views.size // backbone.patch_size) ** 2
        self.decoder_embed = nn.Linear(backbone.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + self.patches, decoder_dim))
        self.decoder_blocks = nn.ModuleList(TransformerBlock(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, backbone.patch_size ** 2 * 3)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        backbone = self.backbone
        assert isinstance(backbone, ViT)
        x = self.views(images, g)[0]
        tokens, _ = backbone.embed(x)
        n, length, d = tokens.shape
        keep = max(1, round(length * (1 - self.mask_ratio)))
        # A random subset per image: argsort of per-patch noise (the noise is per sample: DDP-invariant).
        order = rng.rand(g, n, length).to(x.device).argsort(dim=1)
        restore = order.argsort(dim=1)
        visible = torch.gather(tokens, 1, order[:, :keep, None].expand(-1, -1, d))
        latent = backbone.encode(visible)  # (N, 1 + keep, D)
        y = self.decoder_embed(latent)
        masked = self.mask_token.expand(n, length - keep, -1)
        patches = torch.cat([y[:, 1:], masked], dim=1)
        patches = torch.gather(patches, 1, restore[:, :, None].expand(-1, -1, y.shape[-1]))
        y = torch.cat([y[:, :1], patches], dim=1) + self.decoder_pos
        for blk in self.decoder_blocks:
            y = blk(y)
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:]
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        return masked_mse(pred, patchify(x.contiguous(), backbone.patch_size), mask, self.norm_pix)

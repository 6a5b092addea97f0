"""SimCLR (Chen et al. 2020): two augmented views, a projection MLP, NT-Xent.

`n_local` > 0 adds multi-crop (Caron et al. 2020, SwAV): that many small crops at half the
resolution, each paired with both large views by NT-Xent. A small crop has a quarter of a large
one's pixels, but on 2 CPU cores two of them made a step 1.5x slower and lost 0.65 points at
5 minutes (docs/benchmarks.md), so it is off by default.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import gather
from edgessl.train.losses import nt_xent
from edgessl.train.methods import Method, mlp_head
from edgessl.train.views import MultiCropViews, ViewConfig, ViewGenerator


class SimCLR(Method):
    # Batch 128 at LARS lr 0.6 per 256: the tuned value of the 20-minute CIFAR-10 benchmark (more
    # steps per minute beat bigger batches at short budgets on 2 cores). Views at 3/4 of the input
    # size (24 px for 32 px CIFAR-10): 1.7x the steps per minute and objects at the size whole
    # images show them (FixRes); +2.7 points 5-way 5-shot at 5 minutes on the AVX2 reference
    # (docs/benchmarks.md, "SimCLR views smaller than the input size"), +4.1 at 20 minutes.
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 0.6, "weight_decay": 1e-5, "batch_size": 128,
                                          "view_scale": 0.75}

    def __init__(self, backbone: nn.Module, views: ViewConfig, temperature: float = 0.2,
                 hidden_dim: int = 1024, out_dim: int = 128, n_local: int = 0) -> None:
        super().__init__(backbone, views)
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        self.views = ViewGenerator(views, n_views=2)
        self.local_views = MultiCropViews(views, n_global=0, n_local=n_local) if n_local else None
        self.head = mlp_head(output_dim(backbone), hidden_dim, out_dim)
        self.temperature = temperature

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        v1, v2 = self.views(images, g)
        # One forward pass over both views: BatchNorm sees the whole 2N batch, and it is faster.
        z = self.head(self.backbone(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        # Negatives come from the global batch (all processes); a no-op in a single process.
        z1, z2 = gather(z1), gather(z2)
        loss = nt_xent(z1, z2, self.temperature)
        if self.local_views is None:
            return loss
        # The small crops go through the backbone together (BatchNorm statistics per size); each is
        # paired with both large views, and every pair weighs the same.
        locals_ = self.head(self.backbone(torch.cat(self.local_views(images, g)))).chunk(self.local_views.n_local)
        pairs = [nt_xent(gather(zl), zg, self.temperature) for zl in locals_ for zg in (z1, z2)]
        return (loss + sum(pairs)) / (1 + len(pairs))

"""DINO (Caron et al. 2021): self-distillation with no labels. A student sees global and local
crops and matches the output distribution of an EMA teacher that sees the global crops; the
teacher's outputs are centred and sharpened, which keeps them from collapsing."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.distributed import mean_no_grad
from edgessl.train.losses import dino_loss, dino_teacher_probs
from edgessl.train.methods import Method, ema_update, frozen_copy, momentum_at
from edgessl.train.views import MultiCropViews, ViewConfig


class DINOHead(nn.Module):
    """3-layer MLP (BatchNorm + GELU, DINO's choice for ResNets) to an L2-normalised bottleneck,
    then scores against `out_dim` prototypes: a weight-normalised last layer whose norms are
    fixed to 1 (`norm_last_layer`, cosine scores) or learned."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, out_dim: int, use_bn: bool = True,
                 norm_last_layer: bool = False) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return nn.BatchNorm1d(hidden) if use_bn else nn.Identity()

        self.mlp = nn.Sequential(nn.Linear(dim, hidden), norm(), nn.GELU(), nn.Linear(hidden, hidden), norm(),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)
        self.gain = nn.Parameter(torch.ones(out_dim), requires_grad=not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.prototypes, dim=-1) * self.gain[:, None]
        return F.normalize(self.mlp(x), dim=-1) @ w.T


class DINO(Method):
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6}

    def __init__(self, backbone: nn.Module, views: ViewConfig, out_dim: int = 2048, hidden_dim: int = 1024,
                 bottleneck_dim: int = 256, student_temperature: float = 0.1,
                 teacher_temperature: float = 0.04, center_momentum: float = 0.9, momentum: float = 0.99,
                 n_local: int = 2, use_bn_in_head: bool = True, norm_last_layer: bool = False) -> None:
        super().__init__(backbone, views)
        self.views = MultiCropViews(views, n_global=2, n_local=n_local)
        self.head = DINOHead(output_dim(backbone), hidden_dim, bottleneck_dim, out_dim, use_bn_in_head,
                             norm_last_layer)
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.center_momentum, self.momentum = center_momentum, momentum

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        crops = self.views(images, g)
        glob, local = torch.cat(crops[:2]), crops[2:]
        # Crops of one size go through the backbone together (BatchNorm statistics per size).
        student = [self.head(self.backbone(glob))]
        if local:
            student.append(self.head(self.backbone(torch.cat(local))))
        s_views = [v for part in student for v in part.chunk(len(part) // len(images))]
        with torch.no_grad():
            t_logits = self.teacher_head(self.teacher_backbone(glob)).float()
            t_probs = dino_teacher_probs(t_logits, self.center, self.teacher_temperature).chunk(2)
            batch_center = mean_no_grad(t_logits.mean(dim=0, keepdim=True))
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
        return dino_loss(s_views, list(t_probs), self.student_temperature)

    def on_step_end(self, progress: float) -> None:
        m = momentum_at(self.momentum, progress)
        ema_update(self.teacher_backbone, self.backbone, m)
        ema_update(self.teacher_head, self.head, m)

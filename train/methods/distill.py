"""Knowledge distillation into a small student, as an SSL "method" with a frozen teacher.

The student learns to reproduce the teacher's embedding space on unlabeled images: a linear
projection of the student's embedding must point where the teacher's centred embedding points
(cosine loss), and the batch's similarity structure must match the teacher's (a KL term on
softmaxed pairwise similarities), so neighbourhoods, which few-shot classification relies on,
are kept. Being a method, it reuses the pretraining loop: data, augmentation, checkpoints,
exact resume, torchrun.

`init_from_teacher`: a student of the teacher's own architecture starts from the teacher's
weights (so nothing is lost to a short budget) and the run is a fine-tune towards the device:
`make demo` uses it, since 2 cores cannot afford both a bigger teacher and a from-scratch student.

Optional quantization-aware noise: in the last `qat_fraction` of training the student's
activations pass through 8-bit fake quantization (straight-through gradients), so it learns
to live with INT8 rounding before it is quantized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgessl.train.backbones import output_dim
from edgessl.train.methods import Method
from edgessl.train.views import ViewConfig, ViewGenerator

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU)


def load_teacher(path: str | Path) -> tuple[nn.Module, dict[str, Any], torch.Tensor | None]:
    """A frozen teacher from a local file: an edgessl checkpoint (weights_only) or a
    `torch.export`-ed program (.pt2, e.g. a DINOv2 backbone exported where its code lives).
    Returns (module, preprocess dict, centring vector or None)."""
    from edgessl.train.checkpoint import load_backbone, load_checkpoint

    path = Path(path)
    if path.suffix == ".pt2":
        program = torch.export.load(str(path))
        module = program.module()
        example = next(iter(program.example_inputs[0]), None) if program.example_inputs else None
        size = list(example.shape[-2:]) if example is not None else [224, 224]
        pre = {"input_size": size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        center = None
    else:
        ckpt = load_checkpoint(path)
        module, pre = load_backbone(ckpt), ckpt["preprocess"]
        center = ckpt.get("center")
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval(), pre, center


class _FakeQuant(nn.Module):
    """8-bit per-tensor fake quantization of an activation, range from the current batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.detach().amin().clamp(max=0), x.detach().amax().clamp(min=0)
        scale = float(((hi - lo) / 255).clamp(min=1e-8))
        zero = int(torch.round(-lo / scale).clamp(0, 255))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class Distill(Method):
    defaults = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05}

    def __init__(self, backbone: nn.Module, views: ViewConfig, teacher: str = "", relation_weight: float = 1.0,
                 relation_temperature: float = 0.1, qat_fraction: float = 0.0, init_from_teacher: bool = False) -> None:
        super().__init__(backbone, views)
        if not teacher:
            raise ValueError("distill needs a teacher: method option teacher=PATH (an edgessl checkpoint or .pt2)")
        if not 0.0 <= qat_fraction <= 1.0:
            raise ValueError(f"qat_fraction is a share of training in [0, 1], got {qat_fraction}")
        self.teacher, pre, center = load_teacher(teacher)
        self.teacher_size = tuple(pre["input_size"])
        with torch.no_grad():
            t_dim = self.teacher(torch.zeros(2, 3, *self.teacher_size)).shape[1]
        self.register_buffer("teacher_center", center.float() if center is not None else torch.zeros(t_dim))
        # Re-normalise student inputs into the teacher's mean/std (they may differ).
        self.register_buffer("t_mean", torch.tensor(pre["mean"]).view(1, 3, 1, 1))
        self.register_buffer("t_std", torch.tensor(pre["std"]).view(1, 3, 1, 1))
        self.register_buffer("s_mean", torch.tensor(views.mean).view(1, 3, 1, 1))
        self.register_buffer("s_std", torch.tensor(views.std).view(1, 3, 1, 1))
        self.views = ViewGenerator(views, n_views=1)
        self.project = nn.Linear(output_dim(backbone), t_dim)
        if init_from_teacher:
            self._start_from_teacher()
        self.relation_weight, self.relation_temperature = relation_weight, relation_temperature
        self.qat_fraction = qat_fraction
        self._qat_handles: list[Any] = []

    def _start_from_teacher(self) -> None:
        """Copy the teacher's weights into a student of the same architecture, and make the
        projection subtract the teacher's centre: the student starts where the teacher is, and
        distillation becomes a fine-tune towards INT8 (with qat_fraction) on the device's data."""
        t_state, s_state = self.teacher.state_dict(), self.backbone.state_dict()
        wrong = sorted(k for k in set(t_state) | set(s_state)
                       if k not in t_state or k not in s_state or t_state[k].shape != s_state[k].shape)
        if wrong:
            raise ValueError(f"init_from_teacher needs a student of the teacher's architecture; these weights "
                             f"differ: {', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}")
        self.backbone.load_state_dict(t_state)
        with torch.no_grad():
            if self.project.weight.shape[0] != self.project.weight.shape[1]:
                raise ValueError("init_from_teacher needs the student's embedding size to be the teacher's")
            self.project.weight.copy_(torch.eye(self.project.weight.shape[0]))
            self.project.bias.copy_(-self.teacher_center)

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()  # frozen: its BatchNorm statistics never change
        return self

    def _teacher_view(self, v: torch.Tensor) -> torch.Tensor:
        x = (v * self.s_std + self.s_mean - self.t_mean) / self.t_std
        if tuple(x.shape[-2:]) != self.teacher_size:
            x = F.interpolate(x, size=self.teacher_size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def training_step(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        (v,) = self.views(images, g)
        with torch.no_grad():
            t = F.normalize(self.teacher(self._teacher_view(v)).float() - self.teacher_center, dim=1)
        s = F.normalize(self.project(self.backbone(v)).float(), dim=1)
        loss = (1 - (s * t).sum(1)).mean()
        if self.relation_weight > 0 and len(s) > 1:
            eye = torch.eye(len(s), dtype=torch.bool, device=s.device)
            t_rel = (t @ t.T / self.relation_temperature).masked_fill(eye, float("-inf"))
            s_rel = (s @ s.T / self.relation_temperature).masked_fill(eye, float("-inf"))
            kl = F.kl_div(F.log_softmax(s_rel, 1).masked_fill(eye, 0), F.log_softmax(t_rel, 1).masked_fill(eye, 0),
                          log_target=True, reduction="none").masked_fill(eye, 0).sum(1).mean()
            loss = loss + self.relation_weight * kl
        return loss

    def on_step_end(self, progress: float) -> None:
        if self.qat_fraction > 0 and progress >= 1 - self.qat_fraction and not self._qat_handles:
            quant = _FakeQuant()
            for module in self.backbone.modules():
                if isinstance(module, ACTIVATIONS):
                    self._qat_handles.append(module.register_forward_hook(lambda m, i, o: quant(o)))

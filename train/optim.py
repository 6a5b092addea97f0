"""Optimisers and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay (and LARS adaptation) only on weights: norms and biases are excluded."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017), as used by SimCLR."""

    def __init__(self, params: list[dict], lr: float, momentum: float = 0.9, eta: float = 0.02) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, eta=eta, weight_decay=0.0, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    p_norm, g_norm = torch.norm(p), torch.norm(d_p)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm,
                                        torch.ones_like(p_norm))
                    d_p = d_p.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d_p.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d_p)
                p.add_(buf, alpha=-group["lr"])


def create_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    if name == "lars":
        return LARS(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD([{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups],
                               lr=lr, momentum=0.9, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups], lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; valid: lars, sgd, adamw")


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate: linear warmup, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine_progress(progress: float, warmup_fraction: float) -> float:
    """The same shape as `warmup_cosine`, on training progress in [0, 1] instead of a step count.

    With a time budget, progress is the share of the budget already spent. Elapsed time only
    grows, so after warmup the multiplier can only fall, and it moves by at most
    pi/2 x (one step's share of the budget) per step whatever the machine's speed does: no
    re-estimated step count, hence no jumps when a shared machine slows down or speeds up."""
    p = min(1.0, max(0.0, progress))
    if warmup_fraction > 0 and p < warmup_fraction:
        return max(p / warmup_fraction, 1e-3)  # the very first step still moves (as (step+1)/warmup does)
    return 0.5 * (1 + math.cos(math.pi * (p - warmup_fraction) / max(1e-12, 1 - warmup_fraction)))

"""Distributed data parallel training: process setup, collectives that carry gradients, and a
BatchNorm whose statistics span all processes.

Launched by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), the same
code runs on GPUs (NCCL) and on CPUs (gloo). Without those variables everything here is a
no-op and training is a plain single process.

Gradients of batch-coupled losses (contrastive negatives, BatchNorm statistics) follow one
rule: every process computes the loss of the *global* batch from gathered tensors, and the
backward pass of a gather or a sum sums the gradients of all processes. DDP then averages
parameter gradients over processes, which gives exactly the gradient of the global-batch
loss: a 2-process run takes the same steps as a 1-process run with the same global batch.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)

_GROUP: Any = None  # a separate group for our collectives, so they never interleave with DDP's


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (or stay single-process)."""
    global _GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    _GROUP = dist.new_group(backend="gloo" if device.type == "cpu" else None)
    log.info("process %d of %d (local rank %d, %s)", rank, world, local_rank, dist.get_backend())
    return DistInfo(rank, world, local_rank)


def cleanup() -> None:
    global _GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _GROUP = None


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, group=_GROUP)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=_GROUP)
        return grad


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.n, ctx.rank = x.shape[0], dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous(), group=_GROUP)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=_GROUP)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over processes; differentiable (the backward pass sums gradients too)."""
    return _AllReduceSum.apply(x) if world_size() > 1 else x


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the rows of all processes in rank order; differentiable."""
    return _AllGather.apply(x) if world_size() > 1 else x


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous(), group=_GROUP)
    return torch.cat(parts)


@torch.no_grad()
def mean_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Mean over processes of a tensor, for statistics (DINO's centre, logged losses)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, group=_GROUP)
    return x / world_size()


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm with statistics over the batch of all processes, on any device (gloo included;
    `torch.nn.SyncBatchNorm` needs a GPU). Same parameters and buffers as BatchNorm, so its
    state dict loads into a plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        stats = all_reduce_sum(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp(min=0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * total / (total - 1).clamp(min=1)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers -> statistics over all processes (SyncBatchNorm on GPU, GlobalBatchNorm else)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child, device))
    return out


def params_fingerprint(module: nn.Module) -> str:
    """sha256 of every parameter and buffer: equal across ranks iff they hold identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ranks_identical(module: nn.Module) -> bool:
    """True when every process holds bit-identical weights (checked at each checkpoint)."""
    if world_size() == 1:
        return True
    mine = params_fingerprint(module)
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, mine, group=_GROUP)
    return all(f == mine for f in everyone)

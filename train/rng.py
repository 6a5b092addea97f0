"""Random numbers that do not depend on how a batch is split.

A training step draws its augmentations (crops, jitter, masks, rotations) from a generator
seeded by the step. When the global batch is split over processes (DDP) or micro-batches
(gradient accumulation), each part draws the numbers for the *whole* global batch and keeps
its own rows, so image i gets the same augmentation however the batch is split: a
2-process run sees exactly the inputs of a 1-process run, and resume is exact.

Everything that draws per-sample numbers uses `rand`, `randn` or `randint` below with the
sample count first. Any `torch.Generator` works too (then the draw is simply local).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class BatchGenerator(torch.Generator):
    """A CPU generator for rows [start, start + size) of a global batch of `total` samples."""

    def __new__(cls, seed: int, start: int = 0, size: int | None = None,
                total: int | None = None) -> BatchGenerator:
        return super().__new__(cls, "cpu")  # type: ignore[call-arg]

    def __init__(self, seed: int, start: int = 0, size: int | None = None, total: int | None = None) -> None:
        self.manual_seed(seed)
        if total is not None and (size is None or not 0 <= start <= start + size <= total):
            raise ValueError(f"BatchGenerator: rows [{start}, {start}+{size}) do not lie in a batch of {total}")
        self.start, self.size, self.total = start, size, total


def _draw(fn: Callable[..., torch.Tensor], g: torch.Generator | None, n: int,
          shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(g, BatchGenerator) or g.total is None or g.size is None:
        return fn((n, *shape), generator=g)
    # n may be a multiple of the local batch: per-sample rows laid out sample-major (N*T frames).
    if n % g.size:
        raise ValueError(f"{n} random rows requested for a local batch of {g.size}; draws must be "
                         "per sample (a multiple of the batch size, sample-major)")
    k = n // g.size
    return fn((g.total * k, *shape), generator=g)[g.start * k:(g.start + g.size) * k]


def rand(g: torch.Generator | None, n: int, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) of shape (n, *shape); row i belongs to sample i of the local batch."""
    return _draw(torch.rand, g, n, shape)


def randn(g: torch.Generator | None, n: int, *shape: int) -> torch.Tensor:
    return _draw(torch.randn, g, n, shape)


def randint(g: torch.Generator | None, high: int, n: int, *shape: int) -> torch.Tensor:
    """Integers in [0, high) of shape (n, *shape)."""
    return (rand(g, n, *shape) * high).long().clamp_(max=high - 1)

"""Which images each training step sees: a seeded order per epoch that exact resume and any
number of DDP processes reproduce, read from an image folder, its decoded cache or tar shards."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from edgessl.train import distributed as D
from edgessl.train.config import PretrainConfig
from edgessl.train.data import CachedImages, collate
from edgessl.train.shards import TarShards


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, started at an offset: resume sees the exact same order.

    With `world` processes, global batch b is perm[b*B:(b+1)*B] and process r takes its
    contiguous part [r*B/world, (r+1)*B/world): the processes together see exactly the
    batches of a single-process run (a DistributedSampler that also keeps batch composition)."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, batch_size: int | None = None,
                 rank: int = 0, world: int = 1) -> None:
        if world > 1 and (batch_size is None or batch_size % world):
            raise ValueError(f"batch size {batch_size} must be a multiple of the {world} processes")
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[self.start:].tolist()
        if self.world == 1:
            return perm
        assert self.batch_size is not None
        part = self.batch_size // self.world
        out: list[int] = []
        for b in range(len(perm) // self.batch_size):
            base = b * self.batch_size + self.rank * part
            out.extend(perm[base:base + part])
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices()) if self.world > 1 else self.n - self.start


def epoch_batches(dataset: Dataset | TarShards, cfg: PretrainConfig, epoch: int, offset: int,
                   steps: int, per_rank: int, info: D.DistInfo) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """This process's batches of one epoch, from step `offset` on."""
    if isinstance(dataset, TarShards):
        dataset.set_epoch(epoch, info.rank, info.world)
        loader = DataLoader(dataset, batch_size=per_rank, num_workers=cfg.workers, collate_fn=collate)
        skip = offset  # a stream cannot seek: exact resume re-reads (without training on) the first batches
    else:
        sampler = EpochSampler(len(dataset), cfg.seed, epoch, offset * cfg.global_batch,  # type: ignore[arg-type]
                               cfg.global_batch, info.rank, info.world)
        if isinstance(dataset, CachedImages):  # decoded already: one gather per batch, no loader
            order = list(sampler)
            for b in range(min(len(order) // per_rank, steps - offset)):
                yield dataset.get_batch(order[b * per_rank:(b + 1) * per_rank]), []
            return
        loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True,
                            num_workers=cfg.workers, collate_fn=collate)
        skip = 0
    done = offset
    for i, (images, _, bad) in enumerate(loader):
        if i < skip:
            continue
        if info.enabled and len(images) < per_rank and len(images) > 0:
            # Processes must keep equal batch shapes: repeat readable images in place of unreadable ones.
            reps = -(-per_rank // len(images))
            images = images.repeat(reps, *[1] * (images.dim() - 1))[:per_rank]
        yield images, bad
        done += 1
        if done >= steps:
            return

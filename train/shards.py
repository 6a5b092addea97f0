"""WebDataset-style `.tar` shards: streamed, never unpacked; corrupt members counted and skipped."""

from __future__ import annotations

import glob
import io
import logging
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from edgessl.train.data import IMAGE_EXTENSIONS, SHARD_EXTENSIONS, VIDEO_EXTENSIONS, Item, decode_rgb

log = logging.getLogger(__name__)


def expand_shards(spec: str) -> list[Path]:
    """Shard paths from a spec: one `.tar`, a folder of them, a glob, brace ranges as in
    WebDataset (`data/shard-{000000..000099}.tar`), or several specs separated by commas."""
    out: list[Path] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.search(r"\{(\d+)\.\.(\d+)\}", part)
        if m:
            lo, hi = m.group(1), m.group(2)
            width = len(lo)
            for i in range(int(lo), int(hi) + 1):
                out.extend(expand_shards(part[:m.start()] + str(i).zfill(width) + part[m.end():]))
            continue
        p = Path(part)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.name.endswith(SHARD_EXTENSIONS)))
        elif any(c in part for c in "*?["):
            out.extend(sorted(Path(q) for q in glob.glob(part)))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{part}: shard not found")
    if not out:
        raise FileNotFoundError(f"{spec}: no .tar shards found")
    return out


def is_shard_spec(spec: str) -> bool:
    if "{" in spec or "," in spec or spec.endswith(SHARD_EXTENSIONS) or any(c in spec for c in "*?["):
        return True
    p = Path(spec)
    return p.is_dir() and any(q.name.endswith(SHARD_EXTENSIONS) for q in p.iterdir()) and not any(
        q.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS for q in p.rglob("*"))


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: `dir/key.ext1.ext2` -> ("dir/key", "ext1.ext2")."""
    d, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{d}/{key}" if d else key), ext.lower()


def iter_shard(path: Path) -> Iterator[tuple[str, bytes | None, int]]:
    """(key, image bytes or None, label) of each sample of a tar, streamed (never unpacked).
    A sample is the run of consecutive members sharing a key; `.cls` holds an integer label."""
    key: str | None = None
    image: bytes | None = None
    label = -1
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_key(member.name)
                if k != key:
                    if key is not None:
                        yield key, image, label
                    key, image, label = k, None, -1
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS and image is None:
                    image = data
                elif ext == "cls":
                    try:
                        label = int(data.decode().strip())
                    except ValueError:
                        label = -1
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("%s: shard is corrupt after key %r (%s); skipping the rest of it", path, key, exc)
    if key is not None:
        yield key, image, label


def count_shard(path: Path) -> int:
    """Samples in a shard, from the tar headers only (uncompressed tars are not read through)."""
    keys = set()
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    k, ext = _split_key(member.name)
                    if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                        keys.add(k)
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("%s: cannot read the shard index (%s); counting what was readable", path, exc)
    return len(keys)


class TarShards(IterableDataset):
    """Samples of WebDataset-style `.tar` shards, streamed: every process gets its own shards
    (`shards[rank::world]`), every loader worker a part of those, and a seeded shuffle buffer
    mixes samples. The stream is endless (it cycles through the shards, reshuffled each time);
    the training loop takes `steps_per_epoch` batches from it per epoch, so all processes take
    the same number of steps."""

    def __init__(self, spec: str, size: int, seed: int = 0, shuffle_buffer: int = 2000) -> None:
        self.shards = expand_shards(spec)
        self.size, self.seed, self.shuffle_buffer = size, seed, shuffle_buffer
        self.counts = [count_shard(p) for p in self.shards]
        if sum(self.counts) == 0:
            raise FileNotFoundError(f"{spec}: the shards hold no images")
        self.epoch, self.rank, self.world = 0, 0, 1
        log.info("%d shards, %d samples", len(self.shards), sum(self.counts))

    def __len__(self) -> int:
        return sum(self.counts)

    def samples_per_rank(self, world: int) -> list[int]:
        if world > len(self.shards):
            raise ValueError(f"{len(self.shards)} shards for {world} processes: each process needs at least one")
        return [sum(self.counts[r::world]) for r in range(world)]

    def set_epoch(self, epoch: int, rank: int = 0, world: int = 1) -> None:
        self.epoch, self.rank, self.world = epoch, rank, world

    def __iter__(self) -> Iterator[Item]:
        mine = list(range(len(self.shards)))[self.rank::self.world]
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        gen = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        buffer: list[tuple[int, tuple[str, bytes | None, int]]] = []
        cycle = 0
        while True:
            shuffle = np.random.default_rng([self.seed, self.epoch, self.rank, cycle])
            order = [mine[i] for i in shuffle.permutation(len(mine))]
            cycle += 1
            # Whole shards per worker when there are enough, else every worker reads all and keeps every k-th.
            split_shards = len(order) >= workers
            for s in order[worker::workers] if split_shards else order:
                for j, sample in enumerate(iter_shard(self.shards[s])):
                    if not split_shards and j % workers != worker:
                        continue
                    if self.shuffle_buffer <= 1:
                        yield self._decode(s, sample)
                        continue
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append((s, sample))
                        continue
                    k = int(gen.integers(len(buffer)))
                    buffer[k], out = (s, sample), buffer[k]
                    yield self._decode(*out)
            if len(buffer) < self.shuffle_buffer:  # fewer samples than the buffer: shuffle what there is
                gen.shuffle(buffer)
                yield from (self._decode(*b) for b in buffer)
                buffer.clear()

    def _decode(self, shard: int, sample: tuple[str, bytes | None, int]) -> Item:
        key, data, label = sample
        img = decode_rgb(data, self.size) if data else None
        return (None if img is None else torch.from_numpy(img)), label, f"{self.shards[shard]}:{key}"


# ---------------------------------------------------------------- choosing a dataset

def write_shards(images: list[Path], out_pattern: str, per_shard: int = 1000) -> list[Path]:
    """Pack image files into WebDataset-style tars (`out_pattern` with one `{}` for the shard index)."""
    paths = []
    for s in range(0, len(images), per_shard):
        path = Path(out_pattern.format(f"{s // per_shard:06d}"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            for i, img in enumerate(images[s:s + per_shard]):
                data = img.read_bytes()
                info = tarfile.TarInfo(f"{s + i:09d}{img.suffix.lower()}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- decoded once: a uint8 memory map


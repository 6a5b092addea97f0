"""The pretraining loop: reads top to bottom, like DINO's main_dino.py."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from edgessl.train.backbones import create_backbone
from edgessl.train.checkpoint import load_checkpoint, save_checkpoint
from edgessl.train.data import ImageFolder, collate
from edgessl.train.methods import Method, create_method
from edgessl.train.optim import create_optimizer, param_groups, warmup_cosine
from edgessl.train.views import ViewConfig, eval_transform

log = logging.getLogger(__name__)

DEFAULT_LR = {"lars": 1.0, "sgd": 0.3, "adamw": 1e-3}  # per 256 images, scaled linearly with batch


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="folder of unlabeled images (recursive)")
    out: str = Field(description="run folder: checkpoints, config.json, log.jsonl")
    method: str = Field("simclr", description="SSL method")
    backbone: str = Field("resnet_tiny", description="backbone architecture")
    image_size: int = Field(32, ge=8, description="training resolution (square)")
    batch_size: int = Field(256, ge=2)
    epochs: float | None = Field(None, gt=0, description="length in epochs (default 10 unless --minutes)")
    minutes: float | None = Field(None, gt=0, description="wall-clock budget; the schedule is fitted to it")
    optimizer: Literal["lars", "sgd", "adamw"] = "lars"
    lr: float | None = Field(None, gt=0, description="base lr per 256 images (default by optimizer)")
    weight_decay: float = Field(1e-5, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    temperature: float = Field(0.2, gt=0)
    seed: int = 0
    workers: int = Field(0, ge=0, description="data loading processes (0: in the training process)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: all cores)")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(3, ge=0, description="numbered step checkpoints kept besides last.pt")
    center_images: int = Field(2000, ge=1, description="images used for the centring vector")

    @model_validator(mode="after")
    def _length(self) -> PretrainConfig:
        if self.epochs is None and self.minutes is None:
            self.epochs = 10
        return self

    @property
    def base_lr(self) -> float:
        return (self.lr or DEFAULT_LR[self.optimizer]) * self.batch_size / 256


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, started at an offset: resume sees the exact same order."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.start:].tolist())

    def __len__(self) -> int:
        return self.n - self.start


def pretrain(cfg: PretrainConfig, resume: bool = False) -> Path:
    out = Path(cfg.out)
    ckpt_path = out / "checkpoints" / "last.pt"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    # ---- data: decoded and resized once per image; augmentation runs on whole batches
    dataset = ImageFolder(cfg.data, cfg.image_size)
    steps_per_epoch = len(dataset) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{cfg.data}: {len(dataset)} images, fewer than one batch of {cfg.batch_size}")

    # ---- model: backbone + method (views, head, loss)
    backbone = create_backbone(cfg.backbone)
    views = ViewConfig(size=cfg.image_size)
    method = create_method(cfg.method, backbone, views, temperature=cfg.temperature)
    method = method.to(memory_format=torch.channels_last)  # faster convolutions on CPU
    optimizer = create_optimizer(cfg.optimizer, param_groups(method, cfg.weight_decay), cfg.base_lr)

    step, elapsed_before, total_steps = 0, 0.0, None
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        method.load_state_dict(ckpt["method_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, elapsed_before, total_steps = ckpt["step"], ckpt["elapsed_s"], ckpt["total_steps"]
        log.info("resuming %s at step %d of %d", ckpt_path, step, total_steps)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")

    # ---- schedule length: from epochs, or fitted to the time budget by timing a few steps
    start = time.monotonic() - elapsed_before
    if total_steps is None:
        if cfg.epochs is not None:
            total_steps = max(1, round(cfg.epochs * steps_per_epoch))
        else:
            total_steps = _fit_steps(method, dataset, cfg)
    warmup = round(cfg.warmup_fraction * total_steps)
    log.info("%d images, %d steps of %d (%.1f epochs), base lr %.3g", len(dataset), total_steps,
             cfg.batch_size, total_steps / steps_per_epoch, cfg.base_lr)

    # ---- train
    method.train()
    bad_files: set[str] = set()
    # With a time budget, the schedule is fitted again from step 31 on, on the measured pace.
    refit = cfg.minutes is not None and step == 0
    t_fit = time.monotonic()
    t_prev = time.monotonic()
    bar = tqdm(total=total_steps, initial=step, desc=f"pretrain {cfg.method}", unit="step", dynamic_ncols=True)
    with open(out / "log.jsonl", "a") as log_file:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler = EpochSampler(len(dataset), cfg.seed, epoch, offset * cfg.batch_size)
            loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                                num_workers=cfg.workers, collate_fn=collate)
            for images, _, bad in loader:
                if bad:
                    new = set(bad) - bad_files
                    bad_files |= new
                    for path in new:
                        log.warning("skipping unreadable image %s", path)
                if len(images) < 2:
                    continue
                lr = cfg.base_lr * warmup_cosine(step, total_steps, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # exact resume
                loss = method.training_step(images, g)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                method.on_step_end((step + 1) / total_steps)
                step += 1
                now = time.monotonic()
                rate, t_prev = len(images) / (now - t_prev), now  # data loading included
                if refit and step == 1:
                    t_fit = now
                elif refit and (step == 31 or step % 50 == 0):
                    # Shared machines change speed: fit the remaining schedule to the measured pace.
                    per_step = (now - t_fit) / (step - 1)
                    remaining = cfg.minutes * 60 * 0.97 - (now - start)  # type: ignore[operator]
                    total_steps = max(step + 1, step + int(remaining / per_step))
                    if step == 31:
                        warmup = round(cfg.warmup_fraction * total_steps)
                    bar.total = total_steps
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{rate:.0f}", lr=f"{lr:.3g}")
                log_file.write(json.dumps({"step": step, "epoch": epoch, "loss": loss.item(), "lr": lr,
                                           "img_per_s": round(rate, 1),
                                           "elapsed_s": round(time.monotonic() - start, 1)}) + "\n")
                out_of_time = cfg.minutes is not None and time.monotonic() - start > cfg.minutes * 60
                if step % cfg.checkpoint_every == 0 or step >= total_steps or out_of_time:
                    log_file.flush()
                    _save(ckpt_path, cfg, method, optimizer, step, total_steps, time.monotonic() - start)
                    _keep_numbered(ckpt_path, step, cfg.keep_checkpoints)
                if step >= total_steps or out_of_time:
                    total_steps = step
                    break
    bar.close()
    if bad_files:
        log.warning("%d unreadable images were skipped", len(bad_files))

    # ---- what export needs: the centring vector and a few real images
    center, samples = _center_and_samples(method.backbone, dataset, cfg)
    _save(ckpt_path, cfg, method, optimizer, step, total_steps, time.monotonic() - start, center, samples)
    log.info("wrote %s (%d steps, %.1f min)", ckpt_path, step, (time.monotonic() - start) / 60)
    return ckpt_path


def _fit_steps(method: Method, dataset: ImageFolder, cfg: PretrainConfig) -> int:
    """Time three steps (data + forward + backward, no update) and fit the schedule to the budget."""
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate)
    it = iter(loader)
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        images = next(it)[0]
        method.training_step(images).backward()
        times.append(time.monotonic() - t0)
    method.zero_grad(set_to_none=True)
    per_step = sorted(times)[1]
    steps = int(cfg.minutes * 60 * 0.97 / per_step)  # type: ignore[operator]
    log.info("fitted schedule: %.2f s/step -> %d steps in %.1f min", per_step, steps, cfg.minutes)
    return max(1, steps)


@torch.no_grad()
def _center_and_samples(backbone: torch.nn.Module, dataset: ImageFolder,
                        cfg: PretrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    backbone.eval()
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(dataset), generator=g)[: cfg.center_images].tolist()
    loader = DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=256, collate_fn=collate)
    views = ViewConfig(size=cfg.image_size)
    total: torch.Tensor | None = None
    count = 0
    samples: list[torch.Tensor] = []
    for images, _, _ in loader:
        feats = backbone(eval_transform(images, cfg.image_size, views.mean, views.std))
        total = feats.sum(0) if total is None else total + feats.sum(0)
        count += len(feats)
        if sum(s.shape[0] for s in samples) < 32:
            samples.append(images[:32])
    backbone.train()
    assert total is not None
    return (total / count).float(), torch.cat(samples)[:32].clone()


def _keep_numbered(last: Path, step: int, keep: int) -> None:
    """Copy last.pt to step_NNNNNNNN.pt and delete all but the `keep` newest copies."""
    if keep == 0:
        return
    numbered = last.parent / f"step_{step:08d}.pt"
    shutil.copyfile(last, numbered)
    for old in sorted(last.parent.glob("step_*.pt"))[:-keep]:
        old.unlink()


def _save(path: Path, cfg: PretrainConfig, method: torch.nn.Module, optimizer: torch.optim.Optimizer,
          step: int, total_steps: int, elapsed: float, center: torch.Tensor | None = None,
          samples: torch.Tensor | None = None) -> None:
    views = ViewConfig(size=cfg.image_size)
    payload: dict[str, Any] = {
        "config": cfg.model_dump(),
        "method_state": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step, "total_steps": total_steps, "elapsed_s": elapsed,
        "embedding_dim": method.backbone.dim,
        "preprocess": {"input_size": [cfg.image_size, cfg.image_size], "mean": list(views.mean),
                       "std": list(views.std), "channel_order": "RGB", "resize": "shorter_side_crop"},
    }
    if center is not None:
        payload["center"] = center
        payload["samples"] = samples
    save_checkpoint(path, payload)

"""What a pretraining run writes besides the log: TensorBoard, checkpoints (the newest kept),
and what export needs from the run (the centring vector and a few real images)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from edgessl.train.checkpoint import save_checkpoint
from edgessl.train.config import PretrainConfig
from edgessl.train.data import collate
from edgessl.train.shards import TarShards
from edgessl.train.views import eval_transform

log = logging.getLogger(__name__)


def tensorboard_writer(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("TensorBoard logging needs the 'tensorboard' package: "
                                  "pip install 'edgessl[train]', or pass --no-tensorboard", name=exc.name) from exc
    return SummaryWriter(str(out / "tensorboard"))


@torch.no_grad()
def center_and_samples(backbone: torch.nn.Module, dataset: Dataset | TarShards, cfg: PretrainConfig,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of `center_images` training images (frames, for clips) and 32 real samples."""
    backbone.eval()
    if isinstance(dataset, TarShards):
        dataset.set_epoch(0)
        source: Any = dataset
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(len(dataset), generator=g)[: cfg.center_images].tolist()  # type: ignore[arg-type]
        source = torch.utils.data.Subset(dataset, idx)
    loader = DataLoader(source, batch_size=256, collate_fn=collate)
    views = cfg.views()
    total: torch.Tensor | None = None
    count = 0
    samples: list[torch.Tensor] = []
    for images, _, _ in loader:
        if images.dim() == 5:  # clips: every frame counts
            images = images.flatten(0, 1)
        if len(images) == 0:
            continue
        x = eval_transform(images.to(device), cfg.image_size, views.mean, views.std)
        feats = backbone(x).float()
        total = feats.sum(0) if total is None else total + feats.sum(0)
        count += len(feats)
        if sum(s.shape[0] for s in samples) < 32:
            samples.append(images[:32])
        if count >= min(cfg.center_images, len(source)):  # a stream is endless: one pass at most
            break
    backbone.train()
    assert total is not None
    return (total / count).cpu(), torch.cat(samples)[:32].clone()


def keep_numbered(last: Path, step: int, keep: int) -> None:
    """Copy last.pt to step_NNNNNNNN.pt and delete all but the `keep` newest copies."""
    if keep == 0:
        return
    numbered = last.parent / f"step_{step:08d}.pt"
    shutil.copyfile(last, numbered)
    for old in sorted(last.parent.glob("step_*.pt"))[:-keep]:
        old.unlink()


def save_run(path: Path, cfg: PretrainConfig, method: torch.nn.Module, optimizer: torch.optim.Optimizer,
          scaler: Any, step: int, total_steps: int, elapsed: float, center: torch.Tensor | None = None,
          samples: torch.Tensor | None = None) -> None:
    views = cfg.views()
    payload: dict[str, Any] = {
        "config": cfg.model_dump(),
        "method_state": {k: v.cpu() for k, v in method.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "step": step, "total_steps": total_steps, "elapsed_s": elapsed,
        "embedding_dim": method.backbone.dim,
        "preprocess": {"input_size": [cfg.image_size, cfg.image_size], "mean": list(views.mean),
                       "std": list(views.std), "channel_order": "RGB", "resize": "shorter_side_crop"},
    }
    if center is not None:
        payload["center"] = center
        payload["samples"] = samples
    save_checkpoint(path, payload)

"""Checkpoints: weights, the config that made them, optimiser state for resume, and what export
needs (backbone name, preprocessing, the centring vector and a few real sample images).

Loaded with `torch.load(weights_only=True)` only: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "edgessl-checkpoint/1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run folder
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an edgessl checkpoint (expected format {FORMAT})")
    return ckpt


def backbone_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in ckpt["method_state"].items() if k.startswith(prefix)}


def load_backbone(ckpt: dict[str, Any], random_weights: bool = False) -> torch.nn.Module:
    """The trained backbone of a checkpoint in eval mode (or the same architecture, untrained)."""
    from edgessl.train.backbones import create_backbone

    cfg = ckpt["config"]
    torch.manual_seed(cfg["seed"])
    model = create_backbone(cfg["backbone"], **cfg.get("backbone_options", {}))
    if not random_weights:
        model.load_state_dict(backbone_state(ckpt))
    return model.eval()

"""Evaluation of frozen features: N-way K-shot episodes with the device's own prototype code."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from edgessl.train.checkpoint import load_backbone
from edgessl.train.data import ImageFolder, collate
from edgessl.train.views import eval_transform

log = logging.getLogger(__name__)


def labelled_subset(dataset: ImageFolder, per_class: int | None, seed: int) -> list[int]:
    """Up to `per_class` images of each class, chosen deterministically."""
    labels = np.array(dataset.labels)
    if (labels < 0).any():
        raise ValueError(f"{dataset.root}: evaluation needs one sub-folder per class; "
                         f"{int((labels < 0).sum())} images lie directly in the root")
    rng = np.random.default_rng(seed)
    idx: list[int] = []
    for c in range(len(dataset.class_names)):
        members = np.flatnonzero(labels == c)
        if per_class is not None and len(members) > per_class:
            members = np.sort(rng.choice(members, per_class, replace=False))
        idx.extend(members.tolist())
    return idx


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, folder: str | Path, ckpt: dict[str, Any],
                     per_class: int | None = None, seed: int = 0,
                     cache_dir: Path | None = None, cache_key: str = "") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features (N, D), labels (N,) and class names of a labelled folder, cached per checkpoint."""
    pre = ckpt["preprocess"]
    size = pre["input_size"][0]
    dataset = ImageFolder(folder, size)
    idx = labelled_subset(dataset, per_class, seed)
    cache = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{cache_key}|{Path(folder).resolve()}|{per_class}|{seed}|{len(dataset)}".encode())
        cache = cache_dir / f"features-{key.hexdigest()[:16]}.npz"
        if cache.is_file():
            data = np.load(cache)
            return data["features"], data["labels"], dataset.class_names
    feats, labels = [], []
    loader = DataLoader(Subset(dataset, idx), batch_size=256, collate_fn=collate)
    for images, y, _ in loader:
        feats.append(backbone(eval_transform(images, size, pre["mean"], pre["std"])).float().numpy())
        labels.append(y.numpy())
    features, label_arr = np.concatenate(feats), np.concatenate(labels)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, features=features, labels=label_arr)
    return features, label_arr, dataset.class_names


def checkpoint_key(path: Path, random_weights: bool) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|random={random_weights}"


def fewshot(ckpt_path: Path, support: Path, query: Path, *, way: int, shot: int, queries: int,
            episodes: int, per_class: int | None, seed: int, random_weights: bool) -> dict[str, Any]:
    from edgessl.edge_runtime.fewshot import evaluate_episodes
    from edgessl.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    path = ckpt_path / "checkpoints" / "last.pt" if ckpt_path.is_dir() else ckpt_path
    backbone = load_backbone(ckpt, random_weights=random_weights)
    cache_dir = path.parent.parent / "features"
    key = checkpoint_key(path, random_weights)
    s_feat, s_lab, s_names = extract_features(backbone, support, ckpt, per_class, seed, cache_dir, key)
    q_feat, q_lab, q_names = extract_features(backbone, query, ckpt, per_class, seed + 1, cache_dir, key)
    if s_names != q_names:
        raise ValueError(f"support classes {s_names} differ from query classes {q_names}")
    # Centre on the support set's mean: the server has the same role as center.npy on the device.
    center = s_feat.mean(0) if random_weights else ckpt["center"].numpy()
    result = evaluate_episodes(s_feat, s_lab, q_feat, q_lab, n_way=way, k_shot=shot, n_query=queries,
                               episodes=episodes, seed=seed, center=center)
    return {"checkpoint": str(path), "random_weights": random_weights, "way": way, "shot": shot,
            "episodes": episodes, "accuracy": float(result.mean), "ci95": float(result.ci95),
            "classes": s_names}

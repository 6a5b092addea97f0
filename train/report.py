"""Pictures of a run for `edgessl eval ... --report DIR` (matplotlib, Agg backend, PNG files).

- loss.png: the training loss per step (from RUN/log.jsonl), with a moving average;
- knn_over_checkpoints.png: k-NN top-1 of every kept checkpoint;
- fewshot_confusion.png: the confusion matrix of the few-shot episodes (row-normalised);
- embedding_pca.png: a 2-D PCA projection of the test embeddings, coloured by class;
- augmented_views.png: training images next to views drawn with the run's augmentation policy,
  i.e. what the model was trained to ignore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(run: Path, out: Path) -> Path | None:
    """None when the run has no log (e.g. a checkpoint copied without its run folder)."""
    log = Path(run) / "log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss")
    w = max(1, len(loss) // 50)
    if w > 1:
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, lw=1.8, label=f"mean of {w} steps")
    ax.set(xlabel="step", ylabel="training loss", title=f"training loss ({Path(run).name})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def metric_over_checkpoints(points: list[tuple[int, float]], out: Path, label: str = "k-NN top-1",
                            baseline: float | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [p[0] for p in points]
    ax.plot(steps, [100 * p[1] for p in points], marker="o")
    if baseline is not None:
        ax.axhline(100 * baseline, color="grey", ls="--", label="random weights")
        ax.legend()
    ax.set(xlabel="step", ylabel=f"{label} (%)", title=f"{label} over checkpoints")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def confusion(matrix: np.ndarray, class_names: list[str], out: Path, title: str) -> Path:
    m = np.asarray(matrix, np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    plt = _plt()
    size = max(5.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    if len(class_names) <= 20:
        for i in range(len(class_names)):
            for j in range(len(class_names)):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def pca_2d(features: np.ndarray) -> np.ndarray:
    """Project L2-normalised, mean-centred features onto their first two principal axes."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def projection(features: np.ndarray, labels: np.ndarray, class_names: list[str], out: Path,
               max_points: int = 5000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    idx = np.arange(len(features))
    if len(idx) > max_points:
        idx = np.sort(rng.choice(idx, max_points, replace=False))
    xy = pca_2d(features[idx])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c, name in enumerate(class_names):
        m = labels[idx] == c
        ax.scatter(xy[m, 0], xy[m, 1], s=5, alpha=0.6, color=cmap(c % cmap.N), label=name)
    ax.set(title="embeddings, PCA to 2-D", xticks=[], yticks=[])
    ax.legend(markerscale=3, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def view_grid(ckpt: dict[str, Any], out: Path, images: int = 8, views: int = 5, seed: int = 0) -> Path | None:
    """Each row: one of the checkpoint's sample images, then `views` augmented views of it, drawn
    with the run's policy (config.json's augment_options). None for checkpoints without samples."""
    import torch

    from edgessl.train.pretrain import PretrainConfig
    from edgessl.train.views import augment, to_float

    samples = ckpt.get("samples")
    if samples is None or len(samples) == 0:
        return None
    known = set(PretrainConfig.model_fields)
    cfg = PretrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
    view_cfg = cfg.views()
    x = to_float(samples[:images])
    g = torch.Generator().manual_seed(seed)
    drawn = [augment(x, view_cfg, g).clamp(0, 1) for _ in range(views)]
    plt = _plt()
    rows = len(x)
    fig, axes = plt.subplots(rows, views + 1, figsize=(1.2 * (views + 1), 1.2 * rows + 0.6), squeeze=False)
    for r in range(rows):
        cells = [x[r]] + [v[r] for v in drawn]
        for c, img in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("image" if c == 0 else f"view {c}", fontsize=8)
    reason = ckpt["config"].get("augment_reason") or ""
    fig.suptitle(f"policy {ckpt['config'].get('augment', 'natural')!r}" + (f": {reason}" if reason else ""),
                 fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

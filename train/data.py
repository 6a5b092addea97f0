"""Unlabeled image folders for pretraining, and labelled folders for evaluation.

Images are decoded with OpenCV, resized so the shorter side is `size` and centre-cropped to
size x size (the same rule as the device's `shorter_side_crop`), and returned as uint8 CHW
RGB tensors; augmentation happens later, on whole batches. Unreadable files are reported
and skipped, never fatal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return files


def load_rgb(path: Path, size: int) -> np.ndarray | None:
    """Decode, resize the shorter side to `size`, centre-crop. None if the file is unreadable."""
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        return None
    h, w = img.shape[:2]
    if (h, w) != (size, size):
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        y, x = (nh - size) // 2, (nw - size) // 2
        img = img[y:y + size, x:x + size]
    return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))


class ImageFolder(Dataset):
    """Every image under `root` (recursive). Labels are the first folder level, if wanted."""

    def __init__(self, root: str | Path, size: int) -> None:
        self.root = Path(root)
        self.size = size
        self.files = list_images(self.root)
        self.class_names = sorted({p.relative_to(self.root).parts[0] for p in self.files if p.parent != self.root})
        index = {c: i for i, c in enumerate(self.class_names)}
        self.labels = [index.get(p.relative_to(self.root).parts[0], -1) for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        img = load_rgb(self.files[i], self.size)
        return (None if img is None else torch.from_numpy(img)), self.labels[i], str(self.files[i])


def collate(items: list[tuple[torch.Tensor | None, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the readable images; return the paths of unreadable ones so the caller can report them."""
    good = [(img, label) for img, label, _ in items if img is not None]
    bad = [path for img, _, path in items if img is None]
    if not good:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad

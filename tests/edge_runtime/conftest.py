"""Synthetic images for the edge runtime tests: noisy colour patches (BGR uint8)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

ColorImages = Callable[..., list[np.ndarray]]


def noisy_images(bgr: tuple[int, int, int], n: int, *, seed: int = 0, shape: tuple[int, int] = (40, 50)) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, *bgr])
    return [np.clip(np.array(bgr) + rng.normal(0, 25, (*shape, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


@pytest.fixture
def color_images() -> ColorImages:
    """color_images(bgr, n, seed=0, shape=(40, 50)) -> n noisy images of that colour."""
    return noisy_images


@pytest.fixture
def write_images() -> Callable[..., list[Path]]:
    """write_images(folder, bgr, n, seed=0) -> paths of n noisy PNGs of that colour."""
    def write(folder: Path, bgr: tuple[int, int, int], n: int, seed: int = 0) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, image in enumerate(noisy_images(bgr, n, seed=seed)):
            path = folder / f"{i:03d}.png"
            assert cv2.imwrite(str(path), image)
            paths.append(path)
        return paths
    return write

"""Augmentation policies that fit the data, picked by looking at a sample of it.

SSL learns to ignore what its augmentations change. Colour jitter on grey images changes
nothing but brightness and contrast (saturation and hue of a grey pixel are no-ops), so the
views differ less and the task gets easier than intended; near-binary drawings and documents
carry their information in shape, not colour; thermal-like images are low-contrast and grey or
false-coloured; and crops of images smaller than the training size keep too few real pixels.
One registry, `POLICIES`: each preset is a set of `ViewConfig` overrides. `--augment auto`
(the default) measures a sample of the data and picks one; `--augment NAME` forces a preset,
and `--augment-opt KEY=VALUE` overrides single operations on top of either.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgessl.train.views import ViewConfig

log = logging.getLogger(__name__)

POLICIES: dict[str, dict[str, Any]] = {
    # Photographs: SimCLR's recipe (colour jitter 0.8, random grey 0.2) as ViewConfig has it.
    "natural": {},
    # Grey data: saturation, hue and random grey change nothing there, so they are not computed.
    # What is left of the colour jitter, brightness and contrast, is an affine map of the
    # intensities, which normalisation layers undo: two crops of one image still share the shape
    # of their intensity histogram, a shortcut that colour jitter breaks on colour images.
    # Solarisation (BYOL's: invert the pixels above mid-grey) folds that histogram, so the views
    # must be matched by their shapes. Screened at 2 minutes on grey CIFAR-10 against the natural
    # recipe (46.3% 5-way 5-shot): solarize_p 0.1 / 0.2 / 0.35 / 0.5 gave 48.0 / 50.7 / 50.5 /
    # 49.7%; gamma curves, histogram equalisation, inversion, blur, noise and rotation gave
    # 44.6-47.6% and added nothing on top of it; stronger brightness/contrast lost up to 7 points.
    # At 5 minutes on the reference CPU (AVX2): 50.1% against 46.5% for the natural recipe; on colour
    # data solarisation adds +0.8 there, which is why `natural` leaves it out (docs/benchmarks.md,
    # "Augmentation policy on grey data").
    "grey": {"saturation": 0.0, "hue": 0.0, "gray_p": 0.0, "solarize_p": 0.2},
    # Near-binary drawings and documents: shape is everything; mirrored text is another text, and
    # small crops of a page are mostly blank, so no flips, larger crops, rotation and shear.
    # (Not measured on a document data set yet; nor is "thermal".)
    "document": {"jitter_p": 0.0, "gray_p": 0.0, "flip_p": 0.0, "rotate": 8.0, "shear": 0.15,
                 "min_scale": 0.35},
    # Thermal-like: low contrast, grey or false colour; brightness/contrast vary with the scene's
    # temperature range, hue means nothing.
    "thermal": {"saturation": 0.0, "hue": 0.0, "gray_p": 0.0, "brightness": 0.5, "contrast": 0.7,
                "rotate": 5.0},
}
# The operations --augment-opt may set: every ViewConfig field but the size, and min_scale.
OPTION_KEYS = {f.name for f in dataclasses.fields(ViewConfig)} - {"size", "scale", "ratio", "mean", "std"} | {"min_scale"}
TINY_MIN_SCALE = 0.35  # images smaller than the training size: crops keep at least a third of them


@dataclass(frozen=True)
class DataStats:
    """What the policy looks at, measured on a sample of the training images."""

    images: int
    colour: float  # mean |R-G| + |G-B| over pixels, 0..510: ~0 for grey data
    extremes: float  # share of pixels with luminance < 32 or > 223: ~1 for binary drawings
    contrast: float  # median over images of the luminance standard deviation, 0..255
    short_side: float | None  # median shorter side of the files before resizing (None: unknown)


@dataclass(frozen=True)
class Policy:
    name: str
    reason: str
    options: dict[str, Any]
    stats: DataStats | None = None

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items())) or "SimCLR defaults"
        return f"augmentation policy {self.name!r} ({self.reason}): {opts}"


def measure(images: torch.Tensor, short_sides: list[int] | None = None) -> DataStats:
    """Statistics of a uint8 (N, 3, H, W) sample."""
    x = images.float()
    colour = float(((x[:, 0] - x[:, 1]).abs() + (x[:, 1] - x[:, 2]).abs()).mean())
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    extremes = float(((lum < 32) | (lum > 223)).float().mean())
    contrast = float(lum.flatten(1).std(dim=1).median())
    side = float(np.median(short_sides)) if short_sides else None
    return DataStats(len(images), round(colour, 2), round(extremes, 3), round(contrast, 1), side)


def choose(stats: DataStats, image_size: int) -> Policy:
    """The preset for data with these statistics (thresholds in the module's terms, see DataStats)."""
    grey = stats.colour < 3.0
    if stats.extremes > 0.8:
        name, reason = "document", f"near-binary: {100 * stats.extremes:.0f}% of pixels near black or white"
    elif stats.contrast < 28 and (grey or stats.colour < 25):
        name, reason = "thermal", f"low contrast (median luminance std {stats.contrast:.0f}/255)"
    elif grey:
        name, reason = "grey", f"grey: mean channel difference {stats.colour:.1f}/510"
    else:
        name, reason = "natural", f"colour images (mean channel difference {stats.colour:.0f}/510)"
    options = dict(POLICIES[name])
    if stats.short_side is not None and stats.short_side < image_size:
        options["min_scale"] = max(options.get("min_scale", 0.0), TINY_MIN_SCALE)
        reason += f"; tiny images ({stats.short_side:.0f} px < {image_size} px): larger crops"
    return Policy(name, reason, options, stats)


def sample_stats(dataset: Any, count: int = 256, seed: int = 0) -> DataStats:
    """Measure `count` images of a dataset spread over it (the files' own sizes when it has files)."""
    from torch.utils.data import IterableDataset

    if isinstance(dataset, IterableDataset):  # a stream (shards): its first images
        items = []
        for img, _, _ in dataset:
            if img is not None:
                items.append(img)
            if len(items) >= count:
                break
        return measure(torch.stack(items))
    n = len(dataset)
    idx = np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int)).tolist()
    if hasattr(dataset, "get_batch"):
        images = dataset.get_batch(idx)
    else:
        items = [dataset[i][0] for i in idx]
        images = torch.stack([t if t.dim() == 3 else t[0] for t in items if t is not None])
    sides: list[int] = []
    files = getattr(dataset, "files", None)
    if files:
        import cv2

        for i in idx[:64]:
            img = cv2.imread(str(files[i]), cv2.IMREAD_UNCHANGED)
            if img is not None:
                sides.append(min(img.shape[:2]))
    return measure(images, sides or None)


def resolve(preset: str, dataset: Any, image_size: int, overrides: dict[str, Any]) -> Policy:
    """The policy of a run: `preset` (auto: measured), then the per-op `overrides`."""
    if preset != "auto" and preset not in POLICIES:
        raise ValueError(f"unknown augmentation policy {preset!r}; valid: auto, {', '.join(POLICIES)}")
    unknown = sorted(set(overrides) - OPTION_KEYS)
    if unknown:
        raise ValueError(f"unknown augmentation option {', '.join(unknown)}; valid: {', '.join(sorted(OPTION_KEYS))}")
    if preset == "auto":
        policy = choose(sample_stats(dataset), image_size)
    else:
        policy = Policy(preset, "chosen with --augment", dict(POLICIES[preset]))
    if overrides:
        policy = dataclasses.replace(policy, options={**policy.options, **overrides},
                                     reason=policy.reason + "; --augment-opt " + ", ".join(sorted(overrides)))
    return policy


def view_config(size: int, min_scale: float, options: dict[str, Any]) -> ViewConfig:
    """ViewConfig of a run: the policy's options (min_scale, if set, wins over the method's)."""
    opts = dict(options)
    scale = (float(opts.pop("min_scale", min_scale)), 1.0)
    return ViewConfig(size=size, scale=scale, **opts)

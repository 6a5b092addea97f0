"""Batched image augmentations on tensors: random resized crop + flip, colour jitter, grayscale,
and (off unless a policy sets them) gamma, equalisation, solarisation, inversion, blur, noise.

They run on a whole uint8 batch at once (one `grid_sample`, a few tensor ops), so the
augmentation costs a small fraction of a training step instead of a Python loop per image.
Random parameters are drawn on the CPU from the step's generator (see `rng`), then moved
to the images' device: the same seed gives the same views on CPU and GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from edgessl.train import rng

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewConfig:
    size: int = 32
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    rotate: float = 0.0  # largest rotation, degrees either way (0: none; the augmentation policies set it)
    shear: float = 0.0  # largest horizontal shear factor either way
    # Operations that change the shape of the intensity histogram, blur and noise: off by default;
    # the grey policy solarises (train/augment.py says why, docs/benchmarks.md what each measured).
    gamma: float = 0.0  # largest |log gamma| of a random gamma curve x**gamma, with the colour jitter
    equalize_p: float = 0.0  # probability of histogram equalisation (per channel, by rank)
    solarize_p: float = 0.0  # probability of inverting the pixels above 0.5
    invert_p: float = 0.0  # probability of the negative image
    blur_p: float = 0.0  # probability of a Gaussian blur ...
    blur_sigma: float = 1.0  # ... of sigma uniform in (0.1, blur_sigma) pixels of the view
    noise: float = 0.0  # largest standard deviation of additive Gaussian noise (0..1 scale)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return rng.rand(g, n) * (hi - lo) + lo


def random_resized_crop(x: torch.Tensor, cfg: ViewConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """Crop a random area (scale, aspect ratio) of each image, resize to cfg.size, flip half."""
    n = x.shape[0]
    area = _uniform(n, *cfg.scale, g)
    log_r = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), g)
    ratio = torch.exp(log_r)
    # Crop width/height as fractions of the image (affine_grid works in [-1, 1] coordinates).
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (rng.rand(g, n) * 2 - 1) * (1 - w)
    cy = (rng.rand(g, n) * 2 - 1) * (1 - h)
    flip = torch.where(rng.rand(g, n) < cfg.flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    if cfg.rotate > 0 or cfg.shear > 0:
        # Output -> input coordinates: crop scale x rotation x shear, about the crop's centre. Drawn
        # only when used, so the views of policies without geometry stay exactly as before.
        angle = _uniform(n, -cfg.rotate, cfg.rotate, g) * (math.pi / 180)
        shear = _uniform(n, -cfg.shear, cfg.shear, g)
        cos, sin = torch.cos(angle), torch.sin(angle)
        geo = torch.stack([torch.stack([cos, cos * shear - sin], 1), torch.stack([sin, sin * shear + cos], 1)], 1)
        theta[:, :, :2] = theta[:, :, :2] @ geo
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, x.shape[1], cfg.size, cfg.size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.to(a.device, a.dtype).view(-1, 1, 1, 1)
    return (factor * a + (1 - factor) * b).clamp(0, 1)


def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Hue shift as a rotation of the chroma plane in YIQ space: one 3x3 matrix per image."""
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rgb = torch.linalg.inv(yiq)
    angle = turns * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(len(turns), 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = (rgb @ rot @ yiq).to(x.device, x.dtype)  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", m, x).clamp(0, 1)


def color_jitter(x: torch.Tensor, cfg: ViewConfig, g: torch.Generator | None = None) -> torch.Tensor:
    n = x.shape[0]
    on = (rng.rand(g, n) < cfg.jitter_p).float()

    def factor(strength: float) -> torch.Tensor:  # 1 where jitter is off
        return 1 + on * _uniform(n, -strength, strength, g)

    # An operation of strength 0 is skipped (grey data: saturation and hue change nothing there).
    if cfg.brightness > 0:
        x = (x * factor(cfg.brightness).to(x.device, x.dtype).view(-1, 1, 1, 1)).clamp(0, 1)
    if cfg.contrast > 0:
        x = _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor(cfg.contrast))
    if cfg.saturation > 0:
        x = _blend(x, _gray(x), factor(cfg.saturation))
    if cfg.hue > 0:
        x = _rotate_hue(x, on * _uniform(n, -cfg.hue, cfg.hue, g))
    if cfg.gamma > 0:  # a curve, not a line: BatchNorm cannot undo it the way it undoes brightness/contrast
        exponent = torch.exp(on * _uniform(n, -cfg.gamma, cfg.gamma, g)).to(x.device, x.dtype)
        x = x.clamp(min=1e-6) ** exponent.view(-1, 1, 1, 1)
    return x


def _where(p: float, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Per image: y with probability p, else x."""
    mask = (rng.rand(g, x.shape[0]) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(mask, y, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel: every pixel becomes its rank (ties by position)."""
    n, c, h, w = x.shape
    ranks = x.reshape(n, c, h * w).argsort(dim=-1).argsort(dim=-1)
    return (ranks.to(x.dtype) / max(h * w - 1, 1)).reshape(n, c, h, w)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (pixels) per image: one grouped convolution per axis."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(2 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma.to(x.device, x.dtype).view(-1, 1)) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, h, w)


def intensity_ops(x: torch.Tensor, cfg: ViewConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """The histogram-shape operations, blur and noise of `cfg` that are switched on."""
    n = x.shape[0]
    if cfg.equalize_p > 0:
        x = _where(cfg.equalize_p, x, equalize(x), g)
    if cfg.solarize_p > 0:
        x = _where(cfg.solarize_p, x, torch.where(x >= 0.5, 1 - x, x), g)
    if cfg.invert_p > 0:
        x = _where(cfg.invert_p, x, 1 - x, g)
    if cfg.blur_p > 0:
        sigma = _uniform(n, 0.1, max(cfg.blur_sigma, 0.1), g)
        x = _where(cfg.blur_p, x, gaussian_blur(x, sigma), g)
    if cfg.noise > 0:
        std = (rng.rand(g, n) * cfg.noise).to(x.device, x.dtype).view(-1, 1, 1, 1)
        # One noise value per pixel for all channels: luminance noise, so grey views stay grey.
        x = (x + std * rng.randn(g, n, 1, *x.shape[2:]).to(x.device, x.dtype)).clamp(0, 1)
    return x


def random_grayscale(x: torch.Tensor, p: float, g: torch.Generator | None = None) -> torch.Tensor:
    return _where(p, x, _gray(x).expand_as(x), g)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float 0..1 NCHW."""
    return images.float().div_(255)


def augment(x: torch.Tensor, cfg: ViewConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """One augmented view of float 0..1 images, not yet normalised."""
    v = random_resized_crop(x, cfg, g)
    if cfg.jitter_p > 0:
        v = color_jitter(v, cfg, g)
    if cfg.gray_p > 0:
        v = random_grayscale(v, cfg.gray_p, g)
    return intensity_ops(v, cfg, g)


class ViewGenerator:
    """Makes `n_views` independently augmented, normalised views of a uint8 NCHW batch."""

    def __init__(self, cfg: ViewConfig, n_views: int = 2) -> None:
        self.cfg = cfg
        self.n_views = n_views

    def __call__(self, images: torch.Tensor, g: torch.Generator | None = None) -> list[torch.Tensor]:
        x = to_float(images)
        views = []
        for _ in range(self.n_views):
            v = augment(x, self.cfg, g)
            views.append(normalize(v, self.cfg.mean, self.cfg.std).contiguous(memory_format=torch.channels_last))
        return views


class MultiCropViews:
    """DINO/SwAV multi-crop: `n_global` large crops at the training size and `n_local` small
    crops of small areas. Returns the global views first, then the local ones."""

    def __init__(self, cfg: ViewConfig, n_global: int = 2, n_local: int = 4,
                 global_scale: tuple[float, float] = (0.3, 1.0), local_scale: tuple[float, float] = (0.1, 0.3),
                 local_size: int | None = None) -> None:
        self.global_cfg = replace(cfg, scale=global_scale)
        self.local_cfg = replace(cfg, scale=local_scale, size=local_size or max(8, cfg.size // 2))
        self.n_global, self.n_local = n_global, n_local

    def __call__(self, images: torch.Tensor, g: torch.Generator | None = None) -> list[torch.Tensor]:
        x = to_float(images)
        out = []
        for i in range(self.n_global + self.n_local):
            cfg = self.global_cfg if i < self.n_global else self.local_cfg
            out.append(normalize(augment(x, cfg, g), cfg.mean, cfg.std).contiguous(memory_format=torch.channels_last))
        return out


def eval_transform(images: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """What the device does (images are already resized to `size` by the loader): scale + normalise."""
    x = to_float(images)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return normalize(x, mean, std).contiguous(memory_format=torch.channels_last)

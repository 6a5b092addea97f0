"""Frames to model input, exactly as the bundle's `PreprocessSpec` says.

Images are OpenCV's BGR uint8 HWC arrays; grayscale and BGRA are converted to BGR first.
The resize runs per image (OpenCV); the rest (channel order, scaling, mean/std, NCHW) runs
once on the stacked batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edgessl.edge_runtime.bundle.manifest import PreprocessSpec
from edgessl.errors import ImageError

_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 HWC (decoded from the bytes, so any path works)."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image file: {exc.strerror or exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError(f"{path}: not a readable image (supported: JPEG, PNG, WebP, BMP and what OpenCV decodes)")
    return image


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Return a 3-channel BGR uint8 view or copy of a BGR, BGRA or grayscale uint8 image."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ImageError(f"image must be a uint8 numpy array, got {kind}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ImageError(f"image shape {image.shape} is not HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA)")


def resize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize one BGR image to spec.input_size: stretch, or cover the target and centre-crop."""
    th, tw = spec.input_size
    ih, iw = image.shape[:2]
    if ih == 0 or iw == 0:
        raise ImageError(f"image has no pixels (shape {image.shape})")
    interpolation = _INTERPOLATION[spec.interpolation]
    if spec.interpolation == "area" and th * tw > ih * iw:
        # Area averaging is for shrinking; enlarging uses bilinear, as the training loader does.
        interpolation = cv2.INTER_LINEAR
    if spec.resize == "shorter_side_crop":
        # Scale so that the image covers the target (the shorter side, for a square target) and
        # keep the centre. Cropping first in source pixels means only what is kept gets resized.
        scale = max(th / ih, tw / iw)
        rh, rw = max(th, round(ih * scale)), max(tw, round(iw * scale))
        top, left = (rh - th) // 2, (rw - tw) // 2
        if (rh, rw) != (ih, iw):
            y0, y1 = round(top / scale), round((top + th) / scale)
            x0, x1 = round(left / scale), round((left + tw) / scale)
            image = image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
        else:
            return image[top:top + th, left:left + tw]
    if image.shape[:2] == (th, tw):
        return image
    return cv2.resize(image, (tw, th), interpolation=interpolation)


def preprocess(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """BGR uint8 HWC images -> float32 NCHW batch, normalised as the model expects."""
    th, tw = spec.input_size
    if not images:
        return np.zeros((0, 3, th, tw), np.float32)
    batch = np.stack([resize(to_bgr(im), spec) for im in images])  # N, H, W, 3 (BGR)
    if spec.channel_order == "RGB":
        batch = batch[..., ::-1]
    # One pass to NCHW float32, then one multiply-add: (x / 255 - mean) / std.
    x = np.asarray(batch.transpose(0, 3, 1, 2), dtype=np.float32, order="C")
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    x *= 1 / (np.float32(255) * std)
    x -= (np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1) / std)
    return x

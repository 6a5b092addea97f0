"""Frames to model input, exactly as the bundle's `PreprocessSpec` says.

Images are OpenCV's BGR uint8 HWC arrays; grayscale and BGRA are converted to BGR first.
Each crop is resized straight into one preallocated uint8 NHWC batch (`pack`). Artifacts
exported with the preprocessing in the graph (`Artifact.input == "uint8-nhwc-bgr"`) take
that batch as it is; older ones take `normalize(pack(...))`: channel order, scaling,
mean/std and NCHW in one pass over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edgessl.edge_runtime.bundle.manifest import InputKind, PreprocessSpec
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


def resize(image: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Resize one BGR image to spec.input_size: stretch, or cover the target and centre-crop.
    With `out` (a contiguous (H, W, 3) uint8 array), the result is written there."""
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
            image = image[top:top + th, left:left + tw]
    if image.shape[:2] == (th, tw):
        if out is None:
            return image
        out[...] = image
        return out
    if out is None:
        return cv2.resize(image, (tw, th), interpolation=interpolation)
    cv2.resize(image, (tw, th), dst=out, interpolation=interpolation)
    return out


def pack(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """BGR uint8 HWC images -> one uint8 (N, H, W, 3) BGR batch at the model's input size.
    Each crop is resized into its row of the batch: no per-crop arrays, no float copies."""
    th, tw = spec.input_size
    batch = np.empty((len(images), th, tw, 3), np.uint8)
    for row, image in zip(batch, images, strict=True):
        resize(to_bgr(image), spec, out=row)
    return batch


def normalize(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, H, W, 3) BGR batch -> float32 NCHW, normalised as the model expects: what an
    artifact with the preprocessing in its graph computes first."""
    if spec.channel_order == "RGB":
        batch = batch[..., ::-1]
    # One pass to NCHW float32, then one multiply-add: (x / 255 - mean) / std.
    x = np.asarray(batch.transpose(0, 3, 1, 2), dtype=np.float32, order="C")
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    x *= 1 / (np.float32(255) * std)
    x -= (np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1) / std)
    return x


def preprocess(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """BGR uint8 HWC images -> float32 NCHW batch, normalised as the model expects."""
    return normalize(pack(images, spec), spec)


def model_inputs(images: Sequence[np.ndarray], spec: PreprocessSpec, kind: InputKind) -> np.ndarray:
    """The batch an artifact that takes `kind` runs on (see Artifact.input)."""
    batch = pack(images, spec)
    return batch if kind == "uint8-nhwc-bgr" else normalize(batch, spec)


def input_shape(kind: InputKind, spec: PreprocessSpec) -> tuple[int, int, int]:
    """The shape of one image of a batch that an artifact taking `kind` runs on."""
    h, w = spec.input_size
    return (h, w, 3) if kind == "uint8-nhwc-bgr" else (3, h, w)


def check_model_inputs(inputs: np.ndarray, spec: PreprocessSpec, kind: InputKind) -> str | None:
    """Why `inputs` (e.g. a bundle's golden inputs) are not a batch for an artifact taking
    `kind`, or None when they are."""
    dtype = np.uint8 if kind == "uint8-nhwc-bgr" else np.float32
    shape = input_shape(kind, spec)
    if inputs.dtype != dtype or inputs.ndim != 4 or inputs.shape[1:] != shape or len(inputs) == 0:
        return (f"inputs are {inputs.dtype} {inputs.shape}; an artifact taking {kind} needs "
                f"{np.dtype(dtype)} (N, {', '.join(map(str, shape))})")
    return None

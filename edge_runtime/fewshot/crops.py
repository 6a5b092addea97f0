"""Exemplar crops as stored in the gallery: JPEG, scaled down to a bounded size."""

from __future__ import annotations

import cv2
import numpy as np

from edgessl.edge_runtime.inference.preprocess import to_bgr
from edgessl.errors import GalleryError

JPEG_QUALITY = 95


def fit_crop(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """`image` scaled down (INTER_AREA) so that its longest side is at most `max_side`."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def encode_crop(image: np.ndarray, max_side: int | None = None) -> bytes:
    """JPEG of a crop, scaled down first so that its longest side is at most `max_side`."""
    image = fit_crop(image, max_side)
    ok, buf = cv2.imencode(".jpg", to_bgr(image), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise GalleryError(f"cannot JPEG-encode a crop of shape {image.shape}")
    return buf.tobytes()


def decode_crop(blob: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise GalleryError("a stored crop is not a decodable JPEG (gallery damaged)")
    return image

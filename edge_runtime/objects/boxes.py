"""Boxes as (N, 4) float arrays of (x0, y0, x1, y1) in pixels, and the crops cut around them."""

from __future__ import annotations

import cv2
import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of the boxes of `a` (N, 4) and `b` (M, 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    inter = _intersection(a, b)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) share of each box of `a` that lies inside each box of `b`."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return _intersection(a, b) / np.maximum(area(a), 1e-12)[:, None]


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def area(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def to_cxcywh(box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = np.asarray(box, np.float64)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])


def to_xyxy(cxcywh: np.ndarray) -> np.ndarray:
    cx, cy, w, h = np.asarray(cxcywh, np.float64)[:4]
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def square_crop(image: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """The square around `box` whose side is its longer side plus `margin` of it on each side
    (context around the object, as the model saw whole objects in its training images); parts
    outside the frame are filled by replicating the border, so the object stays centred."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(2.0, max(x1 - x0, y1 - y0) * (1 + 2 * margin))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    sx0, sy0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    sx1, sy1 = sx0 + s, sy0 + s
    cx0, cy0, cx1, cy1 = max(0, sx0), max(0, sy0), min(w, sx1), min(h, sy1)
    if cx1 <= cx0 or cy1 <= cy0:
        return np.zeros((s, s, 3), np.uint8)
    inner = image[cy0:cy1, cx0:cx1]
    if (cx0, cy0, cx1, cy1) == (sx0, sy0, sx1, sy1):
        return np.ascontiguousarray(inner)
    return cv2.copyMakeBorder(inner, cy0 - sy0, sy1 - cy1, cx0 - sx0, sx1 - cx1, cv2.BORDER_REPLICATE)


def square_inside(box: np.ndarray, margin: float, width: int, height: int) -> float:
    """Share of `square_crop`'s square that lies inside the frame (1: the object is whole in view)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(2.0, max(x1 - x0, y1 - y0) * (1 + 2 * margin))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w = max(0.0, min(width, cx + side / 2) - max(0.0, cx - side / 2))
    h = max(0.0, min(height, cy + side / 2) - max(0.0, cy - side / 2))
    return w * h / (side * side)


def clip(box: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.clip(np.asarray(box, np.float64), 0, [width, height, width, height])

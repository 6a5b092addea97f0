"""Procedurally rendered shapes: a labelled image set and a video with known ground truth.

`make demo` and the tests use them, so neither needs a download or ../shared. Needs numpy
and OpenCV only. Colours, turns, sizes and places are random, so what a class has in common
is its shape and its surface pattern.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "triangle", "cross", "star")
# Each class has its own fill pattern as well as its shape (like real objects have both a form
# and a surface); colours, turns, sizes and places are random.
PATTERNS = {"circle": "solid", "square": "stripes", "triangle": "checker", "cross": "dots", "star": "rings"}


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
               for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(angle + k * math.pi / 5),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(angle + k * math.pi / 5)) for k in range(10)]
    elif kind == "cross":
        w = 0.33
        base = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w),
                (-w, w), (-w, 1)]
        c, s = math.cos(angle), math.sin(angle)
        pts = [(x * c - y * s, x * s + y * c) for x, y in base]
    else:
        raise ValueError(f"unknown shape {kind!r}; valid: {', '.join(CLASSES)}")
    return np.array([(cx + r * x, cy + r * y) for x, y in pts], dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plain grey tray plus sensor noise: the same scene behind every object."""
    bg = np.full((size, size, 3), 128, np.int16) + rng.integers(-6, 7, size=(size, size, 3), dtype=np.int16)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _color(rng: np.random.Generator) -> np.ndarray:
    """A random hue at one saturation and brightness (BGR)."""
    import cv2

    hsv = np.array([[[rng.uniform(0, 180), 200, 230]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.int64)


def render(kind: str, rng: np.random.Generator, size: int = 64, center: tuple[float, float] | None = None,
           radius: float | None = None, angle: float | None = None) -> np.ndarray:
    """One BGR uint8 image of a shape of class `kind`, about the middle of a grey tray.

    What varies per render is what a camera over a tray varies: the object's colour (any hue),
    turn (any angle), size (+-12%) and place (+-8% of the frame). Self-supervised views take
    each of those away (hue jitter, grey views, rotation, crops), so what stays is the class.
    Random per-render backgrounds, brightness and sizes gave the network cheaper cues to tell
    renders apart than the shape; measured at 1.5 min (5-way 5-shot, torch): 44.6% with them,
    77.8% without them (VICReg), random weights 25.7% and 43.3% (docs/benchmarks.md)."""

    img = _background(rng, size)
    r = radius if radius is not None else size * rng.uniform(0.28, 0.36)
    if center is None:
        jitter = 0.08 * size
        center = (float(np.clip(size / 2 + rng.uniform(-jitter, jitter), r, size - r)),
                  float(np.clip(size / 2 + rng.uniform(-jitter, jitter), r, size - r)))
    cx, cy = center
    a = angle if angle is not None else rng.uniform(0, 2 * math.pi)
    color = _color(rng)
    fill = _pattern(PATTERNS[kind], size, a, color)
    alpha = _mask(kind, (size, size), cx, cy, r, a)
    return (alpha * fill + (1 - alpha) * img).round().astype(np.uint8)


def _mask(kind: str, shape: tuple[int, int], cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """(H, W, 1) float32 coverage of the shape, anti-aliased."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    shift = 4  # sub-pixel precision for anti-aliased edges
    if kind == "circle":
        cv2.circle(mask, (round(cx * 16), round(cy * 16)), round(r * 16), 255, -1, cv2.LINE_AA, shift)
    else:
        pts = np.round(_polygon(kind, cx, cy, r, angle) * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, shift)
    return (mask.astype(np.float32) / 255)[:, :, None]


RADIUS_SHARE = 0.32  # a render's shape radius is about this share of the image side


def paint(canvas: np.ndarray, kind: str, center: tuple[float, float], radius: float, angle: float,
          color: np.ndarray) -> np.ndarray:
    """Draw a shape of class `kind` onto `canvas` (in place) with its surface pattern fixed to
    the shape, as a render of side radius / RADIUS_SHARE centred on it would show it; returns
    the (H, W) coverage of the shape on the canvas (for ground-truth boxes and occlusion)."""
    side = max(8, int(round(radius / RADIUS_SHARE)))
    ox, oy = int(round(center[0] - side / 2)), int(round(center[1] - side / 2))
    alpha = _mask(kind, (side, side), center[0] - ox, center[1] - oy, radius, angle)
    fill = _pattern(PATTERNS[kind], side, angle, color)
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = max(0, ox), max(0, oy), min(w, ox + side), min(h, oy + side)
    coverage = np.zeros((h, w), np.float32)
    if x1 <= x0 or y1 <= y0:
        return coverage
    a = alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    f = fill[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    canvas[y0:y1, x0:x1] = (a * f + (1 - a) * region).round().astype(np.uint8)
    coverage[y0:y1, x0:x1] = a[:, :, 0]
    return coverage


DARK = 0.4  # the pattern's darker shade, as a share of the colour


def _pattern(kind: str, size: int, angle: float, color: np.ndarray) -> np.ndarray:
    """The shape's surface: `color` and a darker shade of it in the class's pattern."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) * (64 / size)
    c, s = math.cos(angle), math.sin(angle)
    u, v = x * c + y * s, -x * s + y * c
    if kind == "solid":
        on = np.ones_like(u, bool)
    elif kind == "stripes":
        on = (u // 8) % 2 == 0
    elif kind == "checker":
        on = ((u // 9) + (v // 9)) % 2 == 0
    elif kind == "dots":
        on = ((u % 13 - 6.5) ** 2 + (v % 13 - 6.5) ** 2) > 16
    else:  # rings around the image centre, half the stripes' period: at 32x32, rings as wide as
        # the stripes looked like them (VICReg 1.5 min: 77.9-80.5% -> 86.4-86.9%, docs/benchmarks.md)
        on = (np.hypot(x - 32, y - 32) // 4) % 2 == 0
    return np.where(on[:, :, None], color.astype(np.float32), color.astype(np.float32) * DARK)


def write_image_set(root: Path, per_class: int, size: int = 64, seed: int = 0) -> dict[str, list[Path]]:
    """root/<class>/NNNN.png for every class; returns the paths per class."""
    import cv2

    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        out[kind] = []
        for i in range(per_class):
            path = root / kind / f"{i:04d}.png"
            cv2.imwrite(str(path), render(kind, rng, size))
            out[kind].append(path)
    return out


def video_frames(seconds_per_class: float = 2.0, fps: int = 10, size: int = 128,
                 seed: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """(true class, BGR frame): each class in turn, moving and turning across the frame."""
    rng = np.random.default_rng(seed)
    n = max(1, round(seconds_per_class * fps))
    for kind in CLASSES:
        # One scene per class segment: fixed background and colour, the shape moves and rotates.
        scene_seed = int(rng.integers(1 << 31))
        r = size * 0.32
        for t in range(n):
            u = t / max(1, n - 1)
            # The object slides and turns on the tray, within the place and size range of the renders.
            cx = size / 2 + 0.07 * size * math.sin(2 * math.pi * u)
            cy = size / 2 + 0.05 * size * math.cos(2 * math.pi * u)
            yield kind, render(kind, np.random.default_rng(scene_seed), size, (cx, cy), r, angle=u * math.pi)


def write_video(path: Path, seconds_per_class: float = 2.0, fps: int = 10, size: int = 128,
                seed: int = 1) -> list[str]:
    """Write an mp4 (mp4v) and return the true class of every frame."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (mp4v)")
    truth = []
    try:
        for kind, frame in video_frames(seconds_per_class, fps, size, seed):
            writer.write(frame)
            truth.append(kind)
    finally:
        writer.release()
    return truth


# The camera video: a wider frame, the object in the middle of it (the region the daemon
# classifies) and a fixed poster of another shape at the side that the region leaves out.
CAMERA_SIZE = (240, 160)  # width, height
CAMERA_REGION = {"x": 0.25, "y": 0.1, "width": 0.5, "height": 0.75}  # 120 x 120 pixels


def camera_frames(seconds_per_class: float = 2.5, fps: int = 12, seed: int = 7) -> Iterator[tuple[str, np.ndarray]]:
    """(true class, BGR frame) of the camera video: each class in turn, moving and turning in the region."""
    import cv2

    w, h = CAMERA_SIZE
    rng = np.random.default_rng(seed)
    x0, y0 = round(CAMERA_REGION["x"] * w), round(CAMERA_REGION["y"] * h)
    side = round(CAMERA_REGION["width"] * w)
    scene = cv2.resize(_background(rng, 32), (w, h), interpolation=cv2.INTER_LINEAR)
    poster = render(CLASSES[int(rng.integers(len(CLASSES)))], rng, 48)
    scene[h - 56:h - 8, 6:54] = poster
    for kind, tile in video_frames(seconds_per_class, fps, side, seed + 1):
        frame = scene.copy()
        frame[y0:y0 + side, x0:x0 + side] = tile
        yield kind, frame


def write_camera_video(path: Path, seconds_per_class: float = 2.5, fps: int = 12, seed: int = 7) -> list[str]:
    """Write the camera video (mp4v) and return the true class of every frame."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, CAMERA_SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (mp4v)")
    truth = []
    try:
        for kind, frame in camera_frames(seconds_per_class, fps, seed):
            writer.write(frame)
            truth.append(kind)
    finally:
        writer.release()
    return truth

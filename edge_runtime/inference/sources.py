"""Frames from SOURCE arguments: image files, folders of images and video files."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgessl.edge_runtime.inference.preprocess import read_image
from edgessl.errors import ImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm"})


@dataclass(frozen=True)
class Frame:
    source: str  # the file it came from
    index: int  # frame number in a video (counting every frame); 0 for an image
    timestamp_s: float | None  # position in a video; None for an image
    image: np.ndarray  # BGR uint8 HWC

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"Frame.image must be BGR uint8 HxWx3, got {self.image.dtype} {self.image.shape}")

    @property
    def is_video(self) -> bool:
        return self.timestamp_s is not None


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def expand(paths: Sequence[str | Path], *, videos: bool = True) -> list[Path]:
    """Files named by the arguments, in order: folders become their images (recursive, sorted).

    Raises ImageError for a missing path or a file whose type is not supported."""
    allowed = IMAGE_SUFFIXES | VIDEO_SUFFIXES if videos else IMAGE_SUFFIXES
    files: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in IMAGE_SUFFIXES)
            if not found:
                log.warning("%s: no images (%s) in this folder", path, ", ".join(sorted(IMAGE_SUFFIXES)))
            files.extend(found)
        elif path.is_file():
            if _suffix(path) not in allowed:
                raise ImageError(f"{path}: unsupported file type {path.suffix!r}; supported: "
                                 f"{', '.join(sorted(allowed))}, or a folder of images")
            files.append(path)
        else:
            raise ImageError(f"{path}: no such file or folder")
    return files


class FrameReader:
    """Iterate the frames of SOURCE arguments; unreadable images are logged, skipped and counted.

    `every=n` keeps every n-th video frame (frames 0, n, 2n, ...); images are always kept."""

    def __init__(self, sources: Sequence[str | Path], *, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.files = expand(sources)  # fails now, before any work, on a bad argument
        self.every = every
        self.skipped = 0

    def __iter__(self) -> Iterator[Frame]:
        for path in self.files:
            if _suffix(path) in VIDEO_SUFFIXES:
                yield from self._video(path)
                continue
            try:
                image = read_image(path)
            except ImageError as exc:
                log.warning("skipped: %s", exc)
                self.skipped += 1
                continue
            yield Frame(str(path), 0, None, image)

    def _video(self, path: Path) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise ImageError(f"{path}: cannot open video (supported: {', '.join(sorted(VIDEO_SUFFIXES))} "
                             "that OpenCV's FFmpeg can decode)")
        try:
            fps = cap.get(cv2.CAP_PROP_FPS)
            index = 0
            while True:
                if index % self.every:
                    if not cap.grab():  # skip without decoding
                        break
                else:
                    ok, image = cap.read()
                    if not ok:
                        break
                    timestamp = index / fps if fps > 0 else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
                    yield Frame(str(path), index, timestamp, image)
                index += 1
            if index == 0:
                log.warning("%s: video has no readable frames", path)
        finally:
            cap.release()

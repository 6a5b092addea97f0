"""Motion proposals: OpenCV background subtraction on a downscaled frame -> boxes.

    frame -> downscale to `width` -> MOG2 or KNN (shadows marked and dropped) ->
    masks zeroed -> opening (noise) and closing (holes, fragments of one object) -> outer
    contours -> bounding boxes -> boxes that touch or nearly touch merged -> frame pixels

Shadows: both subtractors mark pixels that are a darker copy of the background as shadow
(127); only sure foreground (255) makes boxes, so a person's shadow does not double their box.
The background model keeps learning, so an object that stops is absorbed into it after a while
(about `history` frames): the tracker keeps such a track by appearance (tracker.py).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from edgessl.edge_runtime.objects.proposals import ProposerOptions
from edgessl.edge_runtime.objects.zones import Masks

NAME = "motion"


class MotionOptions(ProposerOptions):
    """Background subtraction (OpenCV MOG2 or KNN) on a downscaled frame."""

    type: Literal["motion"] = Field(default="motion", description="boxes around what moves (background subtraction)")
    algorithm: Literal["mog2", "knn"] = Field(default="mog2", description="OpenCV's background subtractor: "
                                              "mog2 (Gaussian mixture) or knn (nearest neighbours)")
    width: int = Field(default=320, ge=32, le=4096, description="frames are scaled down to this width (at most) "
                       "before subtraction: cheaper, and less sensor noise")
    history: int = Field(default=300, ge=10, le=100_000, description="processed frames the background model "
                         "remembers; an object that stops is absorbed after about this many")
    threshold: float = Field(default=16.0, gt=0, le=10_000, description="how far a pixel must be from the "
                             "background model to be foreground (MOG2: squared Mahalanobis distance; KNN: "
                             "squared distance)")
    shadows: bool = Field(default=True, description="detect shadows and leave them out of the boxes")
    open_px: int = Field(default=3, ge=0, le=31, description="opening kernel (pixels at `width`): removes specks")
    close_px: int = Field(default=9, ge=0, le=63, description="closing kernel (pixels at `width`): joins the parts "
                          "of one object")
    merge_px: int = Field(default=4, ge=0, le=200, description="boxes closer than this (pixels at `width`) are "
                          "merged into one")
    warmup_frames: int = Field(default=10, ge=0, le=10_000, description="frames learned before proposing (the "
                               "first frames are all foreground)")


Options = MotionOptions


class MotionProposer:
    def __init__(self, options: MotionOptions, masks: Masks) -> None:
        self.options = options
        self.masks = masks
        self._reset()
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (options.open_px, options.open_px)) \
            if options.open_px > 1 else None
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (options.close_px, options.close_px)) \
            if options.close_px > 1 else None
        self._size: tuple[int, int] | None = None  # the frame's (width, height)
        self.foreground: np.ndarray | None = None  # the last mask, at `width` (for tests and the debug view)

    def _reset(self) -> None:
        """A new background model, learned from the next frames."""
        o = self.options
        self._sub: cv2.BackgroundSubtractor = (
            cv2.createBackgroundSubtractorMOG2(o.history, o.threshold, o.shadows) if o.algorithm == "mog2"
            else cv2.createBackgroundSubtractorKNN(o.history, o.threshold, o.shadows))
        self._frames = 0

    def _small(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        if self._size != (w, h):  # a new resolution (the camera changed): learn its view again
            self._reset()
            self._size = (w, h)
        if w <= self.options.width:
            return frame
        sw = self.options.width
        return cv2.resize(frame, (sw, max(1, round(h * sw / w))), interpolation=cv2.INTER_AREA)

    def propose(self, frame: np.ndarray) -> np.ndarray:
        small = self._small(frame)
        fg = self._sub.apply(small)
        self._frames += 1
        fg = np.where(fg == 255, np.uint8(255), np.uint8(0))  # shadows (127) are not objects
        mask = self.masks.raster(small.shape[1], small.shape[0])
        if mask is not None:
            fg[mask > 0] = 0
        if self._open is not None:
            fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, self._open)
        if self._close is not None:
            fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, self._close)
        self.foreground = fg
        if self._frames <= self.options.warmup_frames:
            return np.zeros((0, 4))
        contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes = np.array([(x, y, x + w, y + h) for x, y, w, h in map(cv2.boundingRect, contours)], np.float64)
        boxes = merge_boxes(boxes.reshape(-1, 4), self.options.merge_px)
        scale = frame.shape[1] / small.shape[1]
        return boxes * scale

    def background(self) -> np.ndarray | None:
        if self._size is None or self._frames <= self.options.warmup_frames:
            return None
        bg = self._sub.getBackgroundImage()
        if bg is None:
            return None
        if bg.ndim == 2:
            bg = cv2.cvtColor(bg, cv2.COLOR_GRAY2BGR)
        w, h = self._size
        return bg if bg.shape[1] == w else cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)


def merge_boxes(boxes: np.ndarray, gap: float) -> np.ndarray:
    """Merge boxes that overlap or lie within `gap` of each other, until none do."""
    todo = list(np.asarray(boxes, np.float64).reshape(-1, 4))
    merged = True
    while merged and len(todo) > 1:
        merged = False
        out: list[np.ndarray] = []
        for b in todo:
            for i, o in enumerate(out):
                if b[0] - gap <= o[2] and o[0] - gap <= b[2] and b[1] - gap <= o[3] and o[1] - gap <= b[3]:
                    out[i] = np.array([min(b[0], o[0]), min(b[1], o[1]), max(b[2], o[2]), max(b[3], o[3])])
                    merged = True
                    break
            else:
                out.append(b)
        todo = out
    return np.array(todo, np.float64).reshape(-1, 4)


def create(options: MotionOptions, masks: Masks) -> MotionProposer:
    return MotionProposer(options, masks)

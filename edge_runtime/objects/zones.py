"""Zones and masks: polygons in frame fractions, as Frigate has them.

A zone names a part of the view ("porch", "drive"): an object is in a zone when the bottom
centre of its box (where it touches the ground) lies inside the polygon; events and the
objects API say which zones an object is in. A mask is a part of the view where motion is
ignored (a tree in the wind, a clock, a road you do not care about). Points are (x, y)
fractions of the frame's width and height, so a config survives a change of resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np
from pydantic import Field, field_validator

from edgessl.edge_runtime.schema import NAME_PATTERN, StrictModel

Point = tuple[float, float]


def _polygon(points: list[Point], what: str) -> list[Point]:
    if len(points) < 3:
        raise ValueError(f"{what} needs at least 3 points (x, y as fractions of the frame), got {len(points)}")
    outside = [p for p in points if not (0.0 <= p[0] <= 1.0 and 0.0 <= p[1] <= 1.0)]
    if outside:
        raise ValueError(f"{what} has points outside the frame: {', '.join(f'({x:g}, {y:g})' for x, y in outside)}; "
                         "x and y are fractions of the frame's width and height, from 0 to 1")
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
    if area < 1e-4:
        raise ValueError(f"{what} is empty: its points enclose {area:.2g} of the frame (all on a line or one "
                         "point?); give the corners of the area in order")
    return points


class ZoneConfig(StrictModel):
    """A named area of the view; objects whose box's bottom centre lies in it are in the zone."""

    name: str = Field(pattern=NAME_PATTERN, description="zone name (letters, digits, '_' and '-'; at most 32 "
                      "characters); in events, MQTT and the objects API")
    points: list[Point] = Field(description="the polygon's corners in order, [x, y] as fractions of the frame "
                                "(0..1); at least 3")

    @field_validator("points")
    @classmethod
    def _points(cls, value: list[Point]) -> list[Point]:
        return _polygon(value, "the zone")


class MaskConfig(StrictModel):
    """An area where motion is ignored."""

    points: list[Point] = Field(description="the polygon's corners in order, [x, y] as fractions of the frame "
                                "(0..1); at least 3")

    @field_validator("points")
    @classmethod
    def _points(cls, value: list[Point]) -> list[Point]:
        return _polygon(value, "the mask")


def _pixels(points: Sequence[Point], width: int, height: int) -> np.ndarray:
    return np.array([[round(x * width), round(y * height)] for x, y in points], np.int32)


class Zones:
    """Which zones a box is in, for one camera."""

    def __init__(self, zones: Sequence[ZoneConfig]) -> None:
        self.zones = list(zones)
        self._polys = [np.array(z.points, np.float32) for z in self.zones]

    def of(self, box: np.ndarray, width: int, height: int) -> list[str]:
        """Names of the zones holding the bottom centre of `box` (pixels of a width x height frame)."""
        if not self.zones:
            return []
        x = (box[0] + box[2]) / 2 / width
        y = box[3] / height
        return [z.name for z, poly in zip(self.zones, self._polys, strict=True)
                if cv2.pointPolygonTest(poly, (float(x), float(min(y, 1.0))), False) >= 0]


class Masks:
    """The masked area of a camera as a raster at any size (255 where motion is ignored)."""

    def __init__(self, masks: Sequence[MaskConfig]) -> None:
        self.polygons = tuple(tuple(m.points) for m in masks)

    def __bool__(self) -> bool:
        return bool(self.polygons)

    def raster(self, width: int, height: int) -> np.ndarray | None:
        return _raster(self.polygons, width, height) if self.polygons else None


@lru_cache(maxsize=32)
def _raster(polygons: tuple[tuple[Point, ...], ...], width: int, height: int) -> np.ndarray:
    out = np.zeros((height, width), np.uint8)
    cv2.fillPoly(out, [_pixels(p, width, height) for p in polygons], 255)
    out.flags.writeable = False
    return out

"""A rendered camera scene with objects that come and go, and its ground truth (the objects demo).

A fixed camera looks at a tray-grey floor. Shapes of the demo's classes (any hue, each class
with its surface pattern, as in `synthetic`) enter from an edge, cross the view, some stop for a
while, and leave at another edge; their paths cross. Every frame's ground truth is each
visible object's id, class and box (the tight box of its pixels), written beside the video.

The script has two parts. The *enrollment* part shows each object to be enrolled alone, one
after the other, so a person (the demo) can name the track it makes. The *evaluation* part
brings those objects back (as a cat comes back to the door: the same object, in a new pose,
size, path and light) among strangers: shapes of classes never enrolled, in any colour.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgessl import synthetic

SIZE = (640, 360)  # width, height
FPS = 10


@dataclass(frozen=True)
class Leg:
    """The object moves from `start` to `end` (pixels) between times t0 and t1 (seconds)."""

    t0: float
    t1: float
    start: tuple[float, float]
    end: tuple[float, float]


@dataclass(frozen=True)
class SceneObject:
    id: int
    kind: str
    color: tuple[int, int, int]  # BGR
    radius: float
    legs: tuple[Leg, ...]  # consecutive; a leg with start == end is a stop
    spin: float  # radians per second while moving
    part: str  # "enrollment", "teaching" or "evaluation"
    role: str = "enrolled"  # "enrolled" (an object to name), "stranger" or "lookalike" (never enrolled)

    @property
    def t0(self) -> float:
        return self.legs[0].t0

    @property
    def t1(self) -> float:
        return self.legs[-1].t1

    def at(self, t: float) -> tuple[float, float, float] | None:
        """(x, y, angle) at time t, or None when it is not in the scene."""
        if t < self.t0 or t > self.t1:
            return None
        moved = 0.0
        for leg in self.legs:
            if t <= leg.t1:
                u = 0.0 if leg.t1 == leg.t0 else (t - leg.t0) / (leg.t1 - leg.t0)
                x = leg.start[0] + u * (leg.end[0] - leg.start[0])
                y = leg.start[1] + u * (leg.end[1] - leg.start[1])
                moving = leg.start != leg.end
                return x, y, self.spin * (moved + (t - leg.t0 if moving else 0.0))
            if leg.start != leg.end:
                moved += leg.t1 - leg.t0
        return None

    @property
    def stops(self) -> list[tuple[float, float]]:
        return [(leg.t0, leg.t1) for leg in self.legs if leg.start == leg.end]


def _edge_point(rng: np.random.Generator, side: str, r: float) -> tuple[float, float]:
    w, h = SIZE
    if side == "left":
        return -r, rng.uniform(0.3, 0.75) * h
    if side == "right":
        return w + r, rng.uniform(0.3, 0.75) * h
    if side == "top":
        return rng.uniform(0.2, 0.8) * w, -r
    return rng.uniform(0.2, 0.8) * w, h + r


def _color(rng: np.random.Generator, hue: float | None = None) -> tuple[int, int, int]:
    """A colour as the renders have them (any hue); with `hue`, that hue in a different light
    (+-2.5 hue units of white balance, 85-105% brightness)."""
    import cv2

    if hue is None:
        hsv = np.array([[[rng.uniform(0, 180), 200, 230]]], np.uint8)
    else:
        hsv = np.array([[[(hue + rng.uniform(-2.5, 2.5)) % 180, 200, 230 * rng.uniform(0.85, 1.05)]]], np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _stranger_hue(rng: np.random.Generator, hues: Sequence[float]) -> float:
    """A hue at least UNLIKE away from every enrolled object's hue (OpenCV's 0-180 scale)."""
    while True:
        hue = rng.uniform(0, 180)
        if all(min(abs(hue - h), 180 - abs(hue - h)) >= UNLIKE for h in hues):
            return hue


UNLIKE = 15  # hue units (of 180): strangers are at least this far from an enrolled object's hue


def plan(enrolled: Sequence[str], unenrolled: Sequence[str], *, seed: int = 0, returns: int = 4,
         strangers: int = 8, lookalikes: int = 2, stop_s: float = 6.0, gap_s: float = 3.0) -> list[SceneObject]:
    """The scene's objects, in three parts:

    - enrollment: each enrolled object (one per class in `enrolled`, each with a hue of its own)
      passes alone, to be named from its track;
    - teaching: a look-alike of each (a shape of a never-enrolled class in that object's hue)
      passes alone, to be rejected ("not X") if the daemon takes it for the object;
    - evaluation: each enrolled object comes back `returns` times (nearer or farther, in other
      light), with `strangers` never-enrolled shapes in hues unlike the enrolled objects' and
      `lookalikes` more look-alikes per enrolled object; one enters every 2.5-4 s, a third of
      them stop for `stop_s` in the middle of the view.

    Each object's `part` says which part it belongs to and `role` what it is (enrolled,
    stranger, lookalike)."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    objects: list[SceneObject] = []
    hues = {kind: (i + rng.uniform(0.2, 0.8)) * 180 / len(enrolled) for i, kind in enumerate(enrolled)}  # apart
    size = {kind: rng.uniform(30, 35) for kind in enrolled}
    t = 1.0

    def alone(kind: str, color: tuple[int, int, int], r: float, part: str, role: str) -> None:
        nonlocal t  # one pass left to right, alone in the view
        y = rng.uniform(0.35, 0.65) * h
        duration = (w + 2 * r) / rng.uniform(150, 190)
        objects.append(SceneObject(len(objects) + 1, kind, color, r, (Leg(t, t + duration, (-r, y), (w + r, y)),),
                                   rng.uniform(-0.8, 0.8), part, role))
        t += duration + 1.0

    for kind in enrolled:
        alone(kind, _color(rng, hues[kind]), size[kind], "enrollment", "enrolled")
    for kind in enrolled:
        alone(str(rng.choice(unenrolled)), _color(rng, hues[kind]), rng.uniform(28, 38), "teaching", "lookalike")
    t += gap_s
    cast = ([("enrolled", k) for k in enrolled for _ in range(returns)]
            + [("stranger", str(rng.choice(unenrolled))) for _ in range(strangers)]
            + [("lookalike", k) for k in enrolled for _ in range(lookalikes)])
    sides = ["left", "right", "top", "bottom"]
    for n, i in enumerate(rng.permutation(len(cast))):
        role, kind = cast[int(i)]
        if role == "enrolled":  # the same object, nearer or farther (+-12%), in other light
            shape, color, r = kind, _color(rng, hues[kind]), size[kind] * rng.uniform(0.88, 1.12)
        elif role == "lookalike":  # another shape in the enrolled object's hue
            shape, color, r = str(rng.choice(unenrolled)), _color(rng, hues[kind]), rng.uniform(28, 38)
        else:
            shape, color, r = kind, _color(rng, _stranger_hue(rng, list(hues.values()))), rng.uniform(28, 38)
        a, b = rng.choice(len(sides), 2, replace=False)
        start, end = _edge_point(rng, sides[a], r), _edge_point(rng, sides[b], r)
        speed = rng.uniform(70, 130)
        legs: list[Leg]
        if n % 3 == 1:  # stop in the middle part of the view for stop_s
            mid = (rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.65) * h)
            t1 = t + math.dist(start, mid) / speed
            t2 = t1 + stop_s
            legs = [Leg(t, t1, start, mid), Leg(t1, t2, mid, mid), Leg(t2, t2 + math.dist(mid, end) / speed, mid, end)]
        else:
            legs = [Leg(t, t + math.dist(start, end) / speed, start, end)]
        objects.append(SceneObject(len(objects) + 1, shape, color, r, tuple(legs), rng.uniform(-0.8, 0.8),
                                   "evaluation", role))
        t += rng.uniform(2.5, 4.0)
    return objects


def duration(objects: Sequence[SceneObject], tail_s: float = 1.0) -> float:
    return max(o.t1 for o in objects) + tail_s


def background(seed: int = 0) -> np.ndarray:
    """The floor: tray grey, a little uneven, with fixed sensor-like grain."""
    import cv2

    rng = np.random.default_rng(seed + 99)
    w, h = SIZE
    low = cv2.resize(rng.normal(0, 6, (9, 16)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    grain = rng.integers(-6, 7, size=(h, w, 3))
    return np.clip(128 + low[:, :, None] + grain, 0, 255).astype(np.uint8)


def frames(objects: Sequence[SceneObject], *, fps: int = FPS, seed: int = 0,
           tail_s: float = 1.0) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """(BGR frame, ground truth) for every frame: each visible object's id, class, box, part."""
    floor = background(seed)
    rng = np.random.default_rng(seed + 5)
    n = int(round(duration(objects, tail_s) * fps))
    for i in range(n):
        t = i / fps
        frame = floor.copy()
        truth = []
        for obj in objects:  # later ids are drawn over earlier ones
            pose = obj.at(t)
            if pose is None:
                continue
            x, y, angle = pose
            cover = synthetic.paint(frame, obj.kind, (x, y), obj.radius, angle, np.array(obj.color, np.int64))
            ys, xs = np.nonzero(cover > 0.5)
            if len(xs) < 20:
                continue
            truth.append({"id": obj.id, "class": obj.kind, "part": obj.part, "role": obj.role,
                          "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
        noise = rng.integers(-2, 3, size=frame.shape, dtype=np.int16)  # a little sensor noise per frame
        yield np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8), truth


def write(path: Path, objects: Sequence[SceneObject], *, fps: int = FPS, seed: int = 0,
          tail_s: float = 1.0) -> list[list[dict]]:
    """Write the video (mp4v) and `path.truth.json` (per frame: the visible objects) beside it;
    returns the per-frame truth."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (mp4v)")
    truth = []
    try:
        for frame, boxes in frames(objects, fps=fps, seed=seed, tail_s=tail_s):
            writer.write(frame)
            truth.append(boxes)
    finally:
        writer.release()
    meta = {"fps": fps, "size": list(SIZE), "objects": [asdict(o) for o in objects], "frames": truth}
    path.with_suffix(".truth.json").write_text(json.dumps(meta))
    return truth

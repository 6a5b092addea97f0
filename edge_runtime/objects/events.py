"""What an object did: entered, got its label, changed label, left. One event type for every sink."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from edgessl.edge_runtime.timestamps import iso

ObjectEventType = Literal["entered", "label", "changed", "left"]


@dataclass(frozen=True)
class ObjectEvent:
    """An object on a camera (a confirmed track) entered, was named, was renamed or left."""

    device: str
    camera: str
    event: ObjectEventType
    track: int  # the track's id (GET /v1/tracks/{track})
    label: str | None  # None until decided; then a class or "unknown"
    previous: str | None  # the label before ("changed"), else None
    score: float  # the track's mean score for `nearest` over its crops
    nearest: str | None  # the best class, also while unknown
    zones: tuple[str, ...]  # the zones it is in (at leaving: was last in)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the frame's pixels
    frame_size: tuple[int, int]  # width, height
    state: str  # moving, still, stationary, lost, ended
    first_seen: float  # wall clock
    last_seen: float
    frame: int  # the camera frame this was decided on
    capture_time: float
    decision_time: float
    model: str
    crops: int  # crops of the track embedded so far
    best_crop: str | None  # URL path of its sharpest kept crop
    present: dict[str, int] = field(default_factory=dict)  # objects on the camera now, by label

    @property
    def duration_s(self) -> float:
        return self.last_seen - self.first_seen

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = "object"
        out["zones"] = list(self.zones)
        out["box"] = list(self.box)
        out["frame_size"] = list(self.frame_size)
        out["score"] = round(self.score, 4)
        out["duration_s"] = round(self.duration_s, 2)
        for key in ("first_seen", "last_seen", "capture_time", "decision_time"):
            out[key] = iso(getattr(self, key))
        out["latency_ms"] = round((self.decision_time - self.capture_time) * 1000, 1)
        return out

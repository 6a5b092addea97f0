"""The annotated snapshot of a camera: its newest frame with each region's box and label and each
object's box, track id and label drawn on it (the page shows it, and the decisions drawn are
sent with it, so the text beside the picture is the same decision)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgessl.edge_runtime.daemon.config import RegionConfig
from edgessl.edge_runtime.daemon.errors import Conflict, DaemonError
from edgessl.edge_runtime.daemon.pipeline import Pipeline, RegionState
from edgessl.edge_runtime.daemon.streams import CameraStream
from edgessl.edge_runtime.fewshot.labels import UNKNOWN

KNOWN, UNSURE, TRACKED = (60, 200, 60), (0, 170, 255), (255, 190, 60)  # BGR


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    h, w = image.shape[:2]
    scale = max(0.4, min(1.0, w / 640))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    ty = max(th + 4, y + th + 4)
    cv2.rectangle(image, (x, ty - th - 4), (x + tw + 4, ty + 2), (0, 0, 0), -1)
    cv2.putText(image, text, (x + 2, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def draw(image: np.ndarray, regions: Sequence[RegionConfig], states: Mapping[str, RegionState],
         objects: Sequence[Mapping[str, Any]] = ()) -> np.ndarray:
    """A copy of `image` with the regions' and objects' boxes and labels."""
    image = image.copy()
    h, w = image.shape[:2]
    for region in regions:
        x0, y0, x1, y1 = region.box(w, h)
        st = states[region.name]
        shown = st.label or "..."
        if st.label == UNKNOWN and st.nearest:
            shown = f"unknown (~{st.nearest})"
        color = KNOWN if st.label not in (None, UNKNOWN) else UNSURE
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), color, 2)
        _label(image, f"{region.name}: {shown} {st.score:.2f}", x0, y0, color)
    for obj in objects:
        x0, y0, x1, y1 = (int(v) for v in obj["box"])
        label = obj.get("label")
        color = KNOWN if label not in (None, UNKNOWN) else (UNSURE if label == UNKNOWN else TRACKED)
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), color, 2)
        _label(image, f"#{obj['id']} {label or '...'}", x0, max(0, y0 - 18), color)
    return image


@dataclass(frozen=True)
class Snapshot:
    jpeg: bytes
    states: list[dict[str, Any]]  # the region states drawn on it
    objects: list[dict[str, Any]]  # the objects drawn on it


def take(stream: CameraStream, pipeline: Pipeline, *, annotate: bool = True, quality: int = 80) -> Snapshot:
    """The newest frame of `stream` as JPEG, with what the pipeline decided last drawn on it."""
    frame = stream.latest()
    if frame is None:
        raise Conflict(f"camera {stream.id} has no frame yet (state {stream.state})")
    regions = stream.config.region_list
    states = pipeline.region_states(stream.id)
    stage = pipeline.stages.get(stream.id)
    objects = stage.objects() if stage is not None else []
    image = draw(frame.image, regions, states, objects) if annotate else frame.image
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DaemonError(f"cannot JPEG-encode the frame of camera {stream.id}")
    drawn = [{**states[r.name].as_dict(), "snapshot_frame": frame.seq} for r in regions]
    return Snapshot(buf.tobytes(), drawn, objects)

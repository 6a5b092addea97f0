"""The annotated snapshot of a camera: its newest frame with each region's box and label and each
object's box, track id and label drawn on it (the page shows it, and the decisions drawn are
sent with it, so the text beside the picture is the same decision)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from edgessl.edge_runtime.daemon.config import RegionConfig
from edgessl.edge_runtime.daemon.pipeline import RegionState
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

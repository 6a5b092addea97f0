"""Does each camera still look like it did when the model was installed? A drift signal.

Per camera: a reference centroid, the mean of the first `reference_crops` embeddings after a
model was installed or switched to, and a running mean (an exponential moving average with
`alpha`) of the embeddings since. The score is

    drift = 1 - cos(running mean, reference mean)

Why this statistic: the embeddings are centred (the pretraining mean subtracted) and
L2-normalised, so a camera's mean embedding points towards what it usually sees; when the
scene changes (season, lighting, a moved camera, new things in view), the direction moves.
The cosine ignores the mean's length, which shrinks when the crops merely vary more without
looking different on the whole; it is the first-moment test (a linear-kernel MMD, normalised).
It costs O(D) per crop and O(D) memory per camera, keeps no crops, and works before any class
is enrolled. What it misses: a change that keeps the mean (only the spread grows); and it says
that the inputs moved, not that the decisions got worse; the server decides what to do with it.

When a camera's score reaches `threshold` an event is returned; the next one needs the score
to fall below `threshold - hysteresis` first. The references (with the running means and
whether each camera is in drift) are kept in `state_dir/drift.json` under the model's tag: a
restart keeps them, a new model starts again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgessl.edge_runtime.samples.config import DriftConfig
from edgessl.edge_runtime.timestamps import iso

log = logging.getLogger(__name__)


@dataclass
class _Camera:
    total: np.ndarray  # sum of the reference crops so far
    count: int = 0
    reference: np.ndarray | None = None  # their mean, once `reference_crops` were seen
    running: np.ndarray | None = None
    alerted: bool = False
    score: float | None = None


def _cos_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na < 1e-12 or nb < 1e-12:
        return None
    return float(1.0 - np.dot(a, b) / (na * nb))


def read_scores(path: Path) -> dict[str, float]:
    """Each camera's drift score as the daemon last saved it (`path`: its drift.json), for a
    reader outside the daemon (the harvest from a state folder); {} when there is none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    scores = {}
    for cameras in data.values() if isinstance(data, dict) else ():
        for camera, c in cameras.items() if isinstance(cameras, dict) else ():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                score = _cos_distance(np.asarray(c["running"], np.float32), np.asarray(c["reference"], np.float32))
                if score is not None:
                    scores[str(camera)] = round(score, 4)
    return scores


class DriftMonitor:
    """`reset(model)`, then `update(camera, embeddings)` -> a drift event or None; `save()` at exit."""

    def __init__(self, path: Path | None, config: DriftConfig) -> None:
        self.path = path  # None: nothing persisted
        self.config = config
        self.model: str | None = None
        self._cameras: dict[str, _Camera] = {}

    def reset(self, model: str) -> None:
        """Use `model`'s references (from the file when it has them), else start collecting new ones."""
        if model == self.model:
            return
        self.model = model
        self._cameras = {}
        stored = self._read().get(model)
        for camera, entry in (stored if isinstance(stored, dict) else {}).items():
            try:
                reference = np.asarray(entry["reference"], np.float32)
                running = np.asarray(entry.get("running", entry["reference"]), np.float32)
                if reference.ndim != 1 or running.shape != reference.shape:
                    raise ValueError("shapes differ")
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s: the drift reference of camera %s is unreadable (%s); collecting a new one",
                            self.path, camera, exc)
                continue
            cam = _Camera(reference * int(entry.get("count", 1)), int(entry.get("count", 1)), reference, running,
                          bool(entry.get("alerted", False)))
            cam.score = _cos_distance(running, reference)
            self._cameras[camera] = cam
        log.info("drift: model %s, references of %d cameras kept from before", model, len(self._cameras))

    def update(self, camera: str, embeddings: np.ndarray, now: float | None = None) -> dict[str, Any] | None:
        """Feed (N, D) embeddings (centred, normalised) of `camera`; a drift event when it starts."""
        if self.model is None:
            return None
        x = np.asarray(embeddings, np.float32).reshape(len(embeddings), -1)
        if not len(x):
            return None
        cam = self._cameras.get(camera)
        if cam is None or cam.total.shape != x.shape[1:]:  # first crops, or another embedding size
            cam = self._cameras[camera] = _Camera(np.zeros(x.shape[1], np.float64))
        if cam.reference is None:
            take = min(len(x), self.config.reference_crops - cam.count)
            cam.total += x[:take].sum(axis=0)
            cam.count += take
            x = x[take:]
            if cam.count < self.config.reference_crops:
                return None
            cam.reference = (cam.total / cam.count).astype(np.float32)
            cam.running = cam.reference.copy()
            log.info("drift: camera %s has its reference (%d crops, model %s)", camera, cam.count, self.model)
            self.save()
        assert cam.running is not None
        if len(x):
            a = self.config.alpha
            weights = a * (1 - a) ** np.arange(len(x) - 1, -1, -1)  # the newest weighs most
            cam.running = ((1 - a) ** len(x) * cam.running + weights @ x).astype(np.float32)
        cam.score = _cos_distance(cam.running, cam.reference)
        return self._event(camera, cam, now)

    def _event(self, camera: str, cam: _Camera, now: float | None) -> dict[str, Any] | None:
        if cam.score is None:
            return None
        threshold = self.config.threshold
        if cam.alerted and cam.score < threshold - self.config.hysteresis:
            cam.alerted = False
            log.info("drift: camera %s is back near its reference (%.3f)", camera, cam.score)
        elif not cam.alerted and cam.score >= threshold:
            cam.alerted = True
            log.warning("drift: camera %s no longer looks like it did when model %s was installed: "
                        "1 - cos(running mean, reference) = %.3f >= %.3f", camera, self.model, cam.score, threshold)
            return {"type": "drift", "camera": camera, "score": round(cam.score, 4), "threshold": threshold,
                    "model": self.model, "time": iso(time.time() if now is None else now)}
        return None

    def score(self, camera: str) -> float | None:
        cam = self._cameras.get(camera)
        return None if cam is None else cam.score

    def status(self) -> dict[str, dict[str, Any]]:
        """Per camera: score, reference crops seen (of `reference_crops`), whether it is in drift."""
        return {camera: {"score": None if c.score is None else round(c.score, 4), "reference_crops": c.count,
                         "ready": c.reference is not None, "drift": c.alerted}
                for camera, c in list(self._cameras.items())}

    # -- the file -----------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot read the drift references (%s); collecting new ones", self.path, exc)
            return {}

    def save(self) -> None:
        """Write the current model's complete references (only those: a new model replaces the file's
        content), atomically. A read-only or full disk is logged, not raised."""
        if self.path is None or self.model is None:
            return
        cameras = {camera: {"reference": c.reference.tolist(), "count": c.count,
                            "running": (c.running if c.running is not None else c.reference).tolist(),
                            "alerted": c.alerted}
                   for camera, c in self._cameras.items() if c.reference is not None}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps({self.model: cameras}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("%s: cannot keep the drift references (%s); a restart collects them again", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

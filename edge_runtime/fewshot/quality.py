"""Enrollment quality: gates on each live shot, and figures per class.

Shots: a shot is rejected when it is blurry (variance of the Laplacian), too dark or washed
out (mean grey level), or a near-duplicate of a shot already kept (mean absolute difference of
32x32 grey thumbnails), and the reason names the figure and the limit.

Classes: the number of exemplars, the leave-one-out accuracy (each exemplar classified
against the prototypes made without it), the nearest confusable class (the other
prototype closest to this one), the leave-one-out margin to it, the class's calibrated
threshold, and a recommendation a person can act on ("add 3 more shots from another angle",
"this looks like X: add negatives", "enough"), so a person knows when a class has enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edgessl.edge_runtime.daemon.config import EnrollmentConfig
from edgessl.edge_runtime.fewshot.calibration import ClassThreshold, calibrate_thresholds
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.edge_runtime.inference.preprocess import to_bgr

SHARPNESS_SIDE = 256  # crops are scaled to this longer side before measuring sharpness
THUMB = 32
ENOUGH_SHOTS = 5  # below this, more shots are the first advice (5-10 varied shots give a stable prototype)
MORE_SHOTS = 3  # how many more shots to ask for at a time
MIN_LOO = 0.8  # below this leave-one-out accuracy a class is often mistaken for another
MIN_MARGIN = 0.05  # below this mean leave-one-out margin a class sits on top of another


@dataclass(frozen=True)
class ShotCheck:
    ok: bool
    reason: str | None  # why the shot was rejected
    sharpness: float
    brightness: float
    difference: float | None  # to the most similar kept shot; None when none was kept yet
    thumbnail: np.ndarray  # (THUMB, THUMB) float32 grey, for the next shots' duplicate check

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "reason": self.reason, "sharpness": round(self.sharpness, 1),
                "brightness": round(self.brightness, 1),
                "difference": None if self.difference is None else round(self.difference, 2)}


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(to_bgr(image), cv2.COLOR_BGR2GRAY)


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image scaled to SHARPNESS_SIDE on its longer side."""
    grey = _grey(image)
    h, w = grey.shape
    scale = SHARPNESS_SIDE / max(h, w)
    if scale != 1:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def brightness(image: np.ndarray) -> float:
    return float(_grey(image).mean())


def thumbnail(image: np.ndarray) -> np.ndarray:
    return cv2.resize(_grey(image), (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def check_shot(image: np.ndarray, config: EnrollmentConfig, kept: Sequence[np.ndarray] = ()) -> ShotCheck:
    """Check one shot against the gates; `kept` are the thumbnails of the shots kept so far."""
    sharp, bright, thumb = sharpness(image), brightness(image), thumbnail(image)
    diff = min((float(np.abs(thumb - k).mean()) for k in kept), default=None)
    reason = None
    if bright < config.min_brightness:
        reason = f"too dark: mean grey level {bright:.0f} < {config.min_brightness:g}"
    elif bright > config.max_brightness:
        reason = f"washed out: mean grey level {bright:.0f} > {config.max_brightness:g}"
    elif sharp < config.min_sharpness:
        reason = f"blurry: sharpness {sharp:.1f} < {config.min_sharpness:g} (variance of the Laplacian)"
    elif diff is not None and diff < config.min_difference:
        reason = (f"near-duplicate of a shot already kept: difference {diff:.2f} < {config.min_difference:g} "
                  "(move the object or the camera between shots)")
    return ShotCheck(reason is None, reason, sharp, bright, diff, thumb)


@dataclass(frozen=True)
class ClassQuality:
    label: str
    exemplars: int
    negatives: int
    loo_accuracy: float | None  # None with fewer than 2 exemplars
    nearest_class: str | None  # the other class whose prototype is closest; None when it is the only class
    nearest_similarity: float | None  # centred cosine between the two prototypes
    advice: str
    # Mean over exemplars of (similarity to the own prototype without it - the best other prototype's):
    # > 0 the class stands apart, < 0 its exemplars sit closer to another class. None as loo_accuracy.
    margin: float | None = None
    threshold: float | None = None  # the class's threshold (calibration.py)
    threshold_calibrated: bool | None = None  # False: the global fallback
    threshold_reason: str | None = None
    recommendation: str = ""  # the one next step: "add 3 more shots from another angle", ..., "enough"

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def recommendation(label: str, n: int, loo: float | None, margin: float | None, nearest: str | None) -> str:
    """The next thing a person should do for this class, or "enough"."""
    if n == 0:
        return f"only negative examples: add shots of {label}"
    if n < ENOUGH_SHOTS and (loo is None or loo >= MIN_LOO):
        k = ENOUGH_SHOTS - n
        return f"add {k} more shot{'s' if k > 1 else ''} from another angle"
    if nearest is not None and ((loo is not None and loo < MIN_LOO) or (margin is not None and margin < MIN_MARGIN)):
        return f"this looks like {nearest}: add negatives (shots of {nearest} marked 'not {label}')"
    if loo is not None and loo < 1.0:
        return f"add {MORE_SHOTS} more shots from another angle"
    return "enough"


def _advice(n: int, loo: float | None, nearest: str | None, similarity: float | None) -> str:
    if n == 0:
        return "only negative examples: enroll positive examples too"
    if n < 3:
        return f"{n} example{'s' if n > 1 else ''}: enroll at least 3 (5-10 varied shots give a stable prototype)"
    if loo is not None and loo < 0.8:
        return (f"leave-one-out accuracy {loo:.0%}: often mistaken for {nearest!r}; add varied examples "
                "of both, or negative examples")
    if similarity is not None and similarity > 0.8:
        return f"close to {nearest!r} (similarity {similarity:.2f}): add examples that tell them apart"
    return "good"


def class_quality(labels: Sequence[str], embeddings: np.ndarray, center: np.ndarray | None,
                  counts: dict[str, tuple[int, int]] | None = None, *,
                  thresholds: Sequence[ClassThreshold] | None = None, background: np.ndarray | None = None,
                  fallback: float = 0.5) -> list[ClassQuality]:
    """Figures per class from the positive exemplars' raw embeddings (labels[i] is row i's class).

    `counts` (label -> (exemplars, negatives)) adds classes that have no positive exemplar.
    `thresholds`: the classifier's (FewShotClassifier.thresholds()), so the page shows the ones in
    use; without them they are calibrated here from the gallery (and `background`, `fallback`)."""
    labels_arr = np.asarray(labels)
    unique = sorted(set(labels) | set(counts or {}))
    with_rows = [c for c in unique if (labels_arr == c).any()]
    x = center_normalize(embeddings, center) if len(labels) else np.zeros((0, 1), np.float32)
    index = {c: i for i, c in enumerate(with_rows)}
    sums = np.zeros((len(with_rows), x.shape[1]), np.float64)
    n_per = np.zeros(len(with_rows), np.int64)
    for row, lab in zip(x, labels, strict=True):
        sums[index[lab]] += row
        n_per[index[lab]] += 1
    protos = center_normalize(sums.astype(np.float32))
    proto_sim = protos @ protos.T if len(protos) else np.zeros((0, 0), np.float32)

    # Leave one out: exemplar i against its own class's prototype without it, and every other prototype.
    correct = np.zeros(len(with_rows), np.int64)
    margin_sum = np.zeros(len(with_rows), np.float64)
    if len(labels):
        scores = x @ protos.T  # (N, C)
        own = np.array([index[lab] for lab in labels])
        loo_protos = center_normalize((sums[own] - x).astype(np.float32))
        scores[np.arange(len(x)), own] = np.einsum("nd,nd->n", x, loo_protos)
        hit = scores.argmax(axis=1) == own
        np.add.at(correct, own, hit.astype(np.int64))
        if len(with_rows) >= 2:
            others = scores.copy()
            others[np.arange(len(x)), own] = -np.inf
            np.add.at(margin_sum, own, scores[np.arange(len(x)), own] - others.max(axis=1))
    if thresholds is None:
        thresholds = calibrate_thresholds(list(labels), embeddings, center, background, fallback=fallback)
    by_label = {t.label: t for t in thresholds}

    out = []
    for label in unique:
        n = int((labels_arr == label).sum())
        neg = (counts or {}).get(label, (n, 0))[1]
        loo = nearest = similarity = margin = None
        if label in index:
            i = index[label]
            if n >= 2 and len(with_rows) >= 2:
                loo = float(correct[i] / n)
                margin = round(float(margin_sum[i] / n), 4)
            elif n >= 2:
                loo = 1.0  # one class: nothing to confuse it with
            if len(with_rows) >= 2:
                sims = proto_sim[i].copy()
                sims[i] = -np.inf
                j = int(sims.argmax())
                nearest, similarity = with_rows[j], round(float(sims[j]), 4)
        t = by_label.get(label)
        out.append(ClassQuality(label, n, neg, None if loo is None else round(loo, 4), nearest, similarity,
                                _advice(n, loo, nearest, similarity), margin,
                                None if t is None else round(t.threshold, 4), None if t is None else t.calibrated,
                                None if t is None else t.reason, recommendation(label, n, loo, margin, nearest)))
    return out


@dataclass
class StopRule:
    """When a live enrollment `until="stable"` has enough: after each kept shot, `update` gets the
    class's exemplar count and leave-one-out figures (accuracy, margin to the nearest other class)
    and answers (code, reason) to stop, or None to go on.

    - "stable": at least `min_total` exemplars, leave-one-out accuracy 1.0 and a margin of at
      least `margin` (or no other class to be confused with);
    - "no_gain": the figures (accuracy, then margin) did not improve by more than `eps` over the
      last `patience` shots, once there are `min_total` exemplars."""

    min_total: int = ENOUGH_SHOTS
    margin: float = 0.1
    patience: int = 3
    eps: float = 1e-3
    best: tuple[float, float] | None = None
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, total: int, loo: float | None, margin: float | None) -> tuple[str, str] | None:
        self.history.append({"exemplars": total, "loo_accuracy": loo, "margin": margin})
        if loo is not None:
            figure = (loo, margin if margin is not None else 0.0)
            if self.best is None or figure[0] > self.best[0] + self.eps or (
                    figure[0] >= self.best[0] - self.eps and figure[1] > self.best[1] + self.eps):
                self.best, self.since_best = figure, 0
            else:
                self.since_best += 1
        if total < self.min_total or loo is None:
            return None
        if loo >= 1.0 and margin is None:
            return "stable", (f"{total} exemplars, leave-one-out accuracy 100% and no other class to confuse "
                              "it with")
        if loo >= 1.0 and margin is not None and margin >= self.margin:
            return "stable", (f"{total} exemplars, leave-one-out accuracy 100% with margin {margin:.2f} "
                              f"≥ {self.margin:g} to the nearest class")
        if self.since_best >= self.patience:
            assert self.best is not None
            return "no_gain", (f"the leave-one-out figures did not improve over the last {self.patience} shots "
                               f"(best: accuracy {self.best[0]:.0%}, margin {self.best[1]:.2f}); "
                               "more shots of the same view will not help: change the view or add negatives")
        return None

"""A track's label from all of its crops, not one frame.

Each embedded crop of a track is kept (the newest `window`, each with a weight: its
sharpness rank); the label is decided on all of them against the gallery as it is now, so an
object that passed before a class was enrolled is named once it is, and a crop that came out
badly (a blur, a moment of occlusion) is outvoted:

- the class with the highest weighted median score over the crops (the same cohort-normalised
  centred cosine, with the same vetoes by negative examples, that a region's crop gets): the
  median, because a few crops of something else (a blob two objects made for a moment) must not
  carry the track;
- it is the label when that median clears the class's calibrated threshold (+ `margin`) and the
  class is the head's choice for at least `min_agreement` of the crops; else `unknown`;
- nothing is said before `min_crops` crops' worth of evidence: a partial view (an object coming
  in at the frame's edge) counts as the share of it that is in view, squared;
- a label changes only when two decisions in a row say so.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgessl.edge_runtime.fewshot.classifier import ClassScores
from edgessl.edge_runtime.fewshot.labels import UNKNOWN
from edgessl.edge_runtime.objects.config import DecisionConfig

Scorer = Callable[[np.ndarray], ClassScores]  # centred, normalised (N, D) embeddings -> scores


@dataclass(frozen=True)
class Verdict:
    label: str | None  # None: not enough crops yet
    score: float  # the (weighted median) score of `nearest` over the crops
    nearest: str | None  # the best class, also when the label is unknown
    threshold: float | None  # that class's threshold
    agreement: float  # share of the crops whose own best class is `nearest`
    crops: int


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(C,) weighted median of each column of (N, C) `values`."""
    order = np.argsort(values, axis=0)
    w = weights[order]  # (N, C): the weights in each column's sorted order
    cum = np.cumsum(w, axis=0)
    idx = (cum >= 0.5 * cum[-1]).argmax(axis=0)  # the first row past half the weight, per column
    columns = np.arange(values.shape[1])
    return values[order[idx, columns], columns]


class Evidence:
    def __init__(self, config: DecisionConfig) -> None:
        self.config = config
        self._emb: deque[np.ndarray] = deque(maxlen=config.window)
        self._weight: deque[float] = deque(maxlen=config.window)
        self.label: str | None = None
        self.verdict = Verdict(None, 0.0, None, None, 0.0, 0)
        self._pending: str | None = None

    def __len__(self) -> int:
        return len(self._emb)

    def add(self, embedding: np.ndarray, weight: float = 1.0) -> None:
        self._emb.append(np.asarray(embedding, np.float32))
        self._weight.append(min(1.0, max(1e-3, float(weight))))

    def judge(self, scorer: Scorer) -> Verdict:
        """What the crops say now (does not change the label)."""
        cfg = self.config
        if not self._emb:
            return Verdict(None, 0.0, None, None, 0.0, 0)
        scores = scorer(np.stack(self._emb))
        n = len(self._emb)
        w = np.asarray(self._weight, np.float64)
        if not scores.labels:
            return Verdict(UNKNOWN if w.sum() >= cfg.min_crops - 1e-6 else None, 0.0, None, None, 0.0, n)
        mean = weighted_median(scores.scores, w)
        best = int(mean.argmax())
        chosen = scores.chosen if scores.chosen is not None else scores.scores.argmax(axis=1)
        agreement = float(w[chosen == best].sum() / w.sum())
        threshold = float(scores.thresholds[best]) if scores.thresholds is not None else 0.5
        if w.sum() < cfg.min_crops - 1e-6:
            label = None
        elif mean[best] >= threshold + cfg.margin and agreement >= cfg.min_agreement:
            label = scores.labels[best]
        else:
            label = UNKNOWN
        return Verdict(label, float(mean[best]), scores.labels[best], threshold, agreement, n)

    def update(self, scorer: Scorer) -> tuple[str | None, str | None]:
        """Judge again; returns (previous, new) when the label changed, else (label, label)."""
        self.verdict = v = self.judge(scorer)
        previous = self.label
        if v.label is None or v.label == previous:
            self._pending = None
            return previous, previous
        if previous is None or self._pending == v.label:  # the first label needs no second opinion
            self.label, self._pending = v.label, None
            return previous, v.label
        self._pending = v.label
        return previous, previous

"""Stable labels from noisy per-frame scores: EMA of each class's score, hysteresis, N in a row.

One `Smoother` per camera region. Each processed frame gives a score per class (centred
cosine to the class prototype); the smoother keeps an exponential moving average of each
class's score and proposes a label from the averages:

- the best class if its average reaches `threshold`, else `unknown`;
- hysteresis: the current label stays while its average is at least `threshold - hysteresis`
  and no other class beats it by more than `hysteresis`;
- a proposal different from the current label must come `consecutive` frames in a row
  before it replaces it (and an event is emitted).

So a flickering input (red, blue, red, blue, ...) does not flicker the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgessl.edge_runtime.fewshot.labels import UNKNOWN


@dataclass(frozen=True)
class Decision:
    label: str | None  # the stable label; None until the first one is settled
    score: float  # smoothed score of `label` (of the best class while unknown; 0.0 without classes)
    changed: bool  # this frame settled a new label
    previous: str | None  # the label before a change (None at the first decision)
    proposal: str  # what this frame alone (after smoothing) would say
    streak: int  # how many frames in a row `proposal` has been proposed against the current label


class Smoother:
    def __init__(self, threshold: float, alpha: float = 0.5, hysteresis: float = 0.05, consecutive: int = 3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
        if hysteresis < 0 or consecutive < 1:
            raise ValueError(f"hysteresis must be >= 0 and consecutive >= 1, got {hysteresis} and {consecutive}")
        self.threshold = threshold
        self.alpha = alpha
        self.hysteresis = hysteresis
        self.consecutive = consecutive
        self.ema: dict[str, float] = {}
        self.limits: Mapping[str, float] = {}  # per-class thresholds (calibrated); `threshold` otherwise
        self.label: str | None = None
        self._candidate: str | None = None
        self._streak = 0

    def reset(self) -> None:
        """Forget the averages (after a model change: the scores of the new model are not comparable)."""
        self.ema.clear()

    def _propose(self) -> str:
        if not self.ema:
            return UNKNOWN
        best = max(self.ema, key=self.ema.__getitem__)
        best_score = self.ema[best]
        current = self.label
        if current is not None and current != UNKNOWN and current in self.ema:
            cur_score = self.ema[current]
            if cur_score >= self._limit(current) - self.hysteresis and best_score <= cur_score + self.hysteresis:
                return current
        return best if best_score >= self._limit(best) else UNKNOWN

    def _limit(self, label: str) -> float:
        return self.limits.get(label, self.threshold)

    def update(self, scores: Mapping[str, float], thresholds: Mapping[str, float] | None = None) -> Decision:
        """Add one frame's scores (class -> score; classes not listed are forgotten); `thresholds`:
        each class's own threshold (the classes' calibrated ones), else `threshold` for all."""
        self.limits = thresholds or {}
        for label in [k for k in self.ema if k not in scores]:
            del self.ema[label]
        a = self.alpha
        for label, score in scores.items():
            prev = self.ema.get(label)
            self.ema[label] = float(score) if prev is None else (1 - a) * prev + a * float(score)
        proposal = self._propose()
        previous = self.label
        changed = False
        if proposal == self.label:
            self._candidate, self._streak = None, 0
        else:
            if proposal == self._candidate:
                self._streak += 1
            else:
                self._candidate, self._streak = proposal, 1
            if self._streak >= self.consecutive:
                self.label, changed = proposal, True
                self._candidate, self._streak = None, 0
        if self.label is not None and self.label in self.ema:
            score = self.ema[self.label]
        else:
            score = max(self.ema.values(), default=0.0)
        return Decision(self.label, score, changed, previous if changed else None, proposal, self._streak)

"""Enroll classes from a few images and classify frames: a head chooses the class, a threshold per
class decides whether the query is that class or `unknown`.

The head is the nearest centred prototype with few exemplars and a ridge classifier fitted on
the gallery with more (head.py, `auto` chooses by leave-one-out). The thresholds are calibrated
per class from the gallery (and optional background embeddings, calibration.py); a class with
too few exemplars to calibrate keeps the global threshold. Both are refitted when the gallery
changes (milliseconds), never at enrollment time. With calibration on and a cohort in the bundle,
every score is first normalised by the cohort (cohort.py: how much closer the query is to the
class than to images in general); the thresholds are calibrated on scores normalised alike.

Negative examples ("this is not X"): a query that is closer (centred cosine) to one of X's
negative examples than to X's prototype is not X; X's score becomes -1 for that query.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgessl.edge_runtime.fewshot.calibration import MIN_EXEMPLARS, ClassThreshold, calibrate_thresholds
from edgessl.edge_runtime.fewshot.cohort import Cohort
from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.edge_runtime.fewshot.head import HEADS, Head, fit_head
from edgessl.edge_runtime.fewshot.labels import UNKNOWN, validate_label
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.errors import GalleryError

log = logging.getLogger(__name__)

__all__ = ["UNKNOWN", "ClassScores", "ClassThreshold", "FewShotClassifier", "Head", "Prediction"]

VETOED = -1.0  # the score of a class that a negative example rules out


@dataclass(frozen=True)
class Prediction:
    label: str  # the chosen class, or "unknown" below its threshold or with an empty gallery
    score: float  # centred cosine to the chosen class's prototype, cohort-normalised when calibrated
    # (0.0 with an empty gallery)
    nearest: str | None  # the chosen class even when label is "unknown"; None with an empty gallery
    threshold: float | None = None  # the chosen class's threshold that `score` was held against


@dataclass(frozen=True)
class ClassScores:
    """Scores of N queries against C classes, and what is needed to decide on them.

    A caller that smooths over time smooths `scores` and holds the winner against its entry
    of `thresholds`; `decisions()` is the per-frame decision without smoothing."""

    labels: list[str]  # (C,) the enrolled classes, sorted
    scores: np.ndarray  # (N, C) centred cosine of each query to each prototype (cohort-normalised when
    # calibrated); VETOED by a negative
    thresholds: np.ndarray | None = None  # (C,) each class's threshold on `scores`
    chosen: np.ndarray | None = None  # (N,) the head's class index per query (None: argmax of scores)

    def __post_init__(self) -> None:
        if self.scores.ndim != 2 or self.scores.shape[1] != len(self.labels):
            raise ValueError(f"scores must be (N, {len(self.labels)}), got {self.scores.shape}")
        if self.thresholds is not None and self.thresholds.shape != (len(self.labels),):
            raise ValueError(f"thresholds must be ({len(self.labels)},), got {self.thresholds.shape}")
        if self.chosen is not None and self.chosen.shape != (len(self.scores),):
            raise ValueError(f"chosen must be ({len(self.scores)},), got {self.chosen.shape}")

    def decisions(self, threshold: float = 0.5) -> list[Prediction]:
        """One Prediction per query; `threshold` applies when there are no per-class thresholds."""
        if not self.labels:
            return [Prediction(UNKNOWN, 0.0, None) for _ in range(len(self.scores))]
        idx = self.scores.argmax(axis=1) if self.chosen is None else self.chosen
        best = self.scores[np.arange(len(idx)), idx]
        limits = (np.full(len(self.labels), threshold, np.float32) if self.thresholds is None
                  else self.thresholds)[idx]
        return [Prediction(self.labels[i] if s >= t else UNKNOWN, float(s), self.labels[i], float(t))
                for i, s, t in zip(idx, best, limits, strict=True)]


@dataclass(frozen=True)
class _Prototypes:
    revision: tuple[int, ...]  # the gallery's revision and the background's
    labels: list[str]
    protos: np.ndarray  # (C, D), centred and normalised
    negatives: np.ndarray  # (M, D), centred and normalised negative examples
    negative_class: np.ndarray  # (M,) index into labels of the class each negative rules out
    thresholds: list[ClassThreshold]  # (C,) in the order of labels
    head: Head | None  # None with an empty gallery


class FewShotClassifier:
    """Classes live in the gallery; prototypes, head and thresholds are cached until it changes.

    threshold: the global threshold, used for every class with `calibrated=False` and as the
    fallback for classes with fewer than `min_exemplars` exemplars with `calibrated=True`
    (off by default so that existing callers keep their behaviour; the daemon and `edgessl
    classify` turn it on). calibrated=True also normalises the scores by the extractor's cohort
    when its bundle has one. head: "prototype",
    "fitted" or "auto" (head.py). background: optional (M, D) raw embeddings of what the cameras
    see when nothing enrolled is there (also `set_background`)."""

    def __init__(self, extractor: FeatureExtractor, gallery: Gallery, threshold: float = 0.5, *,
                 calibrated: bool = False, head: str = "auto", background: np.ndarray | None = None,
                 min_exemplars: int = MIN_EXEMPLARS, reembed: bool = True) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise GalleryError(f"threshold is a cosine similarity, so it must lie in [-1, 1]; got {threshold}")
        if head not in HEADS:
            raise GalleryError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
        self.extractor = extractor
        self.gallery = gallery
        self.threshold = threshold
        self.calibrated = calibrated
        self.head_kind = head
        self.min_exemplars = min_exemplars
        self._background: np.ndarray | None = None
        self._background_revision = 0
        self._cache: _Prototypes | None = None
        self.cohort = (Cohort.from_embeddings(extractor.cohort, extractor.center)
                       if calibrated and extractor.cohort is not None else None)
        self.set_background(background)
        # Exemplars enrolled with an earlier model are re-embedded from their stored crops (the
        # daemon passes reembed=False: it re-embeds in the background, in batches).
        if reembed and gallery.stale(extractor.fingerprint):
            gallery.reembed(extractor)

    def set_background(self, embeddings: np.ndarray | None) -> None:
        """Raw (M, D) embeddings of frames with nothing enrolled in them (None: none); the
        thresholds are recalibrated on the next query."""
        if embeddings is not None:
            embeddings = np.asarray(embeddings, np.float32)
            if embeddings.ndim != 2 or embeddings.shape[1] != self.extractor.embedding_dim:
                raise GalleryError(f"background embeddings must be (M, {self.extractor.embedding_dim}); "
                                   f"got {embeddings.shape}")
        self._background = embeddings
        self._background_revision += 1

    def enroll(self, label: str, images: Sequence[np.ndarray], *, negative: bool = False) -> int:
        """Add images as exemplars (or negative examples) of `label`; return how many were added."""
        validate_label(label)
        if not images:
            raise GalleryError(f"no images to enroll as {label!r}; give at least one")
        return self.gallery.add(label, images, self.extractor.embed(images), self.extractor.fingerprint,
                                negative=negative)

    def forget(self, label: str) -> int:
        return self.gallery.forget(label)

    @property
    def revision(self) -> tuple[int, ...]:
        """Changes whenever what the scores depend on changes (the gallery, the background)."""
        return (*self.gallery.revision, self._background_revision)

    def thresholds(self) -> list[ClassThreshold]:
        """Each enrolled class's threshold (sorted by label) and the reason for it."""
        return list(self._prototypes().thresholds)

    def head(self) -> Head | None:
        """The head in use (its kind, the reason, leave-one-out figures); None with an empty gallery."""
        return self._prototypes().head

    def _prototypes(self) -> _Prototypes:
        revision = self.revision
        if self._cache is None or self._cache.revision != revision:
            labels, emb, sources = self.gallery.sources(self.extractor.fingerprint)
            dim = self.extractor.embedding_dim
            center = self.extractor.center
            head = None
            neg_labels, neg_emb = self.gallery.embeddings(self.extractor.fingerprint, negative=True)
            if labels:
                head = fit_head(center_normalize(emb, center), np.asarray(labels), self.head_kind)
                unique, protos = head.labels, head.protos
                if self.calibrated:
                    thresholds = calibrate_thresholds(labels, emb, center, self._background,
                                                      fallback=self.threshold, min_exemplars=self.min_exemplars,
                                                      cohort=self.cohort, negatives=(neg_labels, neg_emb),
                                                      sources=sources)
                else:
                    thresholds = [ClassThreshold(str(u), self.threshold, 1.0, False, "the global threshold "
                                                 "(calibration is off)") for u in unique]
            else:
                unique, protos, thresholds = np.array([], str), np.zeros((0, dim), np.float32), []
            names = [str(u) for u in unique]
            index = {name: i for i, name in enumerate(names)}
            keep = [i for i, lab in enumerate(neg_labels) if lab in index]  # negatives of a class with a prototype
            negatives = (center_normalize(neg_emb[keep], center) if keep
                         else np.zeros((0, dim), np.float32))
            negative_class = np.array([index[neg_labels[i]] for i in keep], np.int64)
            self._cache = _Prototypes(revision, names, protos, negatives, negative_class, thresholds, head)
            log.debug("%s head and thresholds of %d classes from %d exemplars",
                      head.kind if head else "no", len(unique), len(labels))
        return self._cache

    def scores(self, images: Sequence[np.ndarray], batch_size: int = 32) -> ClassScores:
        """The score of every query against every enrolled class (for smoothing over time), the
        classes' thresholds and the head's choice; `batch_size` goes to the extractor's backend.
        With no class enrolled nothing is embedded."""
        if not images or not self._prototypes().labels:
            return self.score_queries(np.zeros((len(images), self.extractor.embedding_dim), np.float32))
        return self.score_queries(self.embed(images, batch_size=batch_size))

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(N, D) centred, L2-normalised embeddings: what `score_queries` takes (and what the
        object tracker compares crops by)."""
        return center_normalize(self.extractor.embed(images, batch_size=batch_size), self.extractor.center)

    def embed_inputs(self, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """`embed` of a batch prepared by `extractor.inputs` (e.g. on another thread)."""
        return center_normalize(self.extractor.embed_inputs(batch, batch_size=batch_size), self.extractor.center)

    @property
    def has_classes(self) -> bool:
        """Whether any class is enrolled (without one, region crops need no embedding)."""
        return bool(self._prototypes().labels)

    def score_queries(self, queries: np.ndarray) -> ClassScores:
        """`scores` of queries embedded already (centred and normalised, as `embed` gives them)."""
        protos = self._prototypes()
        thresholds = np.array([t.threshold for t in protos.thresholds], np.float32)
        if not len(queries) or not protos.labels:
            # No classes: nothing to choose; no queries: an empty choice.
            chosen = np.zeros(len(queries), np.int64) if protos.labels else None
            return ClassScores(protos.labels, np.zeros((len(queries), len(protos.labels)), np.float32),
                               thresholds, chosen)
        queries = np.asarray(queries, np.float32)
        table = self._score(queries, protos, self.cohort)
        assert protos.head is not None
        chosen = protos.head.predict(queries) if protos.head.kind == "fitted" else table.argmax(axis=1)
        # A negative example that rules out the head's choice hands the query to the best cosine.
        vetoed = table[np.arange(len(chosen)), chosen] == VETOED
        chosen[vetoed] = table[vetoed].argmax(axis=1)
        return ClassScores(protos.labels, table, thresholds, chosen)

    @staticmethod
    def _score(queries: np.ndarray, protos: _Prototypes, cohort: Cohort | None) -> np.ndarray:
        cosines = queries @ protos.protos.T  # (N, C)
        scores = cohort.normalise(cosines, queries) if cohort is not None else cosines.copy()
        if len(protos.negatives):
            # A negative rules a class out by plain cosines: the cohort shifts both sides alike.
            neg = queries @ protos.negatives.T  # (N, M)
            for c in np.unique(protos.negative_class):
                closest = neg[:, protos.negative_class == c].max(axis=1)
                scores[closest > cosines[:, c], c] = VETOED
        return scores

    def classify(self, images: Sequence[np.ndarray], batch_size: int = 32) -> list[Prediction]:
        if not images:
            return []
        return self.scores(images, batch_size=batch_size).decisions(self.threshold)

"""Enroll classes from a few images and classify frames by the nearest centred prototype.

Negative examples ("this is not X"): a query that is closer (centred cosine) to one of X's
negative examples than to X's prototype is not X; X's score becomes -1 for that query.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgessl.edge_runtime.fewshot.gallery import UNKNOWN, Gallery, validate_label
from edgessl.edge_runtime.fewshot.prototypes import center_normalize, class_prototypes, nearest
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.errors import GalleryError

log = logging.getLogger(__name__)

__all__ = ["UNKNOWN", "ClassScores", "FewShotClassifier", "Prediction"]

VETOED = -1.0  # the score of a class that a negative example rules out


@dataclass(frozen=True)
class Prediction:
    label: str  # the nearest class, or "unknown" below the threshold or with an empty gallery
    score: float  # centred cosine to the nearest prototype (0.0 with an empty gallery)
    nearest: str | None  # the nearest class even when label is "unknown"; None with an empty gallery


@dataclass(frozen=True)
class ClassScores:
    labels: list[str]  # (C,) the enrolled classes, sorted
    scores: np.ndarray  # (N, C) centred cosine of each query to each prototype; VETOED by a negative

    def __post_init__(self) -> None:
        if self.scores.ndim != 2 or self.scores.shape[1] != len(self.labels):
            raise ValueError(f"scores must be (N, {len(self.labels)}), got {self.scores.shape}")


@dataclass(frozen=True)
class _Prototypes:
    revision: tuple[int, int]
    labels: list[str]
    protos: np.ndarray  # (C, D), centred and normalised
    negatives: np.ndarray  # (M, D), centred and normalised negative examples
    negative_class: np.ndarray  # (M,) index into labels of the class each negative rules out


class FewShotClassifier:
    """Classes live in the gallery; the prototypes are cached until the gallery changes."""

    def __init__(self, extractor: FeatureExtractor, gallery: Gallery, threshold: float = 0.5, *,
                 reembed: bool = True) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise GalleryError(f"threshold is a cosine similarity, so it must lie in [-1, 1]; got {threshold}")
        self.extractor = extractor
        self.gallery = gallery
        self.threshold = threshold
        self._cache: _Prototypes | None = None
        # Exemplars enrolled with an earlier model are re-embedded from their stored crops (the
        # daemon passes reembed=False: it re-embeds in the background, in batches).
        if reembed and gallery.stale(extractor.fingerprint):
            gallery.reembed(extractor)

    def enroll(self, label: str, images: Sequence[np.ndarray], *, negative: bool = False) -> int:
        """Add images as exemplars (or negative examples) of `label`; return how many were added."""
        validate_label(label)
        if not images:
            raise GalleryError(f"no images to enroll as {label!r}; give at least one")
        return self.gallery.add(label, images, self.extractor.embed(images), self.extractor.fingerprint,
                                negative=negative)

    def forget(self, label: str) -> int:
        return self.gallery.forget(label)

    def _prototypes(self) -> _Prototypes:
        revision = self.gallery.revision
        if self._cache is None or self._cache.revision != revision:
            labels, emb = self.gallery.embeddings(self.extractor.fingerprint)
            dim = self.extractor.embedding_dim
            if labels:
                unique, protos = class_prototypes(emb, np.asarray(labels), center=self.extractor.center)
            else:
                unique, protos = np.array([], str), np.zeros((0, dim), np.float32)
            names = [str(u) for u in unique]
            index = {name: i for i, name in enumerate(names)}
            neg_labels, neg_emb = self.gallery.embeddings(self.extractor.fingerprint, negative=True)
            keep = [i for i, lab in enumerate(neg_labels) if lab in index]  # negatives of a class with a prototype
            negatives = (center_normalize(neg_emb[keep], self.extractor.center) if keep
                         else np.zeros((0, dim), np.float32))
            negative_class = np.array([index[neg_labels[i]] for i in keep], np.int64)
            self._cache = _Prototypes(revision, names, protos, negatives, negative_class)
            log.debug("prototypes of %d classes from %d exemplars", len(unique), len(labels))
        return self._cache

    def scores(self, images: Sequence[np.ndarray], batch_size: int = 32) -> ClassScores:
        """The score of every query against every enrolled class (for smoothing over time);
        `batch_size` images reach the backend at once."""
        protos = self._prototypes()
        if not images or not protos.labels:
            return ClassScores(protos.labels, np.zeros((len(images), len(protos.labels)), np.float32))
        queries = center_normalize(self.extractor.embed(images, batch_size), self.extractor.center)
        return ClassScores(protos.labels, self._score(queries, protos))

    @staticmethod
    def _score(queries: np.ndarray, protos: _Prototypes) -> np.ndarray:
        scores = queries @ protos.protos.T  # (N, C)
        if len(protos.negatives):
            neg = queries @ protos.negatives.T  # (N, M)
            for c in np.unique(protos.negative_class):
                closest = neg[:, protos.negative_class == c].max(axis=1)
                scores[closest > scores[:, c], c] = VETOED
        return scores

    def classify(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        protos = self._prototypes()
        if not images:
            return []
        if not protos.labels:
            return [Prediction(UNKNOWN, 0.0, None) for _ in images]
        queries = center_normalize(self.extractor.embed(images), self.extractor.center)
        if len(protos.negatives):
            table = self._score(queries, protos)
            idx = table.argmax(axis=1)
            scores = table[np.arange(len(idx)), idx]
        else:
            idx, scores = nearest(queries, protos.protos)
        return [
            Prediction(protos.labels[i] if s >= self.threshold else UNKNOWN, float(s), protos.labels[i])
            for i, s in zip(idx, scores, strict=True)
        ]

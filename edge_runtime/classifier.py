"""Enroll classes from a few images and classify frames by the nearest centred prototype."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgessl.edge_runtime.extractor import FeatureExtractor
from edgessl.edge_runtime.fewshot import center_normalize, class_prototypes, nearest
from edgessl.edge_runtime.gallery import UNKNOWN, Gallery, validate_label
from edgessl.errors import GalleryError

log = logging.getLogger(__name__)

__all__ = ["UNKNOWN", "FewShotClassifier", "Prediction"]


@dataclass(frozen=True)
class Prediction:
    label: str  # the nearest class, or "unknown" below the threshold or with an empty gallery
    score: float  # centred cosine to the nearest prototype (0.0 with an empty gallery)
    nearest: str | None  # the nearest class even when label is "unknown"; None with an empty gallery


@dataclass(frozen=True)
class _Prototypes:
    revision: tuple[int, int]
    labels: list[str]
    protos: np.ndarray  # (C, D), centred and normalised


class FewShotClassifier:
    """Classes live in the gallery; the prototypes are cached until the gallery changes."""

    def __init__(self, extractor: FeatureExtractor, gallery: Gallery, threshold: float = 0.5) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise GalleryError(f"threshold is a cosine similarity, so it must lie in [-1, 1]; got {threshold}")
        self.extractor = extractor
        self.gallery = gallery
        self.threshold = threshold
        self._cache: _Prototypes | None = None
        # Exemplars enrolled with an earlier model are re-embedded from their stored crops.
        if gallery.stale(extractor.fingerprint):
            gallery.reembed(extractor)

    def enroll(self, label: str, images: Sequence[np.ndarray]) -> int:
        """Add images as exemplars of `label`; return how many were added."""
        validate_label(label)
        if not images:
            raise GalleryError(f"no images to enroll as {label!r}; give at least one")
        return self.gallery.add(label, images, self.extractor.embed(images), self.extractor.fingerprint)

    def forget(self, label: str) -> int:
        return self.gallery.forget(label)

    def _prototypes(self) -> _Prototypes:
        revision = self.gallery.revision
        if self._cache is None or self._cache.revision != revision:
            labels, emb = self.gallery.embeddings(self.extractor.fingerprint)
            if labels:
                unique, protos = class_prototypes(emb, np.asarray(labels), center=self.extractor.center)
            else:
                unique, protos = np.array([], str), np.zeros((0, self.extractor.embedding_dim), np.float32)
            self._cache = _Prototypes(revision, [str(u) for u in unique], protos)
            log.debug("prototypes of %d classes from %d exemplars", len(unique), len(labels))
        return self._cache

    def classify(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        protos = self._prototypes()
        if not images:
            return []
        if not protos.labels:
            return [Prediction(UNKNOWN, 0.0, None) for _ in images]
        queries = center_normalize(self.extractor.embed(images), self.extractor.center)
        idx, scores = nearest(queries, protos.protos)
        return [
            Prediction(protos.labels[i] if s >= self.threshold else UNKNOWN, float(s), protos.labels[i])
            for i, s in zip(idx, scores, strict=True)
        ]

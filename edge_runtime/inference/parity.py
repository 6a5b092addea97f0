"""One definition of "this artifact computes the same embeddings as the fp32 model".

Export's gate, the manifest's default artifact per device profile and the device's health
check all use these functions, so an artifact that export marks as passing for a profile
passes that profile's health check (up to CPU differences, which the installer's fallback
covers).

The metric is the *centred* cosine: embeddings minus the bundle's centring vector, the
quantity the few-shot classifier compares. Raw embeddings share a large common component
(ReLU + pooling), so even a model with other weights can reach 0.98 raw cosine. The statistic
is the minimum over the golden inputs (the bundle's `golden.npz`): the worst image decides.
The thresholds per precision come from the device profile (`min_cosine`); these defaults are
used where no profile is named.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MIN_COSINE: dict[str, float] = {"fp32": 0.999, "fp16": 0.99, "int8": 0.95}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def centred_cosine(reference: np.ndarray, got: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Per-row cosine of `got` to `reference` after subtracting the centring vector."""
    c = np.asarray(center, np.float64)
    return cosine_rows(np.asarray(reference, np.float64) - c, np.asarray(got, np.float64) - c)


def golden_agreement(reference: np.ndarray, got: np.ndarray, center: np.ndarray) -> float:
    """The parity statistic: the lowest centred cosine over the golden inputs (NaN if not finite)."""
    if not np.isfinite(got).all():
        return float("nan")
    return float(centred_cosine(reference, got, center).min())


def passes(agreement: float, threshold: float) -> bool:
    """NaN never passes."""
    return bool(agreement >= threshold)

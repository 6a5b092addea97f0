"""class_quality's enrollment figures: margin, threshold and recommendation."""

from __future__ import annotations

import numpy as np
import pytest

from edgessl.edge_runtime.fewshot.calibration import calibrate_thresholds
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.edge_runtime.fewshot.quality import class_quality, recommendation

OLD_KEYS = {"label", "exemplars", "negatives", "loo_accuracy", "nearest_class", "nearest_similarity", "advice"}


def gallery(n_a=6, n_b=6, gap=3.0, seed=0, dim=12):
    rng = np.random.default_rng(seed)
    a = np.eye(dim)[0] * gap + rng.standard_normal((n_a, dim))
    b = np.eye(dim)[1] * gap + rng.standard_normal((n_b, dim))
    return ["a"] * n_a + ["b"] * n_b, np.concatenate([a, b]).astype(np.float32)


def margin_reference(labels, emb):
    x = center_normalize(emb)
    out = {}
    for c in sorted(set(labels)):
        values = []
        for i, lab in enumerate(labels):
            if lab != c:
                continue
            own = np.mean([x[j] for j in range(len(x)) if labels[j] == c and j != i], axis=0)
            own_score = x[i] @ own / np.linalg.norm(own)
            others = []
            for d in sorted(set(labels) - {c}):
                p = np.mean([x[j] for j in range(len(x)) if labels[j] == d], axis=0)
                others.append(x[i] @ p / np.linalg.norm(p))
            values.append(own_score - max(others))
        out[c] = float(np.mean(values))
    return out


def test_margin_matches_loop_and_old_keys_stay():
    labels, emb = gallery()
    report = class_quality(labels, emb, None)
    ref = margin_reference(labels, emb)
    for q in report:
        assert q.margin == pytest.approx(ref[q.label], abs=1e-4)
        d = q.as_dict()
        assert OLD_KEYS <= set(d) and {"margin", "threshold", "threshold_calibrated", "threshold_reason",
                                       "recommendation"} <= set(d)


def test_threshold_is_the_calibrated_one_or_the_classifiers():
    labels, emb = gallery()
    expected = {t.label: t for t in calibrate_thresholds(labels, emb, None, fallback=0.3)}
    for q in class_quality(labels, emb, None, fallback=0.3):
        assert q.threshold == pytest.approx(expected[q.label].threshold, abs=1e-4)
        assert q.threshold_calibrated and q.threshold_reason == expected[q.label].reason
    given = calibrate_thresholds(labels[:8], emb[:8], None)  # b has 2: the fallback
    b = [q for q in class_quality(labels, emb, None, thresholds=given) if q.label == "b"][0]
    assert b.threshold_calibrated is False


def test_recommendations():
    labels, emb = gallery()
    assert {q.recommendation for q in class_quality(labels, emb, None)} == {"enough"}  # well apart
    few = class_quality(labels[:3] + labels[6:], np.concatenate([emb[:3], emb[6:]]), None)
    assert few[0].recommendation == "add 2 more shots from another angle"
    labels, emb = gallery(gap=0.0, seed=1)  # the two classes overlap
    report = class_quality(labels, emb, None)
    assert any(q.recommendation.startswith("this looks like ") and "add negatives" in q.recommendation
               for q in report)
    assert recommendation("a", 0, None, None, None) == "only negative examples: add shots of a"
    assert recommendation("a", 8, 0.9, 0.2, "b") == "add 3 more shots from another angle"
    assert recommendation("a", 8, 1.0, 0.2, "b") == "enough"
    assert recommendation("a", 8, 1.0, 0.01, "b").startswith("this looks like b")

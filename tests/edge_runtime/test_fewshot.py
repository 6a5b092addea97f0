"""fewshot.py against straightforward loop references on fixed data."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from edgessl.edge_runtime.fewshot.prototypes import (
    center_normalize,
    class_prototypes,
    evaluate_episodes,
    nearest,
    sample_episodes,
)
from edgessl.errors import GalleryError


def ref_normalize(row: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    v = [float(x) - (float(center[i]) if center is not None else 0.0) for i, x in enumerate(row)]
    norm = math.sqrt(sum(x * x for x in v))
    return np.array([x / norm if norm > 0 else 0.0 for x in v])


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((12, 5)).astype(np.float32) + 0.5
    labels = np.array([3, 1, 3, 7, 1, 1, 7, 3, 3, 7, 1, 7])
    center = rng.standard_normal(5).astype(np.float32)
    return emb, labels, center


def test_center_normalize_matches_loop(data):
    emb, _, center = data
    expected = np.stack([ref_normalize(r, center) for r in emb])
    np.testing.assert_allclose(center_normalize(emb, center), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(center_normalize(emb), np.stack([ref_normalize(r) for r in emb]), rtol=1e-5)


def test_center_normalize_keeps_zero_rows_zero():
    out = center_normalize(np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]]), np.array([1.0, 2.0]))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:2], 0.0)
    np.testing.assert_allclose(out[2], ref_normalize(np.array([-1.0, -2.0])), rtol=1e-6)


def test_class_prototypes_match_loop(data):
    emb, labels, center = data
    unique, protos = class_prototypes(emb, labels, center=center)
    assert unique.tolist() == [1, 3, 7]
    for label, proto in zip(unique, protos, strict=True):
        members = [ref_normalize(r, center) for r, lab in zip(emb, labels, strict=True) if lab == label]
        mean = [sum(col) / len(members) for col in zip(*members, strict=True)]
        np.testing.assert_allclose(proto, ref_normalize(np.array(mean)), rtol=1e-5, atol=1e-6)
    # Normalising is idempotent: pre-normalised rows without a centre give the same prototypes.
    np.testing.assert_allclose(class_prototypes(center_normalize(emb, center), labels)[1], protos, atol=1e-6)


def test_nearest_matches_loop(data):
    emb, labels, center = data
    _, protos = class_prototypes(emb, labels, center=center)
    queries = center_normalize(emb, center)
    idx, scores = nearest(queries, protos)
    for q, i, s in zip(queries, idx, scores, strict=True):
        cos = [float(np.dot(q, p)) for p in protos]
        assert i == int(np.argmax(cos))
        assert s == pytest.approx(max(cos), abs=1e-6)


def make_split(n_classes=8, per_class=30, dim=6, spread=1.0, seed=1):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, dim)) * 2
    labels = np.repeat(np.arange(n_classes) * 10, per_class)  # ids 0, 10, 20, ...: not positions
    feats = (means[labels // 10] + spread * rng.standard_normal((len(labels), dim))).astype(np.float32)
    return feats, labels


def ref_episode_accuracies(s_feats, q_feats, ep, center):
    accs = []
    for e in range(len(ep.ways)):
        protos = [ref_normalize(np.mean([ref_normalize(s_feats[i], center) for i in ep.support[e, w]], axis=0))
                  for w in range(ep.ways.shape[1])]
        correct = total = 0
        for w in range(ep.ways.shape[1]):
            for i in ep.query[e, w]:
                q = ref_normalize(q_feats[i], center)
                correct += int(np.argmax([np.dot(q, p) for p in protos]) == w)
                total += 1
        accs.append(correct / total)
    return np.array(accs)


def test_evaluate_episodes_matches_loop_reference():
    s_feats, s_labels = make_split(seed=1)
    q_feats, q_labels = make_split(seed=2)
    center = s_feats.mean(axis=0)
    kw = dict(n_way=4, k_shot=3, n_query=5, episodes=40, seed=7)
    result = evaluate_episodes(s_feats, s_labels, q_feats, q_labels, center=center, **kw)
    ep = sample_episodes(s_labels, q_labels, **kw)
    expected = ref_episode_accuracies(s_feats, q_feats, ep, center)
    np.testing.assert_allclose(result.accuracies, expected)
    assert 0.3 < result.mean < 1.0  # overlapping classes: a real, imperfect score
    assert result.mean == pytest.approx(expected.mean())
    assert result.ci95 == pytest.approx(1.96 * expected.std() / math.sqrt(40))
    # Episodes draw supports and queries of the sampled classes from their own sets.
    assert (s_labels[ep.support] == ep.labels[ep.ways][..., None]).all()
    assert (q_labels[ep.query] == ep.labels[ep.ways][..., None]).all()
    assert all(len(set(row)) == 4 for row in ep.ways)
    # Confusion over the original ids: rows sum to the queries of each true class.
    assert result.labels.tolist() == [0, 10, 20, 30, 40, 50, 60, 70]
    assert result.confusion.sum() == 40 * 4 * 5
    truth_counts = np.bincount(ep.ways.ravel(), minlength=8) * 5
    np.testing.assert_array_equal(result.confusion.sum(axis=1), truth_counts)
    assert np.trace(result.confusion) == round(result.mean * 40 * 4 * 5)


def test_episodes_are_deterministic_in_the_seed():
    feats, labels = make_split(spread=3.0)
    a = evaluate_episodes(feats, labels, feats, labels, episodes=50, n_query=5, seed=3)
    b = evaluate_episodes(feats, labels, feats, labels, episodes=50, n_query=5, seed=3)
    c = evaluate_episodes(feats, labels, feats, labels, episodes=50, n_query=5, seed=4)
    np.testing.assert_array_equal(a.accuracies, b.accuracies)
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert not np.array_equal(a.accuracies, c.accuracies)


def test_separable_classes_score_one():
    feats, labels = make_split(spread=0.01)
    result = evaluate_episodes(feats, labels, feats, labels, episodes=20)
    assert result.mean == 1.0 and result.ci95 == 0.0
    assert (result.confusion == np.diag(np.diag(result.confusion))).all()


def test_thousand_episodes_are_fast():
    s_feats, s_labels = make_split(n_classes=20, per_class=60, dim=384, seed=1)
    q_feats, q_labels = make_split(n_classes=20, per_class=60, dim=384, seed=2)
    start = time.perf_counter()
    result = evaluate_episodes(s_feats, s_labels, q_feats, q_labels, episodes=1000)
    elapsed = time.perf_counter() - start
    assert result.accuracies.shape == (1000,)
    assert elapsed < 3.0, f"1000 episodes took {elapsed:.2f} s"


def test_too_few_classes_is_explained():
    feats, labels = make_split(n_classes=3)
    with pytest.raises(GalleryError, match="5-way episodes need 5 classes .* only 3 classes qualify"):
        evaluate_episodes(feats, labels, feats, labels)

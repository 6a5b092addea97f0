"""Per-class thresholds (calibration.py) against loop references on small synthetic embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgessl.edge_runtime.fewshot.calibration import (
    GENUINE_Z,
    MIN_SPREAD,
    SHRINK,
    calibrate_thresholds,
    loo_genuine_scores,
    prior_count,
    spread_variance,
)
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.errors import GalleryError


def unit(v):
    n = math.sqrt(sum(float(a) * float(a) for a in v))
    return [float(a) / n for a in v]


def cos(a, b):
    return sum(x * y for x, y in zip(unit(a), unit(b), strict=True))


def clusters(spreads, n=6, dim=16, seed=0):
    """One cluster per spread around random unit directions: (labels, raw embeddings)."""
    rng = np.random.default_rng(seed)
    dirs = center_normalize(rng.standard_normal((len(spreads), dim)))
    labels, rows = [], []
    for i, s in enumerate(spreads):
        rows.append(dirs[i] + s * rng.standard_normal((n, dim)) / math.sqrt(dim))
        labels += [f"c{i}"] * n
    return labels, np.concatenate(rows).astype(np.float32)


def test_loo_genuine_scores_match_loop():
    labels, emb = clusters([0.5, 1.0], n=4)
    inverse = np.unique(labels, return_inverse=True)[1]
    x = center_normalize(emb)
    got = loo_genuine_scores(x, inverse, 2)
    for i in range(len(x)):
        others = [x[j] for j in range(len(x)) if j != i and inverse[j] == inverse[i]]
        mean = [sum(col) / len(others) for col in zip(*others, strict=True)]
        assert got[i] == pytest.approx(cos(x[i], mean), abs=1e-5)
    single = loo_genuine_scores(x[:1], np.array([0]), 1)
    assert np.isnan(single[0])  # a class of one has no prototype without it


def test_prior_count_is_the_method_of_moments():
    a, b, c = np.array([0.1, 0.3, 0.2]), np.array([0.8, 0.9, 0.7]), np.array([0.5, 0.4, 0.6])
    means = [v.mean() for v in (a, b, c)]
    gm = sum(means) / 3
    between = sum((m - gm) ** 2 for m in means) / 2 - sum(v.var(ddof=1) / 3 for v in (a, b, c)) / 3
    within = sum(v.var(ddof=1) for v in (a, b, c)) / 3
    assert prior_count([a, b, c]) == pytest.approx(within / between)
    # Means that differ less than their noise: shrink all the way to the pooled mean.
    assert prior_count([np.array([0.0, 1.0]), np.array([1.0, 0.0])]) == math.inf
    assert prior_count([a]) == SHRINK


def test_spread_variance_is_the_method_of_moments():
    a, b = np.array([0.0, 0.1, 0.2]), np.array([0.0, 1.0, 2.0])  # variances 0.01 and 1
    v = np.array([0.01, 1.0])
    expected = v.var(ddof=1) - 2 * v.mean() ** 2 / 2
    assert spread_variance([a, b]) == pytest.approx(max(expected, 0.0))
    assert spread_variance([a, a + 1]) == 0.0  # the same spread: pool completely
    assert spread_variance([a]) == math.inf


def test_one_isolated_class_accepts_95_percent_of_its_genuine_views():
    labels, emb = clusters([0.6], n=8)
    (t,) = calibrate_thresholds(labels, emb, None)
    x = center_normalize(emb)
    g = [cos(x[i], np.mean([x[j] for j in range(8) if j != i], axis=0)) for i in range(8)]
    mean = sum(g) / 8
    std = max(math.sqrt(sum((v - mean) ** 2 for v in g) / 7), MIN_SPREAD)  # one class: pooled = itself
    assert t.calibrated and t.impostor_mean is None
    assert t.threshold == pytest.approx(mean - GENUINE_Z * std, abs=1e-5)
    assert t.scale == pytest.approx(std, abs=1e-6)
    assert "no other class or background" in t.reason


def test_impostors_are_the_nearest_misses_and_the_threshold_lies_between():
    labels, emb = clusters([0.4, 0.4, 0.4, 0.4], n=6, seed=1)
    out = calibrate_thresholds(labels, emb, None)
    assert [t.label for t in out] == ["c0", "c1", "c2", "c3"]
    x = center_normalize(emb)
    names = sorted(set(labels))
    protos = {c: np.mean([x[i] for i in range(len(x)) if labels[i] == c], axis=0) for c in names}
    misses = {c: [] for c in names}  # (score, owner) of the rows whose nearest wrong prototype is c
    for i, lab in enumerate(labels):
        wrong = {c: cos(x[i], protos[c]) for c in names if c != lab}
        c = max(wrong, key=wrong.get)
        misses[c].append((wrong[c], lab))
    assert sum(t.impostor_mean is not None for t in out) == sum(bool(v) for v in misses.values())
    for t in out:
        assert t.calibrated and t.threshold < t.genuine_mean
        if misses[t.label]:
            scores = [m for m, _ in misses[t.label]]
            assert t.impostor_mean == pytest.approx(sum(scores) / len(scores), abs=1e-5)
            assert (t.impostor_max, t.impostor_source) == (pytest.approx(max(scores), abs=1e-5),
                                                           max(misses[t.label])[1])
            assert t.impostor_mean < t.threshold


def test_tight_class_gets_a_higher_threshold_than_a_loose_one():
    labels, emb = clusters([0.2, 2.0], n=10, dim=32, seed=2)
    tight, loose = calibrate_thresholds(labels, emb, None)
    assert tight.genuine_mean > loose.genuine_mean
    assert tight.threshold > loose.threshold + 0.1


def test_background_near_a_class_raises_its_threshold():
    labels, emb = clusters([0.8, 0.8], n=8, dim=16, seed=3)
    x = center_normalize(emb)
    near_c0 = x[:8].mean(0) + 0.7 * np.random.default_rng(4).standard_normal((30, 16)) / 4
    without = {t.label: t for t in calibrate_thresholds(labels, emb, None)}
    with_bg = {t.label: t for t in calibrate_thresholds(labels, emb, None, near_c0)}
    assert with_bg["c0"].threshold > without["c0"].threshold
    assert with_bg["c0"].impostor_source == "background" and "background" in with_bg["c0"].reason


def test_too_few_exemplars_fall_back_to_the_global_threshold():
    labels, emb = clusters([0.5, 0.5], n=5)
    labels, emb = labels[:7], emb[:7]  # c0: 5 exemplars, c1: 2
    c0, c1 = calibrate_thresholds(labels, emb, None, fallback=0.42)
    assert c0.calibrated and not c1.calibrated
    assert c1.threshold == 0.42 and "2 exemplars" in c1.reason and "0.42" in c1.reason
    assert calibrate_thresholds([], np.zeros((0, 4), np.float32), None) == []


def test_centering_is_applied():
    labels, emb = clusters([0.5, 0.5], n=5)
    center = np.full(emb.shape[1], 3.0, np.float32)
    a = calibrate_thresholds(labels, emb + center, center)
    b = calibrate_thresholds(labels, emb, None)
    assert [t.threshold for t in a] == pytest.approx([t.threshold for t in b], abs=1e-5)
    assert set(a[0].as_dict()) >= {"label", "threshold", "scale", "calibrated", "reason"}


def test_bad_inputs_are_explained():
    labels, emb = clusters([0.5], n=3)
    with pytest.raises(GalleryError, match="N labels"):
        calibrate_thresholds(labels[:2], emb, None)
    with pytest.raises(GalleryError, match=r"background embeddings must be \(M, 16\)"):
        calibrate_thresholds(labels, emb, None, np.zeros((3, 5)))
    with pytest.raises(GalleryError, match=r"\[-1, 1\]"):
        calibrate_thresholds(labels, emb, None, fallback=2.0)


def test_loo_leaves_a_whole_source_out():
    """Crops of one track are views of one object: each is scored against its class without any
    crop of its own track, which is what the next object of the class will score."""
    labels, emb = clusters([0.5, 0.5], n=6)
    inverse = np.unique(labels, return_inverse=True)[1]
    groups = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4])  # tracks within each class
    x = center_normalize(emb)
    got = loo_genuine_scores(x, inverse, 2, groups)
    for i in range(len(x)):
        others = [x[j] for j in range(len(x)) if groups[j] != groups[i] and inverse[j] == inverse[i]]
        mean = [sum(col) / len(others) for col in zip(*others, strict=True)]
        assert got[i] == pytest.approx(cos(x[i], mean), abs=1e-5)
    alone = loo_genuine_scores(x[:3], np.zeros(3, int), 1, np.zeros(3, int))
    assert np.isnan(alone).all()  # one source: nothing left to compare with


def test_crops_of_one_track_do_not_calibrate_a_class():
    """Five near-identical crops of one pass would give a threshold fitted to that one object; they
    count as one view, so the class keeps the global threshold until it has three sources."""
    rng = np.random.default_rng(1)
    labels, emb = clusters([0.05, 0.6], n=6)
    # c0: three objects (two crops each) around the class's direction, each crop near its object
    objects = np.repeat(0.6 * rng.standard_normal((3, emb.shape[1])) / 4, 2, axis=0)
    emb[:6] = emb[:6] + objects
    one_track = ["track:1"] * 6 + [None] * 6
    got = {t.label: t for t in calibrate_thresholds(labels, emb, None, fallback=0.3, sources=one_track)}
    assert not got["c0"].calibrated and got["c0"].threshold == 0.3
    assert "6 exemplars from 1 source" in got["c0"].reason
    assert got["c1"].calibrated  # independent shots: as before
    three = ["track:1", "track:1", "track:2", "track:2", "track:3", "track:3"] + [None] * 6
    got = {t.label: t for t in calibrate_thresholds(labels, emb, None, fallback=0.3, sources=three)}
    assert got["c0"].calibrated
    plain = {t.label: t for t in calibrate_thresholds(labels, emb, None, fallback=0.3)}
    assert plain["c0"].genuine_mean > got["c0"].genuine_mean + 0.05  # a new object scores lower than a new crop


def test_negative_examples_raise_their_class_threshold():
    """A rejected track ("not c0") that c0 would otherwise accept is an impostor of c0: the
    threshold moves up towards it, and the reason says so."""
    labels, emb = clusters([0.4, 0.4], n=8, seed=3)
    base = {t.label: t for t in calibrate_thresholds(labels, emb, None, fallback=-1.0)}
    x = center_normalize(emb)
    near = center_normalize(x[:8].mean(0, keepdims=True) + 0.35 * x[8:11])  # look a lot like c0
    with_neg = {t.label: t for t in calibrate_thresholds(labels, emb, None, fallback=-1.0,
                                                         negatives=(["c0"] * 3, near))}
    assert with_neg["c0"].threshold > base["c0"].threshold + 0.05
    assert "negative examples" in with_neg["c0"].reason and "negative" not in with_neg["c1"].reason

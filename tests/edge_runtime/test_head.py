"""The few-shot head (head.py): ridge fit and its closed-form leave-one-out against brute force."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgessl.edge_runtime.fewshot.head import (
    MIN_PER_CLASS,
    _ridge_path,
    evaluate_heads,
    fit_head,
    loo_prototype_predictions,
)
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.errors import GalleryError


def data(n_per=12, classes=3, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per)
    x = rng.standard_normal((classes, dim))[y] * 0.5 + rng.standard_normal((len(y), dim))
    return center_normalize(x.astype(np.float32)), y


def ridge_reference(x, y, lam, classes):
    """Ridge with an unpenalised intercept by the normal equations."""
    x = x.astype(np.float64)
    t = np.eye(classes)[y]
    xm, tm = x.mean(0), t.mean(0)
    w = np.linalg.solve((x - xm).T @ (x - xm) + lam * np.eye(x.shape[1]), (x - xm).T @ (t - tm))
    return w, tm - xm @ w


@pytest.mark.parametrize("shape", [(12, 3, 10), (3, 3, 20)])  # more rows than dims, and fewer
def test_ridge_fit_and_leave_one_out_match_brute_force(shape):
    x, y = data(*shape)
    classes = shape[1]
    for lam, r in zip((0.3, 3.0), _ridge_path(x, y, classes, (0.3, 3.0)), strict=True):
        w, b = ridge_reference(x, y, lam, classes)
        np.testing.assert_allclose(r.weights, w, atol=1e-5)
        np.testing.assert_allclose(r.bias, b, atol=1e-5)
        loo = []
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            wi, bi = ridge_reference(x[keep], y[keep], lam, classes)
            loo.append(int((x[i] @ wi + bi).argmax()))
        assert r.loo_pred.tolist() == loo


def test_loo_prototype_predictions_match_loop():
    x, y = data(4, 3, 6, seed=1)
    got = loo_prototype_predictions(x, y, 3)
    for i in range(len(x)):
        protos = []
        for c in range(3):
            rows = [x[j] for j in range(len(x)) if y[j] == c and j != i]
            m = np.mean(rows, axis=0)
            protos.append(m / np.linalg.norm(m))
        assert got[i] == int(np.argmax([x[i] @ p for p in protos]))


def test_auto_keeps_the_prototype_with_few_exemplars():
    x, y = data(MIN_PER_CLASS - 1)
    head = fit_head(x, y, "auto")
    assert head.kind == "prototype" and f"needs {MIN_PER_CLASS}" in head.reason
    assert fit_head(x, y, "fitted").kind == "fitted"
    assert fit_head(x[:5], np.zeros(5), "auto").reason == "one class"


def anisotropic(n_per, seed):
    """Classes apart along 2 quiet directions, buried in 30 loud noise directions: a prototype
    (cosine) drowns in the noise, a fitted linear classifier learns to ignore it."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    means = np.zeros((3, 32))
    means[:, :2] = np.array([[1, 0], [-0.5, 0.87], [-0.5, -0.87]]) * 0.4
    noise = rng.standard_normal((len(y), 32)) * np.r_[np.full(2, 0.1), np.full(30, 1.0)]
    return center_normalize((means[y] + noise + 3.0 * np.eye(32)[5]).astype(np.float32)), y


def test_auto_picks_the_fitted_head_where_it_is_better_on_held_out_data():
    x, y = anisotropic(40, seed=2)
    xt, yt = anisotropic(100, seed=3)
    head = fit_head(x, y, "auto")
    proto = fit_head(x, y, "prototype")
    assert head.kind == "fitted" and head.loo_fitted > head.loo_prototype
    assert (head.predict(xt) == yt).mean() > (proto.predict(xt) == yt).mean() + 0.1
    np.testing.assert_array_equal(head.protos, proto.protos)  # the open-set decision is unchanged


def test_head_choice_is_explained_and_checked():
    x, y = data()
    with pytest.raises(GalleryError, match="valid heads: prototype, fitted, auto"):
        fit_head(x, y, "svm")
    assert set(fit_head(x, y, "fitted").as_dict()) == {"kind", "reason", "ridge", "loo_prototype", "loo_fitted"}


def test_fit_takes_milliseconds():
    x, y = data(50, 5, 128, seed=4)
    fit_head(x, y, "auto")
    t = time.perf_counter()
    fit_head(x, y, "auto")
    assert time.perf_counter() - t < 0.5  # 250 exemplars of 128 dims; typically ~10 ms


def test_evaluate_heads_is_paired_and_auto_follows_its_rule():
    x, y = anisotropic(30, seed=5)
    xq, yq = anisotropic(30, seed=6)
    few = evaluate_heads(x, y, xq, yq, n_way=3, k_shot=5, n_query=5, episodes=8, seed=0)
    np.testing.assert_array_equal(few["auto"].accuracies, few["prototype"].accuracies)  # < MIN_PER_CLASS
    many = evaluate_heads(x, y, xq, yq, n_way=3, k_shot=25, n_query=10, episodes=8, seed=0)
    assert many["fitted"].mean > many["prototype"].mean
    assert many["auto"].mean >= many["prototype"].mean
    assert many["prototype"].confusion.sum() == 8 * 3 * 10

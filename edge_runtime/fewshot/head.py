"""The few-shot head: nearest centred prototype with few exemplars, a fitted ridge classifier with more.

A prototype is the best one can do with 5 shots (SimpleShot): it has nothing to fit. With tens
of exemplars per class a linear classifier learns which directions tell the classes apart and
which are noise; ridge regression on one-hot targets (unpenalised intercept) is that classifier
in closed form: one SVD of the centred exemplars, milliseconds, deterministic, plain numpy. The
SVD also gives the exact leave-one-out predictions of every ridge strength at once (the hat
matrix), and the prototype's leave-one-out is exact too, so `auto` compares the two on the
gallery itself and keeps the prototype unless the fitted head is measurably better.

The head only chooses *which* class; whether a query is that class or `unknown` is decided by
the centred cosine to the class's prototype against the class's threshold (calibration.py),
whichever head chose it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgessl.edge_runtime.fewshot.prototypes import (
    EpisodeResult,
    center_normalize,
    sample_episodes,
)
from edgessl.errors import GalleryError

__all__ = ["HEADS", "Head", "evaluate_heads", "fit_head", "loo_prototype_predictions"]

HEADS = ("prototype", "fitted", "auto")
MIN_PER_CLASS = 10  # auto considers the fitted head only when every class has this many exemplars
RIDGES = (0.3, 1.0, 3.0, 10.0, 30.0)  # ridge strengths tried (rows are unit vectors)
MIN_GAIN = 0.02  # auto picks the fitted head only if its leave-one-out accuracy is this much higher


@dataclass(frozen=True)
class Head:
    kind: str  # "prototype" or "fitted": the head that chooses the class
    labels: np.ndarray  # (C,) sorted
    protos: np.ndarray  # (C, D) centred, normalised prototypes (the open-set decision uses them)
    reason: str  # why this head, for the page
    weights: np.ndarray | None = None  # (D, C) ridge weights; None for the prototype
    bias: np.ndarray | None = None  # (C,)
    ridge: float | None = None  # the chosen ridge strength
    loo_prototype: float | None = None  # leave-one-out accuracy of the prototype head
    loo_fitted: float | None = None  # ... of the fitted head at the chosen ridge strength

    def __post_init__(self) -> None:
        if self.kind not in ("prototype", "fitted"):
            raise ValueError(f"head kind must be 'prototype' or 'fitted', got {self.kind!r}")
        if self.protos.shape[0] != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but prototypes of shape {self.protos.shape}")
        if self.kind == "fitted" and (self.weights is None or self.bias is None
                                      or self.weights.shape != (self.protos.shape[1], len(self.labels))):
            raise ValueError("a fitted head needs weights (D, C) and a bias (C,)")

    def decision(self, queries: np.ndarray) -> np.ndarray:
        """(N, C) the figure whose argmax is the chosen class, for centred-normalised queries."""
        if self.kind == "fitted":
            assert self.weights is not None and self.bias is not None
            return queries @ self.weights + self.bias
        return queries @ self.protos.T

    def predict(self, queries: np.ndarray) -> np.ndarray:
        return self.decision(queries).argmax(axis=1)

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "reason": self.reason, "ridge": self.ridge,
                "loo_prototype": None if self.loo_prototype is None else round(self.loo_prototype, 4),
                "loo_fitted": None if self.loo_fitted is None else round(self.loo_fitted, 4)}


def loo_prototype_predictions(x: np.ndarray, inverse: np.ndarray, n_classes: int) -> np.ndarray:
    """(N,) the class each normalised row gets from the prototypes with that row left out."""
    sums = _class_sums(x, inverse, n_classes)
    scores = x @ center_normalize(sums.astype(np.float32)).T
    own = np.einsum("nd,nd->n", x, center_normalize((sums[inverse] - x).astype(np.float32)))
    counts = np.bincount(inverse, minlength=n_classes)
    # A class of one has no prototype without it: that row cannot be right.
    scores[np.arange(len(x)), inverse] = np.where(counts[inverse] > 1, own, -np.inf)
    return scores.argmax(axis=1)


def _thin_svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, s, V) with a = U diag(s) V^T over the non-zero singular values, from the eigenvectors of
    the smaller Gram matrix: several times faster than LAPACK's SVD at gallery sizes."""
    if a.shape[0] <= a.shape[1]:
        e, u = np.linalg.eigh(a @ a.T)
        keep = e > 1e-10 * max(float(e.max()), 1e-30)
        s = np.sqrt(e[keep])
        u = u[:, keep]
        return u, s, (a.T @ u) / s
    e, v = np.linalg.eigh(a.T @ a)
    keep = e > 1e-10 * max(float(e.max()), 1e-30)
    s = np.sqrt(e[keep])
    v = v[:, keep]
    return (a @ v) / s, s, v


def _class_sums(x: np.ndarray, inverse: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D) float64 sum of the rows of each class (a one-hot product: faster than np.add.at)."""
    return np.eye(n_classes)[inverse].T @ x.astype(np.float64)


@dataclass(frozen=True)
class _Ridge:
    weights: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)
    loo_pred: np.ndarray  # (N,) argmax of the exact leave-one-out outputs
    loo_mse: float


def _ridge_path(x: np.ndarray, inverse: np.ndarray, n_classes: int, ridges: tuple[float, ...]) -> list[_Ridge]:
    """Ridge regression onto one-hot targets for every strength, with exact leave-one-out outputs.

    With Xc = U S V^T (centred rows), the fit is W = V diag(s / (s^2 + l)) U^T Yc and the hat
    matrix is H = 11^T / N + U diag(s^2 / (s^2 + l)) U^T; the left-out output of row i is
    y_i - (y_i - yhat_i) / (1 - H_ii)."""
    n = len(x)
    y = np.eye(n_classes)[inverse]
    x_mean, y_mean = x.mean(axis=0, dtype=np.float64), y.mean(axis=0)
    xc, yc = x.astype(np.float64) - x_mean, y - y_mean
    u, s, v = _thin_svd(xc)
    uty = u.T @ yc
    out = []
    for lam in ridges:
        shrink = s**2 / (s**2 + lam)
        fitted = u @ (shrink[:, None] * uty) + y_mean
        h = 1.0 / n + np.einsum("nk,k,nk->n", u, shrink, u)
        loo = y - (y - fitted) / np.maximum(1.0 - h, 1e-9)[:, None]
        w = v @ ((s / (s**2 + lam))[:, None] * uty)
        out.append(_Ridge(w.astype(np.float32), (y_mean - x_mean @ w).astype(np.float32),
                          loo.argmax(axis=1), float(((loo - y) ** 2).mean())))
    return out


def fit_head(
    x: np.ndarray,
    labels: np.ndarray,
    kind: str = "auto",
    *,
    min_per_class: int = MIN_PER_CLASS,
    ridges: tuple[float, ...] = RIDGES,
    min_gain: float = MIN_GAIN,
) -> Head:
    """The head for centred-normalised rows x (N, D) with labels (N,): "prototype", "fitted" or
    "auto" (the fitted head when every class has `min_per_class` exemplars and its leave-one-out
    accuracy beats the prototype's by `min_gain`)."""
    if kind not in HEADS:
        raise GalleryError(f"unknown head {kind!r}; valid heads: {', '.join(HEADS)}")
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels)
    if x.ndim != 2 or len(labels) != len(x) or not len(x):
        raise GalleryError(f"a head needs rows (N, D) and N labels, N >= 1; got {x.shape} and {len(labels)}")
    unique, inverse = np.unique(labels, return_inverse=True)
    c = len(unique)
    sums = _class_sums(x, inverse, c)
    protos = center_normalize(sums.astype(np.float32))
    counts = np.bincount(inverse, minlength=c)
    if kind == "prototype" or c < 2:
        return Head("prototype", unique, protos, "nearest centred prototype" if c > 1 else "one class")
    loo_p = float((loo_prototype_predictions(x, inverse, c) == inverse).mean())
    fewest = int(counts.min())
    if kind == "auto" and fewest < min_per_class:
        return Head("prototype", unique, protos,
                    f"nearest prototype: the fitted head needs {min_per_class} exemplars per class, "
                    f"the smallest class has {fewest}", loo_prototype=loo_p)
    path = _ridge_path(x, inverse, c, ridges)
    # The best leave-one-out accuracy; among equals the lower squared error, then the stronger ridge.
    best = max(range(len(ridges)), key=lambda i: ((path[i].loo_pred == inverse).mean(), -path[i].loo_mse, ridges[i]))
    r = path[best]
    loo_f = float((r.loo_pred == inverse).mean())
    fitted = Head("fitted", unique, protos, "", r.weights, r.bias, ridges[best], loo_p, loo_f)
    if kind == "fitted":
        return _with_reason(fitted, f"fitted ridge classifier (ridge {ridges[best]:g}), as asked")
    if _prefers_fitted(fewest, loo_p, loo_f, min_per_class, min_gain):
        return _with_reason(fitted, f"fitted ridge classifier: leave-one-out accuracy {loo_f:.0%} "
                                    f"vs {loo_p:.0%} for the nearest prototype")
    return Head("prototype", unique, protos,
                f"nearest prototype: leave-one-out accuracy {loo_p:.0%}, the fitted head's {loo_f:.0%} "
                f"is not {min_gain:.0%} better", loo_prototype=loo_p, loo_fitted=loo_f, ridge=ridges[best])


def _prefers_fitted(fewest: int, loo_p: float, loo_f: float, min_per_class: int, min_gain: float) -> bool:
    """The auto rule: the fitted head when every class has enough exemplars and it is measurably better."""
    return fewest >= min_per_class and loo_f >= loo_p + min_gain


def _with_reason(head: Head, reason: str) -> Head:
    return Head(head.kind, head.labels, head.protos, reason, head.weights, head.bias, head.ridge,
                head.loo_prototype, head.loo_fitted)


def evaluate_heads(
    support_feats: np.ndarray,
    support_labels: np.ndarray,
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    *,
    heads: tuple[str, ...] = HEADS,
    n_way: int = 5,
    k_shot: int = 5,
    n_query: int = 15,
    episodes: int = 300,
    seed: int = 0,
    center: np.ndarray | None = None,
) -> dict[str, EpisodeResult]:
    """N-way K-shot accuracy of each head on the same episodes (paired: the differences are
    differences of heads, not of episodes)."""
    ep = sample_episodes(support_labels, query_labels, n_way=n_way, k_shot=k_shot,
                         n_query=n_query, episodes=episodes, seed=seed)
    s = center_normalize(support_feats, center)
    q = center_normalize(query_feats, center)
    truth = np.repeat(np.arange(n_way), n_query)
    support_way = np.repeat(np.arange(n_way), k_shot)
    acc = {h: np.empty(episodes) for h in heads}
    conf = {h: np.zeros((len(ep.labels), len(ep.labels)), np.int64) for h in heads}
    for e in range(episodes):
        xs = s[ep.support[e].ravel()]
        xq = q[ep.query[e].ravel()]
        # One fit per episode: auto is the fitted head or the prototype by its own figures.
        proto = fit_head(xs, support_way, "prototype")  # labels 0..n_way-1 sort as the ways
        fitted = fit_head(xs, support_way, "fitted") if {"fitted", "auto"} & set(heads) else proto
        for h in heads:
            if h == "auto":
                assert fitted.loo_prototype is not None and fitted.loo_fitted is not None
                use_fitted = _prefers_fitted(k_shot, fitted.loo_prototype, fitted.loo_fitted, MIN_PER_CLASS, MIN_GAIN)
                chosen = fitted if use_fitted else proto
            else:
                chosen = fitted if h == "fitted" else proto
            pred = chosen.predict(xq)
            acc[h][e] = (pred == truth).mean()
            np.add.at(conf[h], (ep.ways[e][truth], ep.ways[e][pred]), 1)
    return {h: EpisodeResult(mean=float(acc[h].mean()), ci95=float(1.96 * acc[h].std() / np.sqrt(episodes)),
                             accuracies=acc[h], confusion=conf[h], labels=ep.labels) for h in heads}

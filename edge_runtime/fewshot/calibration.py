"""Open-set calibration: a threshold per class, derived from the gallery itself.

One global cosine threshold cannot fit every class: a class whose exemplars all look alike
(a logo on a wall) gets genuine scores near 0.9, a varied one (a person, any pose) near 0.4,
and the background a camera sees may sit anywhere in between. So each class gets its own
threshold from two score samples that the gallery already holds:

- genuine: each exemplar against its own class's prototype made *without* it (leave one
  out), which is what a new view of the class scores;
- impostor: the exemplars of the other classes whose nearest wrong prototype is this one, and
  the background embeddings (what the camera sees when nothing enrolled is there) whose
  nearest prototype is this one: the views the class would wrongly accept first; and the
  class's own negative examples ("this is not X", e.g. a rejected track), which a person
  said it must not accept.

Both samples are small (5 shots give 5 genuine scores), so their means and spreads are shrunk
towards the figures pooled over all classes: the means as far as the classes' means differ
by more than their sampling noise explains (empirical Bayes: when 5 shots cannot tell the
classes apart, every class gets the pooled figure and the thresholds only differ where the
gallery shows they should), and the spreads likewise. The threshold is the point between the two
Gaussians that lies the same number of standard deviations from each (the equal-error point),
never above the point that accepts ~95% of genuine views, and never below the global threshold:
calibration only makes a class stricter where its near misses come close (on CIFAR-10 with 5
shots, letting it go lower accepted 94-96% of unknowns). A class with fewer than
`min_exemplars` exemplars keeps the global threshold (the fallback), and says so.

`scale` (the genuine spread) turns a score into "standard deviations above the class's
threshold", `(score - threshold) / scale`, a figure that means the same for every class:
the open-set evaluation ranks queries by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgessl.edge_runtime.fewshot.cohort import Cohort
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.errors import GalleryError

__all__ = ["ClassThreshold", "calibrate_thresholds", "loo_genuine_scores", "prior_count", "spread_variance"]

MIN_EXEMPLARS = 3  # fewer leave-one-out scores than this say nothing about a spread
SHRINK = 5.0  # pseudo-count of the pooled mean when there is only one class to estimate it from
GENUINE_Z = 1.645  # the threshold never rejects more than ~5% of genuine views (one-sided 95%)
MIN_SPREAD = 0.02  # floor on a standard deviation (cosines): 5 identical shots are not certainty


@dataclass(frozen=True)
class ClassThreshold:
    label: str
    threshold: float  # centred cosine; a query below it is not this class
    scale: float  # genuine spread: (score - threshold) / scale is comparable across classes
    calibrated: bool  # False: the global fallback threshold
    reason: str  # why this threshold, in words a person can act on
    genuine_mean: float | None = None  # leave-one-out similarity of the exemplars to their prototype
    impostor_mean: float | None = None  # similarity of other classes' exemplars and background
    impostor_max: float | None = None  # the highest impostor similarity (the closest miss)
    impostor_source: str | None = None  # the class (or "background") of the highest impostor

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            out[k] = round(v, 4) if isinstance(v, float) else v
        return out


def loo_genuine_scores(x: np.ndarray, inverse: np.ndarray, n_classes: int,
                       groups: np.ndarray | None = None) -> np.ndarray:
    """(N,) centred cosine of each normalised row to its class's prototype made without it.

    groups: (N,) integer group of each row (rows of one group are views of one object, such as
    the crops of one track); the prototype is then made without the row's whole group, which is
    what a new object of the class scores. A row with nothing of its class left is NaN."""
    sums = np.zeros((n_classes, x.shape[1]), np.float64)
    np.add.at(sums, inverse, x)
    counts = np.bincount(inverse, minlength=n_classes)
    if groups is None:
        held, held_n = x.astype(np.float64), np.ones(len(x))
    else:
        _, g = np.unique(groups, return_inverse=True)
        g_sums = np.zeros((g.max() + 1 if len(g) else 0, x.shape[1]), np.float64)
        np.add.at(g_sums, g, x)
        held, held_n = g_sums[g], np.bincount(g)[g].astype(np.float64)
    loo = (sums[inverse] - held).astype(np.float32)  # the sum, so its normalisation is the mean's
    out = np.einsum("nd,nd->n", x, center_normalize(loo)).astype(np.float64)
    out[counts[inverse] - held_n < 1] = np.nan
    return out


def prior_count(samples: Sequence[np.ndarray]) -> float:
    """The pseudo-count k0 of the pooled mean in each sample's mean (posterior mean
    (n mean + k0 pooled) / (n + k0)): within-sample variance over the variance of the true
    means, which is the variance of the sample means less their sampling noise (method of
    moments). Infinite when the sample means differ no more than noise explains."""
    usable = [v for v in samples if len(v) >= 2]
    if len(usable) < 2:
        return SHRINK  # one sample: nothing to compare its mean with
    means = np.array([v.mean() for v in usable])
    noise = np.array([v.var(ddof=1) / len(v) for v in usable])
    within = float(np.mean([v.var(ddof=1) for v in usable]))
    between = float(means.var(ddof=1) - noise.mean())
    return within / between if between > 0 else float("inf")


def spread_variance(samples: Sequence[np.ndarray]) -> float:
    """The variance of the samples' true variances: that of their sample variances less the
    sampling noise of a variance (2 sigma^4 / (n - 1) for normal data); 0 when the spreads
    differ no more than noise explains, inf with fewer than two samples (nothing to pool)."""
    usable = [v for v in samples if len(v) >= 2]
    if len(usable) < 2:
        return float("inf")
    variances = np.array([v.var(ddof=1) for v in usable])
    pooled = variances.mean()
    noise = np.mean([2 * pooled**2 / (len(v) - 1) for v in usable])
    return max(float(variances.var(ddof=1) - noise), 0.0)


def _shrunk(values: np.ndarray, pooled_mean: float, pooled_var: float, k0: float, tau2: float) -> tuple[float, float]:
    """Mean and standard deviation of a small sample, each shrunk towards the pooled figure by
    how much the classes' figures really differ: k0 is the pooled mean's pseudo-count
    (prior_count), tau2 the variance of the true variances (spread_variance)."""
    n = len(values)
    if n == 0:
        return pooled_mean, max(float(np.sqrt(pooled_var)), MIN_SPREAD)
    mean = pooled_mean if not np.isfinite(k0) else (values.sum() + k0 * pooled_mean) / (n + k0)
    if n < 2:
        var = pooled_var
    else:
        noise = 2 * pooled_var**2 / (n - 1)
        w = 1.0 if not np.isfinite(tau2) else tau2 / (tau2 + noise) if tau2 + noise > 0 else 0.0
        var = w * float(values.var(ddof=1)) + (1 - w) * pooled_var
    return float(mean), max(float(np.sqrt(var)), MIN_SPREAD)


def _within_variance(samples: Sequence[np.ndarray], pooled: np.ndarray) -> float:
    """Mean within-sample variance (ddof 1) of the samples with two or more values; the variance
    of all values when none has two; 0.1^2 (a cosine spread to start from) without values."""
    usable = [v for v in samples if len(v) >= 2]
    if usable:
        return float(np.mean([v.var(ddof=1) for v in usable]))
    return float(pooled.var()) if len(pooled) > 1 else 0.1**2


def calibrate_thresholds(
    labels: Sequence[str],
    embeddings: np.ndarray,
    center: np.ndarray | None,
    background: np.ndarray | None = None,
    *,
    fallback: float = 0.5,
    min_exemplars: int = MIN_EXEMPLARS,
    cohort: Cohort | None = None,
    negatives: tuple[Sequence[str], np.ndarray] | None = None,
    sources: Sequence[str | None] | None = None,
) -> list[ClassThreshold]:
    """Per-class thresholds, sorted by label, from the positive exemplars' raw embeddings.

    labels: (N,) the class of each row of embeddings (N, D); center: the model's centring
    vector (None: only L2-normalise); background: optional (M, D) raw embeddings of frames
    with nothing enrolled in them; cohort: the bundle's cohort, when the classifier normalises its
    scores with it (cohort.py), so that the thresholds apply to the same scores; negatives: (labels,
    raw embeddings) of negative examples, each an impostor of its own class; sources: (N,) what
    each exemplar is a view of (None: itself): exemplars of one source (the crops of one track)
    are left out together and count as one towards `min_exemplars`, since five crops of one pass
    of an object say little of how the next object of its class will score. A pure function:
    the same gallery gives the same figures."""
    emb = np.asarray(embeddings, np.float32)
    labels_arr = np.asarray(list(labels))
    if emb.ndim != 2 or len(labels_arr) != len(emb):
        raise GalleryError(f"calibration needs embeddings (N, D) and N labels; got {emb.shape} and {len(labels_arr)}")
    if not -1.0 <= fallback <= 1.0:
        raise GalleryError(f"the fallback threshold is a cosine, so it must lie in [-1, 1]; got {fallback}")
    if min_exemplars < 2:
        raise GalleryError(f"min_exemplars must be >= 2 (leave-one-out needs two); got {min_exemplars}")
    bg = np.zeros((0, emb.shape[1]), np.float32) if background is None else np.asarray(background, np.float32)
    if bg.ndim != 2 or bg.shape[1] != emb.shape[1]:
        raise GalleryError(f"background embeddings must be (M, {emb.shape[1]}); got {bg.shape}")
    if not len(emb):
        return []

    unique, inverse = np.unique(labels_arr, return_inverse=True)
    x = center_normalize(emb, center)
    b = center_normalize(bg, center) if len(bg) else bg
    sums = np.zeros((len(unique), x.shape[1]), np.float64)
    np.add.at(sums, inverse, x)
    protos = center_normalize(sums.astype(np.float32))
    counts = np.bincount(inverse, minlength=len(unique))
    if sources is not None and len(sources) != len(x):
        raise GalleryError(f"calibration needs one source per exemplar; got {len(sources)} for {len(x)}")
    # Exemplars without a source are each their own; the rest are grouped by source.
    keys = [f"own:{i}" if s is None else f"src:{s}" for i, s in enumerate(sources)] if sources is not None \
        else [f"own:{i}" for i in range(len(x))]
    groups = np.unique(np.array(keys), return_inverse=True)[1]
    # What a class's sample size is: its independent views (sources), not its crops.
    independent = np.array([len({groups[i] for i in np.flatnonzero(inverse == c)}) for c in range(len(unique))])
    genuine = loo_genuine_scores(x, inverse, len(unique), groups)
    to_protos = (x @ protos.T).astype(np.float64)  # (N, C)
    bg_to_protos = (b @ protos.T).astype(np.float64) if len(b) else np.zeros((0, len(unique)))
    if cohort is not None:  # the thresholds hold the scores the classifier will compute: normalised alike
        x_off = cohort.offsets(x).astype(np.float64)
        genuine, to_protos = genuine - x_off, to_protos - x_off[:, None]
        if len(b):
            bg_to_protos = bg_to_protos - cohort.offsets(b).astype(np.float64)[:, None]

    # The impostors of class c: the views it would wrongly accept first, i.e. every exemplar of
    # another class whose nearest *wrong* prototype is c, and every background embedding whose
    # nearest prototype is c. An unknown query is scored against its nearest prototype only, so
    # its score is a maximum over classes: scoring every non-member against every prototype
    # would put the impostors far too low and the thresholds with them.
    wrong = to_protos.copy()
    wrong[np.arange(len(x)), inverse] = -np.inf
    rows_to = np.concatenate([wrong.argmax(axis=1), bg_to_protos.argmax(axis=1)]).astype(np.int64)
    rows_score = np.concatenate([wrong.max(axis=1), bg_to_protos.max(axis=1)]) if len(unique) > 1 or len(b) \
        else np.zeros(0)
    rows_to = rows_to[: len(rows_score)]
    rows_name = [str(unique[inverse[i]]) for i in range(len(x))] + ["background"] * len(b)
    if len(unique) == 1:  # no wrong prototype to be nearest to: only the background impostors
        rows_to, rows_score, rows_name = rows_to[len(x):], rows_score[len(x):], rows_name[len(x):]
    if negatives is not None and len(negatives[0]):
        # A negative example of c is an impostor of c, wherever its nearest prototype lies.
        index = {str(u): k for k, u in enumerate(unique)}
        own = [(i, index[str(lab)]) for i, lab in enumerate(negatives[0]) if str(lab) in index]
        if own:
            n_emb = center_normalize(np.asarray(negatives[1], np.float32)[[i for i, _ in own]], center)
            to = np.array([c for _, c in own], np.int64)
            score = (n_emb @ protos.T).astype(np.float64)[np.arange(len(own)), to]
            if cohort is not None:
                score = score - cohort.offsets(n_emb).astype(np.float64)
            rows_to = np.concatenate([rows_to, to])
            rows_score = np.concatenate([rows_score, score])
            rows_name += [f"not {unique[c]}" for c in to]
    imp_all = [rows_score[rows_to == c] for c in range(len(unique))]

    # Pooled figures over every calibrated class: the prior each class's small sample is shrunk to.
    ok = independent >= min_exemplars
    g_samples = [genuine[(inverse == c) & np.isfinite(genuine)] for c in range(len(unique)) if ok[c]]
    i_samples = [imp_all[c] for c in range(len(unique)) if ok[c]]
    g_pool = np.concatenate(g_samples or [np.zeros(0)])
    i_pool = rows_score
    g_mean0 = float(g_pool.mean()) if len(g_pool) else fallback
    i_mean0 = float(i_pool.mean()) if len(i_pool) else 0.0
    # The pooled spread is the spread *within* classes: the differences between the classes'
    # means are what the per-class means are for, not noise.
    g_var0 = _within_variance(g_samples, g_pool)
    i_var0 = _within_variance([v for v in i_samples if len(v) >= 2], i_pool)
    g_k0, g_tau2 = prior_count(g_samples), spread_variance(g_samples)
    i_k0, i_tau2 = prior_count(i_samples), spread_variance(i_samples)

    out = []
    for c, label in enumerate(unique):
        label = str(label)
        n = int(counts[c])
        g = genuine[inverse == c]
        imp = imp_all[c]
        g_mean, g_std = _shrunk(g[np.isfinite(g)], g_mean0, g_var0, g_k0, g_tau2)
        source = imp_max = i_mean = None
        if len(imp):
            i_mean = float(imp.mean())
            mine = np.flatnonzero(rows_to == c)
            k = int(mine[rows_score[mine].argmax()])
            imp_max, source = float(rows_score[k]), rows_name[k]
        views = int(independent[c])
        if views < min_exemplars:
            what = f"{n} exemplar{'s' if n != 1 else ''}" if views == n else \
                f"{n} exemplars from {views} source{'s' if views != 1 else ''} (e.g. {views} track{'s' if views != 1 else ''})"
            mean_g = float(np.nanmean(g)) if np.isfinite(g).any() else None
            out.append(ClassThreshold(
                label, float(fallback), g_std, False,
                f"{what}: the global threshold {fallback:g} until there are {min_exemplars} independent views to "
                "calibrate from", mean_g, i_mean, imp_max, source))
            continue
        if len(i_pool):
            # A class that is nobody's nearest miss has no impostor sample: the pooled one stands in.
            m, s = _shrunk(imp, i_mean0, i_var0, i_k0, i_tau2)
            # The equal-error point of the two Gaussians, but never one that rejects more than
            # ~5% of genuine views: open-set safety must not make the class unrecognisable.
            eer = (g_mean * s + m * g_std) / (g_std + s)
            # Never more permissive than the global threshold: five shots (and a few background
            # frames) are too little evidence to accept what the global threshold rejects; measured
            # on CIFAR-10, lower calibrated thresholds accepted 94-96% of unknowns (docs/benchmarks.md).
            t = max(min(eer, g_mean - GENUINE_Z * g_std), fallback)
            against = [name for name, present in (("the other classes", len(x) > counts[c]),
                                                  ("the background", len(b) > 0),
                                                  ("its negative examples", f"not {label}" in rows_name)) if present]
            what = " and ".join(against) or "the other classes"
            closest = f", closest {imp_max:.2f}: {source}" if imp_max is not None else ", pooled"
            reason = (f"calibrated from {n} exemplars (leave-one-out similarity {g_mean:.2f} ± {g_std:.2f}) "
                      f"against their nearest misses among {what} ({m:.2f} ± {s:.2f}{closest})")
        else:
            t = max(g_mean - GENUINE_Z * g_std, fallback)
            reason = (f"calibrated from {n} exemplars only (leave-one-out similarity {g_mean:.2f} ± {g_std:.2f}); "
                      "no other class or background to compare with: accepts ~95% of genuine views")
        t = float(np.clip(t, -1.0, 1.0))
        out.append(ClassThreshold(label, t, g_std, True, reason, float(g.mean()), i_mean, imp_max, source))
    return out

"""Open-set evaluation: enroll some classes, query with all, and measure how well `unknown` works.

Per split, `known` classes are drawn at random and enrolled with `shot` exemplars each; every
query of every class is classified; queries of the other classes should come out `unknown`.
The figures compare the two ways of deciding `unknown`:

- global: the query's best centred cosine against one threshold for all classes;
- cohort: the cosine normalised by the cohort (cohort.py), against one threshold;
- calibrated: what the device decides by: the cosine (cohort-normalised when there is a cohort)
  against the chosen class's own threshold (calibration.py), ranked by (score - threshold) /
  scale so that one sweep applies to every class.

AUROC and FAR at 95% TAR sweep the threshold (an offset to every class's threshold), so they
rate the score, not one operating point; the operating-point figures (TAR, FAR, and the
accuracy of accepted known queries) are those of the fixed global threshold and of the
calibrated thresholds as they are. A true accept is a known-class query that is not labelled
`unknown` (its class may still be wrong: `accuracy` says how often it is right).

The server runs this on features of its checkpoint with the same functions the device uses; its
cohort is a sample of the support images (unlabelled, never enrolled), as the bundle's is a sample
of the pretraining images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgessl.edge_runtime.fewshot.calibration import calibrate_thresholds
from edgessl.edge_runtime.fewshot.cohort import MIN_COHORT, Cohort
from edgessl.edge_runtime.fewshot.prototypes import center_normalize, class_prototypes
from edgessl.errors import GalleryError

__all__ = ["OpenSetSplit", "auroc", "evaluate_openset", "far_at_tar", "summarize"]


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known query scores above an unknown one), ties counting half (Mann-Whitney U)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        raise GalleryError("AUROC needs at least one known and one unknown score")
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    # Tied values share the mean of their ranks.
    values, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    if len(values) < len(both):
        sums = np.zeros(len(values))
        np.add.at(sums, inverse, ranks)
        ranks = (sums / counts)[inverse]
    u = ranks[: len(known)].sum() - len(known) * (len(known) + 1) / 2
    return float(u / (len(known) * len(unknown)))


def far_at_tar(known: np.ndarray, unknown: np.ndarray, tar: float = 0.95) -> float:
    """The fraction of unknown scores accepted by the highest threshold that accepts at least
    `tar` of the known scores (accept: score >= threshold)."""
    known = np.sort(np.asarray(known, np.float64))
    if not len(known) or not 0 < tar <= 1:
        raise GalleryError(f"FAR at TAR needs known scores and 0 < tar <= 1; got {len(known)} scores, tar {tar}")
    k = int(np.ceil(tar * len(known)))  # accept the k highest known scores
    threshold = known[len(known) - k]
    return float((np.asarray(unknown) >= threshold).mean())


@dataclass(frozen=True)
class OpenSetSplit:
    known_classes: np.ndarray  # the enrolled class ids
    auroc_global: float
    auroc_calibrated: float
    far95_global: float  # FAR at 95% TAR
    far95_calibrated: float
    auroc_cohort: float  # the cohort-normalised cosine against one threshold (= global without a cohort)
    far95_cohort: float
    auroc_oracle: float  # per-class thresholds taken from the queries themselves: what calibration could reach
    far95_oracle: float
    tar_fixed: float  # at the fixed global threshold
    far_fixed: float
    tar_calibrated: float  # at the calibrated thresholds as they are
    far_calibrated: float
    accuracy_fixed: float  # accepted known queries labelled right
    accuracy_calibrated: float
    closed_accuracy: float  # known queries, nearest prototype, no unknown
    cohort_size: int = 0  # images in the cohort that normalised the scores (0: none)

    @property
    def auroc_gain(self) -> float:
        """Calibrated less global on the same split: the paired difference, whose interval is narrow."""
        return self.auroc_calibrated - self.auroc_global

    @property
    def far95_gain(self) -> float:
        """Global less calibrated FAR at 95% TAR (positive: calibration accepts fewer unknowns)."""
        return self.far95_global - self.far95_calibrated


FIGURES = ("auroc_global", "auroc_calibrated", "far95_global", "far95_calibrated", "auroc_cohort", "far95_cohort",
           "auroc_oracle", "far95_oracle",
           "auroc_gain", "far95_gain", "tar_fixed", "far_fixed",
           "tar_calibrated", "far_calibrated", "accuracy_fixed", "accuracy_calibrated", "closed_accuracy")


def _split(s: np.ndarray, s_labels: np.ndarray, q: np.ndarray, q_labels: np.ndarray, known: np.ndarray,
           shot: int, rng: np.random.Generator, fallback: float, background: np.ndarray | None,
           unknown_mask: np.ndarray, cohort: Cohort | None, enrollable: np.ndarray) -> OpenSetSplit:
    rows = np.concatenate([rng.choice(np.flatnonzero((s_labels == c) & enrollable), shot, replace=False)
                           for c in known])
    names = np.array([str(v) for v in s_labels[rows]])
    thresholds = calibrate_thresholds(names, s[rows], None, background, fallback=fallback, cohort=cohort)
    unique, protos = class_prototypes(s[rows], names)
    t = np.array([th.threshold for th in thresholds])
    scale = np.array([th.scale for th in thresholds])
    sims = q @ protos.T
    idx = sims.argmax(axis=1)
    best = sims[np.arange(len(q)), idx]
    normalised = best - cohort.offsets(q) if cohort is not None else best  # the argmax is the same
    calibrated = (normalised - t[idx]) / scale[idx]
    is_known = np.isin(q_labels, known)
    evaluated = is_known | unknown_mask
    q_names = np.array([str(v) for v in q_labels])
    right = unique[idx] == q_names

    def op(accept: np.ndarray) -> tuple[float, float, float]:
        k = accept & is_known
        return (float(k[is_known].mean()), float(accept[unknown_mask].mean()),
                float(right[k].mean()) if k.any() else 0.0)

    # The oracle: each class's threshold at the midpoint of the mean score of its own known queries
    # and that of the unknown queries routed to it, both read off the query set. No gallery can
    # calibrate better than this; when it does not beat the global threshold, per-class thresholds
    # cannot help on these features (measured on CIFAR-10: docs/benchmarks.md).
    mid = np.zeros(len(unique))
    for c, name in enumerate(unique):
        own, unk = (idx == c) & (q_names == name), (idx == c) & unknown_mask
        g, i = (best[own].mean() if own.any() else best.mean()), (best[unk].mean() if unk.any() else best.mean())
        mid[c] = (g + i) / 2
    oracle = best - mid[idx]

    tar_f, far_f, acc_f = op(best >= fallback)
    tar_c, far_c, acc_c = op(calibrated >= 0)
    kn, un = is_known & evaluated, unknown_mask
    return OpenSetSplit(np.asarray(known), auroc(best[kn], best[un]), auroc(calibrated[kn], calibrated[un]),
                        far_at_tar(best[kn], best[un]), far_at_tar(calibrated[kn], calibrated[un]),
                        auroc(normalised[kn], normalised[un]), far_at_tar(normalised[kn], normalised[un]),
                        auroc(oracle[kn], oracle[un]), far_at_tar(oracle[kn], oracle[un]),
                        tar_f, far_f, tar_c, far_c, acc_f, acc_c, float(right[is_known].mean()),
                        0 if cohort is None else len(cohort.bank))


def evaluate_openset(
    support_feats: np.ndarray,
    support_labels: np.ndarray,
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    *,
    known: int = 5,
    shot: int = 5,
    splits: int = 20,
    seed: int = 0,
    center: np.ndarray | None = None,
    fallback: float = 0.5,
    background: int = 0,
    cohort: int = 0,
) -> list[OpenSetSplit]:
    """One result per random split of the classes into `known` enrolled and the rest unknown.

    cohort > 0: that many support images (at most half of them, and never a class's last `shot`;
    none when that leaves fewer than MIN_COHORT), drawn once and never enrolled, are the cohort
    that normalises the scores (cohort.py), as the bundle's cohort.npy does on the device.

    background > 0: that many support images of non-enrolled classes calibrate the thresholds as
    background frames; those classes (half of the non-enrolled ones) are then left out of the
    unknown queries, so the unknowns that are scored were never seen at calibration."""
    s_labels, q_labels = np.asarray(support_labels), np.asarray(query_labels)
    classes = np.unique(s_labels)
    if not 1 <= known < len(classes):
        raise GalleryError(f"--known must leave at least one unknown class: 1 <= known < {len(classes)}, got {known}")
    short = [c for c in classes if (s_labels == c).sum() < shot]
    if short:
        raise GalleryError(f"classes {short} have fewer than {shot} support images")
    s = center_normalize(support_feats, center)
    q = center_normalize(query_feats, center)
    rng = np.random.default_rng(seed)
    enrollable = np.ones(len(s), bool)
    bank = None
    rows = _cohort_rows(s_labels, min(cohort, len(s) // 2), shot, rng)  # the rest is what the splits enroll from
    if len(rows) >= MIN_COHORT:
        enrollable[rows] = False
        bank = Cohort.from_embeddings(s[rows], None)
    out = []
    for _ in range(splits):
        perm = rng.permutation(classes)
        enrolled, rest = np.sort(perm[:known]), perm[known:]
        bg = None
        unknown_classes = rest
        if background > 0:
            if len(rest) < 2:
                raise GalleryError("background calibration needs at least two non-enrolled classes "
                                   "(one to take background from, one to test on)")
            bg_classes, unknown_classes = rest[: len(rest) // 2], rest[len(rest) // 2:]
            pool = np.flatnonzero(np.isin(s_labels, bg_classes))
            bg = s[rng.choice(pool, min(background, len(pool)), replace=False)]
        unknown_mask = np.isin(q_labels, unknown_classes)
        if not np.isin(q_labels, enrolled).any() or not unknown_mask.any():
            raise GalleryError("the query set needs images of the enrolled and of the unknown classes")
        out.append(_split(s, s_labels, q, q_labels, enrolled, shot, rng, fallback, bg, unknown_mask, bank,
                          enrollable))
    return out


def _cohort_rows(labels: np.ndarray, size: int, shot: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `size` random rows for the cohort, leaving every class at least `shot` rows to enroll."""
    if size <= 0:
        return np.zeros(0, np.int64)
    left = {c: int(n) for c, n in zip(*np.unique(labels, return_counts=True), strict=True)}
    picked = []
    for row in rng.permutation(len(labels)):
        if left[labels[row]] > shot:
            left[labels[row]] -= 1
            picked.append(row)
            if len(picked) == size:
                break
    return np.array(picked, np.int64)


def summarize(results: list[OpenSetSplit]) -> dict[str, tuple[float, float]]:
    """Figure -> (mean, half-width of the 95% interval over splits)."""
    out = {}
    for name in FIGURES:
        v = np.array([getattr(r, name) for r in results], np.float64)
        out[name] = (float(v.mean()), float(1.96 * v.std() / np.sqrt(len(v))) if len(v) > 1 else 0.0)
    return out

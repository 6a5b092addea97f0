"""Few-shot classification by nearest centred prototype (SimpleShot), in plain numpy.

The device gallery and the server's few-shot evaluation both use these functions, so an
accuracy measured on the server is the accuracy of the code that runs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgessl.errors import GalleryError

_EPS = 1e-12


def center_normalize(emb: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Subtract `center` (if given) and L2-normalise each row; a zero row stays zero."""
    x = np.asarray(emb, np.float32)
    if center is not None:
        x = x - np.asarray(center, np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, _EPS)


def class_prototypes(
    emb: np.ndarray, labels: np.ndarray, center: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(unique labels sorted, prototypes): the re-normalised mean of each class's
    centred-normalised embeddings. Normalising is idempotent, so already normalised rows
    with `center=None` give the same result."""
    emb = np.asarray(emb)
    labels = np.asarray(labels)
    if emb.ndim != 2 or len(labels) != len(emb):
        raise ValueError(f"expected emb (N, D) and N labels, got emb {emb.shape} and {len(labels)} labels")
    unique, inverse = np.unique(labels, return_inverse=True)
    x = center_normalize(emb, center)
    sums = np.zeros((len(unique), x.shape[1]), np.float64)
    np.add.at(sums, inverse, x)
    counts = np.bincount(inverse, minlength=len(unique))[:, None]
    return unique, center_normalize((sums / counts).astype(np.float32))


def nearest(queries_normed: np.ndarray, protos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest prototype, its cosine) for each normalised query row."""
    scores = np.asarray(queries_normed, np.float32) @ np.asarray(protos, np.float32).T
    idx = scores.argmax(axis=1)
    return idx, scores[np.arange(len(idx)), idx]


@dataclass(frozen=True)
class Episodes:
    """Indices of sampled N-way K-shot episodes (E episodes)."""

    labels: np.ndarray  # (C,) the classes that can be sampled, sorted
    ways: np.ndarray  # (E, n_way) indices into labels
    support: np.ndarray  # (E, n_way, k_shot) rows of the support set
    query: np.ndarray  # (E, n_way, n_query) rows of the query set

    def __post_init__(self) -> None:
        e, n_way = self.ways.shape
        if self.support.shape[:2] != (e, n_way) or self.query.shape[:2] != (e, n_way):
            raise ValueError(f"inconsistent episode shapes: ways {self.ways.shape}, "
                             f"support {self.support.shape}, query {self.query.shape}")


@dataclass(frozen=True)
class EpisodeResult:
    mean: float  # mean accuracy over episodes
    ci95: float  # half-width of the 95% interval: 1.96 * std / sqrt(episodes)
    accuracies: np.ndarray  # (E,) accuracy of each episode
    confusion: np.ndarray  # (C, C) counts, rows = true label, columns = predicted
    labels: np.ndarray  # (C,) the original label ids that index the confusion rows/columns

    def __post_init__(self) -> None:
        c = len(self.labels)
        if self.accuracies.ndim != 1 or self.confusion.shape != (c, c):
            raise ValueError(f"inconsistent result shapes: accuracies {self.accuracies.shape}, "
                             f"confusion {self.confusion.shape}, {c} labels")


def sample_episodes(
    support_labels: np.ndarray,
    query_labels: np.ndarray,
    *,
    n_way: int,
    k_shot: int,
    n_query: int,
    episodes: int,
    seed: int,
) -> Episodes:
    """Deterministic episodes: classes drawn per episode among those with at least k_shot
    support and n_query query rows; supports and queries drawn without replacement."""
    if min(n_way, k_shot, n_query, episodes) < 1:
        raise GalleryError(f"n_way, k_shot, n_query and episodes must be >= 1, "
                           f"got {n_way}, {k_shot}, {n_query}, {episodes}")
    support_labels, query_labels = np.asarray(support_labels), np.asarray(query_labels)
    s_rows = {c: np.flatnonzero(support_labels == c) for c in np.unique(support_labels)}
    q_rows = {c: np.flatnonzero(query_labels == c) for c in np.unique(query_labels)}
    labels = np.array(sorted(c for c in s_rows if len(s_rows[c]) >= k_shot and len(q_rows.get(c, ())) >= n_query))
    if len(labels) < n_way:
        raise GalleryError(f"{n_way}-way episodes need {n_way} classes with >= {k_shot} support and "
                           f">= {n_query} query examples; only {len(labels)} classes qualify")
    rng = np.random.default_rng(seed)
    ways = np.empty((episodes, n_way), np.int64)
    support = np.empty((episodes, n_way, k_shot), np.int64)
    query = np.empty((episodes, n_way, n_query), np.int64)
    for e in range(episodes):
        ways[e] = rng.choice(len(labels), n_way, replace=False)
        for w, c in enumerate(labels[ways[e]]):
            support[e, w] = rng.choice(s_rows[c], k_shot, replace=False)
            query[e, w] = rng.choice(q_rows[c], n_query, replace=False)
    return Episodes(labels=labels, ways=ways, support=support, query=query)


def evaluate_episodes(
    support_feats: np.ndarray,
    support_labels: np.ndarray,
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    *,
    n_way: int = 5,
    k_shot: int = 5,
    n_query: int = 15,
    episodes: int = 1000,
    seed: int = 0,
    center: np.ndarray | None = None,
) -> EpisodeResult:
    """N-way K-shot accuracy of the nearest centred prototype.

    Supports come from the support set and queries from the query set (pass disjoint sets).
    `center=None` only L2-normalises; SimpleShot centres on the mean feature of base data.
    """
    ep = sample_episodes(support_labels, query_labels, n_way=n_way, k_shot=k_shot,
                         n_query=n_query, episodes=episodes, seed=seed)
    s = center_normalize(support_feats, center)
    q = center_normalize(query_feats, center)
    truth = np.repeat(np.arange(n_way), n_query)  # way of each query within an episode
    accuracies = np.empty(episodes, np.float64)
    confusion = np.zeros((len(ep.labels), len(ep.labels)), np.int64)
    chunk = max(1, 2**22 // (n_way * (n_query + k_shot) * s.shape[1]))  # bounds the memory
    for start in range(0, episodes, chunk):
        sl = slice(start, start + chunk)
        protos = center_normalize(s[ep.support[sl]].mean(axis=2))  # (e, n_way, D)
        queries = q[ep.query[sl].reshape(len(protos), -1)]  # (e, n_way * n_query, D)
        pred = np.einsum("eqd,ewd->eqw", queries, protos).argmax(axis=2)
        accuracies[sl] = (pred == truth).mean(axis=1)
        ways = ep.ways[sl]
        rows = np.take_along_axis(ways, np.broadcast_to(truth, pred.shape), axis=1)
        cols = np.take_along_axis(ways, pred, axis=1)
        np.add.at(confusion, (rows.ravel(), cols.ravel()), 1)
    return EpisodeResult(
        mean=float(accuracies.mean()),
        ci95=float(1.96 * accuracies.std() / np.sqrt(episodes)),
        accuracies=accuracies,
        confusion=confusion,
        labels=ep.labels,
    )

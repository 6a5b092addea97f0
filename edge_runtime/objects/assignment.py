"""Minimum-cost assignment of tracks to proposals (the Hungarian method), numpy only.

The matrices are small (tracks x proposals of one camera frame), so the O(n^3) shortest
augmenting path form is fast enough and keeps scipy off the device.
"""

from __future__ import annotations

import numpy as np


def assign(cost: np.ndarray, max_cost: float = np.inf) -> list[tuple[int, int]]:
    """Pairs (row, column) of least total cost; a pair whose cost is above `max_cost` (or
    infinite) is not made. Rectangular matrices are fine: the longer side keeps some unmatched."""
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-d matrix, got shape {cost.shape}")
    n_rows, n_cols = cost.shape
    if n_rows == 0 or n_cols == 0:
        return []
    allowed = np.isfinite(cost) & (cost <= max_cost)
    if not allowed.any():
        return []
    # Disallowed pairs get a cost above any sum of allowed ones, so they are taken only when
    # nothing else is left, and dropped afterwards.
    big = (np.abs(cost[allowed]).max() + 1) * (min(n_rows, n_cols) + 1)
    work = np.where(allowed, cost, big)
    transposed = n_rows > n_cols
    if transposed:
        work = work.T
    rows = _hungarian(work)
    pairs = [(r, c) for r, c in enumerate(rows)]
    if transposed:
        pairs = [(c, r) for r, c in pairs]
    return sorted((r, c) for r, c in pairs if allowed[r, c])


def _hungarian(a: np.ndarray) -> list[int]:
    """Column of each row for an (n, m) matrix with n <= m (potentials, shortest augmenting paths)."""
    n, m = a.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, np.int64)  # p[j]: the row (1-based) matched to column j; 0: none
    way = np.zeros(m + 1, np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used[1:]
            cur = a[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    out = [-1] * n
    for j in range(1, m + 1):
        if p[j]:
            out[p[j] - 1] = j - 1
    return out

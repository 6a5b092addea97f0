"""The Hungarian method against brute force, and the boxes it works on."""

import itertools

import numpy as np
import pytest

from edgessl.edge_runtime.objects.assignment import assign
from edgessl.edge_runtime.objects.boxes import coverage, iou, square_crop


def brute_force(cost: np.ndarray) -> tuple[int, float]:
    """(most pairs of finite cost, least total cost among those) over every assignment."""
    n, m = cost.shape
    best = (0, 0.0)
    perms = itertools.permutations(range(m), n) if n <= m else itertools.permutations(range(n), m)
    for p in perms:
        pairs = [(i, p[i]) for i in range(n)] if n <= m else [(p[j], j) for j in range(m)]
        pairs = [(a, b) for a, b in pairs if np.isfinite(cost[a, b])]
        key = (len(pairs), sum(cost[a, b] for a, b in pairs))
        if key[0] > best[0] or (key[0] == best[0] and key[1] < best[1]):
            best = key
    return best


@pytest.mark.parametrize("seed", range(40))
def test_assignment_is_optimal(seed):
    rng = np.random.default_rng(seed)
    n, m = (int(x) for x in rng.integers(1, 6, 2))
    cost = rng.random((n, m))
    cost[rng.random((n, m)) < 0.25] = np.inf  # pairs that may not be made
    pairs = assign(cost)
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
    count, total = brute_force(cost)
    assert len(pairs) == count
    assert sum(cost[a, b] for a, b in pairs) == pytest.approx(total)


def test_max_cost_leaves_pairs_unmade():
    cost = np.array([[0.1, 0.9], [0.8, 0.95]])
    assert assign(cost, max_cost=0.5) == [(0, 0)]
    assert assign(np.zeros((0, 3))) == [] and assign(np.full((2, 2), np.inf)) == []


def test_iou_and_coverage():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    assert iou(a, b)[0] == pytest.approx([50 / 150, 0.0, 1.0])
    assert coverage(np.array([[2, 2, 4, 4]]), a)[0, 0] == 1.0


def test_square_crop_keeps_the_object_centred_at_the_border():
    image = np.zeros((100, 200, 3), np.uint8)
    image[0:20, 0:20] = 255  # an object in the corner
    crop = square_crop(image, np.array([0, 0, 20, 20]), margin=0.5)
    assert crop.shape == (40, 40, 3)
    # the object fills the middle of the crop; the border is replicated outwards
    assert crop[20, 20].tolist() == [255, 255, 255]

"""Motion proposals on real street footage (../shared/data/video/bikes.mp4): boxes where things
move, none on a still view; masks and the registry."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgessl.edge_runtime.objects.proposals import ProposerError, create_proposer, proposer_module
from edgessl.edge_runtime.objects.proposals.motion import MotionOptions, merge_boxes
from edgessl.edge_runtime.objects.zones import MaskConfig, Masks

BIKES = Path(__file__).resolve().parents[3] / "shared" / "data" / "video" / "bikes.mp4"
# Frames 137-186 of bikes.mp4: a fixed camera looks at a street through a fence; cars drive by.
STREET = range(137, 187)


@pytest.fixture(scope="module")
def bikes() -> list[np.ndarray]:
    if not BIKES.is_file():
        pytest.skip(f"{BIKES} is absent (the shared data folder holds it)")
    cap = cv2.VideoCapture(str(BIKES))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def motion(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where two frames differ clearly (grey levels), independently of the proposer."""
    diff = cv2.absdiff(cv2.cvtColor(a, cv2.COLOR_BGR2GRAY), cv2.cvtColor(b, cv2.COLOR_BGR2GRAY))
    return cv2.GaussianBlur(diff, (5, 5), 0) > 20


def test_boxes_where_the_cars_move(bikes):
    proposer = create_proposer(MotionOptions(), Masks([]))
    framed, on_motion, total = 0, 0, 0
    for i in STREET:
        boxes = proposer.propose(bikes[i])
        if i < STREET.start + 10:
            assert len(boxes) == 0  # warming up: the model has not seen the background yet
            continue
        h, w = bikes[i].shape[:2]
        big = boxes[(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) >= 0.001 * w * h]
        framed += len(big) > 0
        moved = motion(bikes[i - 2], bikes[i])
        for x0, y0, x1, y1 in big.astype(int):
            total += 1
            on_motion += moved[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4].any()
    assert framed >= 0.9 * (len(STREET) - 10)  # something moves in (almost) every frame
    assert total and on_motion / total >= 0.9  # and the boxes are where the frames changed


def test_no_boxes_on_a_still_view(bikes):
    """A real frame held still, with sensor noise: background subtraction sees nothing."""
    proposer = create_proposer(MotionOptions(), Masks([]))
    rng = np.random.default_rng(0)
    frame = bikes[160]
    counts = []
    for _ in range(40):
        noisy = np.clip(frame.astype(np.int16) + rng.normal(0, 2, frame.shape).round().astype(np.int16), 0, 255)
        counts.append(len(proposer.propose(noisy.astype(np.uint8))))
    assert sum(counts) == 0


def test_a_mask_hides_the_motion_under_it(bikes):
    """The whole view masked but its left tenth: no box reaches past the unmasked strip."""
    mask = MaskConfig(points=[(0.1, 0.0), (1.0, 0.0), (1.0, 1.0), (0.1, 1.0)])
    masked = create_proposer(MotionOptions(), Masks([mask]))
    plain = create_proposer(MotionOptions(), Masks([]))
    seen_plain = seen_masked = 0
    for i in STREET:
        w = bikes[i].shape[1]
        boxes = masked.propose(bikes[i])
        seen_masked += len(boxes)
        seen_plain += len(plain.propose(bikes[i]))
        assert (boxes[:, 0] <= 0.1 * w + 2).all()
    assert seen_plain > 3 * max(1, seen_masked)


def test_merge_joins_boxes_that_touch():
    boxes = np.array([[0, 0, 10, 10], [12, 0, 20, 10], [100, 100, 110, 110]], float)
    merged = merge_boxes(boxes, gap=4)
    assert sorted(map(tuple, merged.tolist())) == [(0, 0, 20, 10), (100, 100, 110, 110)]
    assert len(merge_boxes(boxes, gap=0)) == 3


def test_the_registry_names_the_valid_proposers():
    assert proposer_module("motion").NAME == "motion"
    with pytest.raises(ProposerError, match="valid: motion"):
        proposer_module("yolo")

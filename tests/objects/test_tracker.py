"""The tracker on boxes whose truth is known: identities through a crossing, a flicker that
never becomes an object, a stop that background subtraction absorbs, and the ghost it leaves."""

from collections.abc import Callable

import numpy as np

from edgessl.edge_runtime.objects.config import TrackerConfig
from edgessl.edge_runtime.objects.tracker import Track, Tracker, TrackState, Update

DT = 0.1
DIM = 8


def unit(i: int) -> np.ndarray:
    v = np.zeros(DIM)
    v[i] = 1.0
    return v


def box(cx: float, cy: float, half: float = 20) -> np.ndarray:
    return np.array([cx - half, cy - half, cx + half, cy + half], float)


def step(tracker: Tracker, t: float, proposals: list[tuple[np.ndarray, np.ndarray]],
         look: Callable[[Track], np.ndarray] | None = None,
         background: np.ndarray | None = None) -> Update:
    """One frame: proposals are (box, embedding of its crop); `look(track)` is the embedding of a
    stationary track's box in this frame; `background` the embedding of the background there."""
    boxes = np.array([b for b, _ in proposals]).reshape(-1, 4)
    plan = tracker.associate(boxes, t)
    emb = {j: proposals[j][1] for j in plan.embed}
    checks = {tr.key: look(tr) for tr in plan.checks} if look else {}
    backs = {tr.key: background for tr in plan.backgrounds} if background is not None else {}
    samples = {tr.key: proposals[j][1] for tr, j in plan.matched}
    return tracker.finish(plan, emb, checks, backs, samples)


def test_one_object_enters_is_confirmed_once_and_leaves():
    tracker = Tracker(TrackerConfig(confirm_hits=3, max_lost_s=0.5))
    entered, ended = [], []
    for k in range(30):
        out = step(tracker, k * DT, [(box(50 + 8 * k, 100), unit(0))] if k < 20 else [])
        entered += out.entered
        ended += out.ended
    assert [tr.id for tr in entered] == [1] and entered[0].hits >= 3
    assert [tr.id for tr in ended] == [1] and "no proposal" in ended[0].ended_why
    assert not tracker.active()


def test_a_flicker_never_becomes_an_object():
    tracker = Tracker(TrackerConfig(confirm_hits=3))
    entered = []
    for k in range(10):
        entered += step(tracker, k * DT, [(box(300, 300), unit(1))] if k in (2, 5) else []).entered
    assert entered == []


def crossing(appearance_weight: float) -> list[int | None]:
    """Two objects cross head-on; for 4 frames background subtraction sees one merged blob.
    Returns the track ids covering object A (the left one) frame by frame."""
    tracker = Tracker(TrackerConfig(appearance_weight=appearance_weight, max_lost_s=1.0))
    ids: list[int | None] = []
    for k in range(40):
        ax, bx = 100 + 6 * k, 340 - 6 * k
        a, b = box(ax, 100), box(bx, 104)
        if abs(ax - bx) < 30:  # merged: one blob over both
            merged = np.array([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
            proposals = [(merged, (unit(0) + unit(1)) / np.sqrt(2))]
        else:
            proposals = [(a, unit(0)), (b, unit(1))]
        step(tracker, k * DT, proposals)
        near = [tr for tr in tracker.active() if np.hypot(*((tr.box[:2] + tr.box[2:]) / 2 - (ax, 100))) < 15]
        ids.append(near[0].id if near else None)
    return ids


def test_identities_survive_a_crossing():
    ids = crossing(appearance_weight=0.5)
    before, after = ids[5], ids[-1]
    assert before is not None and after == before, ids


def test_a_stop_keeps_its_track_while_it_looks_like_itself():
    """Moving, then still; the blob fades into the background model and disappears; checks of the
    box find the object (kept), then the background (ended: it left unseen)."""
    tracker = Tracker(TrackerConfig(still_after_s=0.3, stationary_check_s=0.2, max_lost_s=0.5))
    obj, ground = unit(2), unit(5)
    timeline: list[tuple[str, int | None]] = []
    present = True

    def look(track: Track) -> np.ndarray:
        return obj if present else ground

    for k in range(120):
        t = k * DT
        x = 100 + 10 * min(k, 20)  # moves for 2 s, then stands at x = 300
        if k < 40:
            proposals = [(box(x, 200), obj)]
        elif k < 50:  # absorbed: the blob shrinks inside the box
            proposals = [(box(x, 200, half=20 - (k - 40)), obj)]
        else:
            proposals = []
        present = k < 100
        out = step(tracker, t, proposals, look, background=ground)
        if out.ended:
            timeline.append(("ended", out.ended[0].id))
        tracks = tracker.active()
        timeline.append((str(tracks[0].state) if tracks else "none", tracks[0].id if tracks else None))
    states = [s for s, _ in timeline]
    assert {i for _, i in timeline if i is not None} == {1}  # one identity throughout
    assert states[45] == "still" and states[70] == "stationary" and states[99] == "stationary"
    assert ("ended", 1) in timeline and timeline.index(("ended", 1)) > 100
    assert np.allclose(tracker.tracks[0].box if tracker.tracks else box(300, 200), box(300, 200))


def test_a_standing_object_keeps_its_place_while_a_passer_by_merges_with_it():
    """A stops (still, not yet absorbed); B walks past it, and for a few frames background
    subtraction sees one blob over both, which B's track takes. A is still there: shown where it
    stands throughout, with its id, and matched again when the blobs part."""
    tracker = Tracker(TrackerConfig(still_after_s=0.3, max_lost_s=0.5))
    a_ids: list[int | None] = []
    a_boxes = []
    merges = 0
    for k in range(60):
        ax = 100 + 20 * min(k, 10)  # moves for 1 s, then stands at x = 300
        a, b = box(ax, 200), box(315, -200 + 10 * k)  # B comes down past A
        if abs((-200 + 10 * k) - 200) < 38:
            merged = np.array([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
            proposals = [(merged, (unit(0) + unit(1)) / np.sqrt(2))]
            merges += 1
        else:
            proposals = [(a, unit(0)), (b, unit(1))]
        step(tracker, k * DT, proposals)
        if k == 34:
            assert tracker.active()[0].state == TrackState.STILL  # A, before B reaches it
        if k >= 34:
            near = [tr for tr in tracker.active() if tr.state != TrackState.LOST
                    and np.hypot(*((tr.box[:2] + tr.box[2:]) / 2 - (ax, 200))) < 10]
            a_ids.append(near[0].id if near else None)
            a_boxes.append(near[0].box.copy() if near else None)
    assert merges >= 5
    assert None not in a_ids and len(set(a_ids)) == 1, a_ids
    assert all(np.allclose(bx, box(300, 200), atol=3) for bx in a_boxes[3:])


def test_without_the_appearance_check_an_absorbed_stop_is_lost():
    """The same stop, but the object looks like the background: the track ends soon after the
    blob disappears, which is what keeping it by appearance prevents."""
    tracker = Tracker(TrackerConfig(still_after_s=0.3, stationary_check_s=0.2, max_lost_s=0.5))
    ground = unit(5)
    ended_at = None
    for k in range(80):
        x = 100 + 10 * min(k, 20)
        proposals = [(box(x, 200), unit(2))] if k < 40 else []
        out = step(tracker, k * DT, proposals, lambda tr: ground, background=ground)
        if out.ended and ended_at is None:
            ended_at = k
    assert ended_at is not None and 40 <= ended_at <= 46  # within max_lost_s of its blob going


def test_the_uncovered_background_is_not_born_as_an_object():
    """A stationary object leaves: where it stood, background subtraction sees the ground it
    uncovers (a ghost) while the object moves away. The ghost looks like the background sampled
    there and is not born; the object keeps its id."""
    cfg = TrackerConfig(still_after_s=0.3, stationary_check_s=0.2, max_lost_s=0.5, confirm_hits=2)
    tracker = Tracker(cfg)
    obj, ground = unit(2), unit(5)
    births = []
    for k in range(90):
        if k < 20:
            proposals = [(box(100 + 10 * k, 200), obj)]
        elif k < 40:
            proposals = [(box(300, 200), obj)]
        elif k < 60:
            proposals = []  # absorbed
        elif k < 63:  # starts to leave: one blob over the object and the ground it uncovers
            proposals = [(np.array([280, 180, 320 + 12 * (k - 59), 220.0]), (obj + ground) / np.sqrt(2))]
        else:  # moves on to the right; the ghost stays at x = 300
            proposals = [(box(300, 200), ground), (box(300 + 12 * (k - 59), 200), obj)]
        seen = obj if k < 63 else ground
        out = step(tracker, k * DT, proposals, lambda tr, seen=seen: seen, background=ground)
        births += [tr.id for tr in out.entered]
    assert births == [1]
    assert [tr.id for tr in tracker.active()] == [1] and tracker.active()[0].box[0] > 400
    assert tracker.tracks[0].state in (TrackState.MOVING, TrackState.STILL)

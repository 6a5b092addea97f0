"""One track's state and the two halves of a tracked frame (`Plan`, `Update`): the data that
`tracker.py` works on and `stage.py` reads, apart from the association logic."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from edgessl.edge_runtime.objects.kalman import BoxKalman


class TrackState(StrEnum):
    TENTATIVE = "tentative"  # not yet confirmed (fewer than confirm_hits matches)
    MOVING = "moving"
    STILL = "still"  # matched, but not moving
    STATIONARY = "stationary"  # absorbed by the background model; kept by appearance
    LOST = "lost"  # no proposal while moving: predicted on for max_lost_s
    ENDED = "ended"


ALIVE = (TrackState.MOVING, TrackState.STILL, TrackState.STATIONARY, TrackState.LOST)


@dataclass(eq=False)
class Track:
    key: int  # internal, also for tentative tracks
    kf: BoxKalman
    box: np.ndarray  # the box shown: the last match, or where a stationary object stands
    born: float
    last_seen: float  # last match or passed stationary check
    state: TrackState = TrackState.TENTATIVE
    id: int | None = None  # the public id, given when the track is confirmed
    hits: int = 1
    appearance: np.ndarray | None = None  # EMA of its crops' centred, normalised embeddings
    background: np.ndarray | None = None  # embedding of the background at `place`, sampled while it stood there
    place: np.ndarray | None = None  # where it stands (the box when the background was sampled)
    size: float | None = None  # EMA of sqrt(area) of its clean boxes: a blob much larger is a merge
    still_since: float | None = None
    stationary_since: float | None = None
    last_check: float = -np.inf
    ended_why: str | None = None

    @property
    def confirmed(self) -> bool:
        return self.id is not None


@dataclass
class Plan:
    """The first half of a frame: what is matched already and which crops need embeddings."""

    t: float
    boxes: np.ndarray  # (K, 4) the proposals
    matched: list[tuple[Track, int]]  # unambiguous: by IoU alone
    clean: set[int]  # keys of the matched tracks whose box has the object's usual size (not a merged blob)
    contested: list[Track]  # tracks with several candidate proposals (or several tracks per proposal)
    contested_boxes: list[int]  # the proposals among them
    iou: np.ndarray  # (len(contested), len(contested_boxes))
    unmatched: list[Track]  # tracks with no candidate
    free: list[int]  # proposals no track overlaps: births or re-identifications
    embed: list[int]  # proposals whose crops need an embedding (contested + free, capped)
    checks: list[Track]  # stationary objects whose box is due a check (crop of the current frame)
    backgrounds: list[Track]  # still tracks that need a background sample (crop of the background image)


@dataclass
class Update:
    """The second half: what happened to the tracks in this frame."""

    matched: dict[int, int] = field(default_factory=dict)  # track key -> proposal index
    unambiguous: set[int] = field(default_factory=set)  # keys matched by IoU alone (clean samples)
    entered: list[Track] = field(default_factory=list)
    ended: list[Track] = field(default_factory=list)
    ghosts: int = 0  # proposals taken for uncovered background

"""Multi-object tracking of proposals: Kalman + IoU association (the SORT/ByteTrack family),
an appearance term from the embeddings the classifier computes anyway, and stationary objects
that outlive background subtraction.

One frame is two calls, so that the embeddings the tracker asks for are computed in the same
backend batch as every other crop of the daemon's pass:

    plan = tracker.associate(boxes, t)      # predict, match what is unambiguous by IoU alone,
                                             # say which crops need an embedding
    ... embed plan's crops (with the region crops and track samples) ...
    update = tracker.finish(plan, embeddings)  # match the rest with appearance, births, deaths

Association. Tracks are predicted to the frame's time; a track and a proposal that overlap
(IoU >= match_iou) only each other match at once. Where several overlap (objects close together,
crossing, a blob that split), the proposals are embedded and the cost mixes 1 - IoU with the
appearance distance; the Hungarian method picks the pairs. A track lost while moving (an
occlusion, two objects merged into one blob) is predicted on for `max_lost_s`, and takes over a
new proposal nearby whose crop looks like it (re-identification).

Stationary objects. Background subtraction learns a stopped object into the background and its
proposal fades. A track that was still (slower than `still_speed` for `still_after_s`) samples
the background image at its place while the object is still foreground there; when its proposal
goes, it stays, at its place, while a crop of its box looks more like the track than like that
background sample (by `stationary_margin`), checked every `stationary_check_s`, and ends when
it does not (the object left). When a stopped object leaves, the background it uncovers differs
from the model that absorbed the object (a "ghost"): new proposals there that look like the
background sampled before are not born as objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgessl.edge_runtime.objects.assignment import assign
from edgessl.edge_runtime.objects.boxes import area, coverage, iou
from edgessl.edge_runtime.objects.config import TrackerConfig
from edgessl.edge_runtime.objects.kalman import BoxKalman
from edgessl.edge_runtime.objects.track import ALIVE, Plan, Track, TrackState, Update

__all__ = ["ALIVE", "Plan", "Track", "TrackState", "Tracker", "Update"]


EDGE_PX = 2  # a box this close to the frame's border is partly out of view
MERGED = 1.35  # a box this much larger (in sqrt(area)) than the track's usual is its blob merged with another
GHOST_S = 30.0  # how long the ground a stationary object uncovered may look new to background subtraction


@dataclass
class _Ghost:
    box: np.ndarray
    background: np.ndarray
    until: float


def _inside(box: np.ndarray, held: np.ndarray) -> bool:
    """`box` lies (almost) inside `held`: a still object's blob, the same or fading."""
    return bool(coverage(box[None], held[None])[0, 0] >= 0.85)


def _engulfs(box: np.ndarray, held: np.ndarray) -> bool:
    """`box` holds `held` and is a quarter larger or more: a still object's blob merged with a
    passer-by's (a passer-by that mostly overlaps it makes the union only a little larger)."""
    return bool(coverage(held[None], box[None])[0, 0] >= 0.85 and area(box[None])[0] >= 1.25 * area(held[None])[0])


def _side(box: np.ndarray) -> float:
    return float(np.sqrt(max(1.0, area(box[None])[0])))


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


class Tracker:
    def __init__(self, config: TrackerConfig, *, first_id: int = 1) -> None:
        self.config = config
        self.tracks: list[Track] = []
        self._next_key = 1
        self._next_id = first_id
        self._ghosts: list[_Ghost] = []
        self._frame_size: tuple[int, int] | None = None

    # -- the first half ---------------------------------------------------------------------

    def associate(self, boxes: np.ndarray, t: float, frame_size: tuple[int, int] | None = None, *,
                  max_embed: int = 16) -> Plan:
        """frame_size: (width, height); a track last seen at the frame's edge that loses its
        proposal has gone out of view, and is not looked for where it was."""
        cfg = self.config
        self._frame_size = frame_size
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        tracks = [tr for tr in self.tracks if tr.state != TrackState.ENDED]
        predicted = np.array([self._predict(tr, t) for tr in tracks]).reshape(-1, 4)
        overlap = iou(predicted, boxes)
        gated = overlap >= cfg.match_iou
        # A stationary track that absorption made invisible still overlaps what appears where it
        # stands (the object leaving, or the background it uncovers): always ask appearance.
        needs_look = np.array([tr.state == TrackState.STATIONARY and tr.background is not None for tr in tracks],
                              bool)
        rows, cols = gated.sum(axis=1), gated.sum(axis=0)
        matched: list[tuple[Track, int]] = []
        contested_rows: list[int] = []
        for i, tr in enumerate(tracks):
            if not rows[i]:
                continue
            j = int(np.argmax(gated[i]))
            if rows[i] == 1 and cols[j] == 1 and not needs_look[i]:
                matched.append((tr, j))
            else:
                contested_rows.append(i)
        contested_cols = sorted({int(j) for i in contested_rows for j in np.flatnonzero(gated[i])})
        taken = {j for _, j in matched} | set(contested_cols)
        free = [j for j in range(len(boxes)) if j not in taken]
        unmatched = [tracks[i] for i in range(len(tracks)) if not rows[i]]
        embed = (contested_cols + free)[:max_embed]
        checks = [tr for tr in unmatched if tr.confirmed and tr.appearance is not None and not self._at_edge(tr.box)
                  and t - tr.last_check >= cfg.stationary_check_s]
        backgrounds = [tr for tr, _ in matched if tr.state == TrackState.STILL and tr.background is None
                       and tr.still_since is not None and t - tr.still_since >= cfg.still_after_s]
        clean = {tr.key for tr, j in matched if tr.size is None or _side(boxes[j]) <= MERGED * tr.size}
        return Plan(t, boxes, matched, clean, [tracks[i] for i in contested_rows], contested_cols,
                    overlap[np.ix_(contested_rows, contested_cols)] if contested_rows else np.zeros((0, 0)),
                    unmatched, free, embed, checks, backgrounds)

    def _at_edge(self, box: np.ndarray) -> bool:
        if self._frame_size is None:
            return False
        w, h = self._frame_size
        return bool(box[0] <= EDGE_PX or box[1] <= EDGE_PX or box[2] >= w - EDGE_PX or box[3] >= h - EDGE_PX)

    def _predict(self, track: Track, t: float) -> np.ndarray:
        if track.state == TrackState.STATIONARY:
            track.kf.t = t  # a stationary object does not drift
            return track.box
        return track.kf.predict(t)

    # -- the second half --------------------------------------------------------------------

    def finish(self, plan: Plan, embeddings: Mapping[int, np.ndarray] | None = None,
               checks: Mapping[int, np.ndarray] | None = None, backgrounds: Mapping[int, np.ndarray] | None = None,
               samples: Mapping[int, np.ndarray] | None = None) -> Update:
        """embeddings: proposal index -> centred, normalised embedding (those of plan.embed);
        checks: track key -> embedding of its box in this frame (plan.checks); backgrounds: track
        key -> embedding of the background image at its box (plan.backgrounds); samples: track
        key -> embedding of a clean crop of a matched track (updates its appearance)."""
        cfg, t = self.config, plan.t
        embeddings, checks = embeddings or {}, checks or {}
        out = Update()
        for tr, j in plan.matched:
            self._match(tr, plan.boxes[j], t, out)
            out.matched[tr.key] = j
            if tr.key in plan.clean:
                out.unambiguous.add(tr.key)
                if not self._at_edge(plan.boxes[j]):  # a box cut by the frame's edge is not its size
                    side = _side(plan.boxes[j])
                    tr.size = side if tr.size is None else 0.8 * tr.size + 0.2 * side
        for key, emb in (backgrounds or {}).items():
            for tr in self.tracks:
                if tr.key == key:
                    tr.background, tr.place = _unit(emb), tr.box.copy()
        for key, emb in (samples or {}).items():
            for tr in self.tracks:
                if tr.key == key:
                    self._learn(tr, emb)

        # Contested: IoU and appearance together, one assignment.
        leftover_tracks = list(plan.unmatched)
        used: set[int] = {j for _, j in plan.matched}
        if plan.contested:
            cost = np.full(plan.iou.shape, np.inf)
            for a, tr in enumerate(plan.contested):
                for b, j in enumerate(plan.contested_boxes):
                    if plan.iou[a, b] < cfg.match_iou:
                        continue
                    look = embeddings.get(j)
                    c = 1.0 - plan.iou[a, b]
                    if tr.state in (TrackState.STILL, TrackState.STATIONARY) and _engulfs(plan.boxes[j], tr.box):
                        cost[a, b] = 1.0  # a passer-by merged with a standing object: the passer-by's first
                        continue
                    if look is not None and tr.appearance is not None:
                        sim = float(look @ tr.appearance)
                        if tr.background is not None and tr.state == TrackState.STATIONARY:
                            # A box where a stationary object stood is that object only if it looks
                            # more like it than like the background there (not the uncovered ground).
                            if sim - float(look @ tr.background) < cfg.stationary_margin:
                                continue
                        c = (1 - cfg.appearance_weight) * c + cfg.appearance_weight * (1 - sim) / 2
                    cost[a, b] = c
            pairs = assign(cost)
            won = {a for a, _ in pairs}
            for a, b in pairs:
                tr, j = plan.contested[a], plan.contested_boxes[b]
                self._match(tr, plan.boxes[j], t, out)
                out.matched[tr.key] = j
                used.add(j)
                if (clean := embeddings.get(j)) is not None and len(pairs) == 1 and len(plan.contested) == 1:
                    self._learn(tr, clean)  # one track and its own fragments: a clean look
            leftover_tracks += [tr for a, tr in enumerate(plan.contested) if a not in won]

        # Proposals left: fragments of a matched or standing object, re-identifications of lost
        # tracks, births.
        left = [j for j in range(len(plan.boxes)) if j not in used]
        standing = [tr.key for tr in self.tracks if tr.state in (TrackState.STILL, TrackState.STATIONARY)]
        mine = np.array([self._track(k).box for k in {*out.matched, *standing}]).reshape(-1, 4)
        if len(mine) and left:
            inside = coverage(plan.boxes[left], mine).max(axis=1) >= 0.6
            left = [j for j, frag in zip(left, inside, strict=True) if not frag]
        left = self._reidentify(leftover_tracks, left, plan, embeddings, out)
        self._ghosts = [g for g in self._ghosts if g.until > t]
        for j in left:
            new = embeddings.get(j)
            if self._is_ghost(plan.boxes[j], new):
                out.ghosts += 1
                continue
            if sum(tr.state != TrackState.ENDED for tr in self.tracks) >= cfg.max_tracks:
                break
            self._born(plan.boxes[j], t, new)

        # Tracks without a proposal.
        seen = np.array([self._track(k).box for k in out.matched]).reshape(-1, 4)
        for tr in leftover_tracks:
            if tr.key in out.matched:
                continue
            hidden = bool(len(seen)) and float(coverage(tr.box[None], seen).max()) >= 0.3
            self._missed(tr, t, checks.get(tr.key), out, hidden)
        self.tracks = [tr for tr in self.tracks if tr.state != TrackState.ENDED]
        return out

    def _track(self, key: int) -> Track:
        return next(tr for tr in self.tracks if tr.key == key)

    def _match(self, tr: Track, box: np.ndarray, t: float, out: Update) -> None:
        cfg = self.config
        if tr.state in (TrackState.STILL, TrackState.STATIONARY) and (_inside(box, tr.box) or _engulfs(box, tr.box)):
            # The blob of a still object shrinks as the background model absorbs it, frame by
            # frame: the object has not moved, it only fades from the foreground; or something
            # passes by and their blobs merge. Either way it stands where it stood.
            tr.kf.hold(tr.box)
            tr.last_seen = t
            tr.hits += 1
            return
        moves_again = tr.state in (TrackState.STILL, TrackState.STATIONARY)
        if moves_again:  # its blob reaches out of where it stood: follow it from here
            tr.kf = BoxKalman(box, t)
            tr.state, tr.still_since, tr.stationary_since = TrackState.MOVING, None, None
        else:
            tr.kf.update(box)
        tr.box = box.copy()
        tr.last_seen = t
        tr.hits += 1
        if tr.place is not None and iou(box[None], tr.place[None])[0, 0] < 0.5:
            self._left_place(tr, t)
        if moves_again:
            return
        if tr.state == TrackState.TENTATIVE:
            if tr.hits >= cfg.confirm_hits:
                tr.id, self._next_id = self._next_id, self._next_id + 1
                tr.state = TrackState.MOVING
                out.entered.append(tr)
            return
        slow = tr.kf.speed < cfg.still_speed
        if slow:
            if tr.still_since is None:
                tr.still_since = t
            if tr.state in (TrackState.MOVING, TrackState.LOST):
                tr.state = TrackState.STILL
            elif tr.state == TrackState.STATIONARY:
                tr.state = TrackState.STILL
                tr.stationary_since = None
        else:
            tr.state, tr.still_since, tr.stationary_since = TrackState.MOVING, None, None

    def _left_place(self, tr: Track, t: float) -> None:
        """The object left where it stood: background subtraction may take the ground it uncovers
        for an object until its model learns it again; that ground looks like the background sampled
        there, so new proposals there that do are not born (for GHOST_S)."""
        if tr.place is not None and tr.background is not None:
            self._ghosts.append(_Ghost(tr.place, tr.background, t + GHOST_S))
        tr.place = tr.background = None

    def _learn(self, tr: Track, emb: np.ndarray) -> None:
        emb = _unit(np.asarray(emb, np.float64))
        tr.appearance = emb if tr.appearance is None else _unit(0.8 * tr.appearance + 0.2 * emb)

    def _born(self, box: np.ndarray, t: float, emb: np.ndarray | None) -> None:
        tr = Track(self._next_key, BoxKalman(box, t), box.copy(), t, t)
        self._next_key += 1
        if emb is not None:
            self._learn(tr, emb)
        self.tracks.append(tr)

    def _is_ghost(self, box: np.ndarray, emb: np.ndarray | None) -> bool:
        if emb is None:
            return False
        for g in self._ghosts:
            if iou(box[None], g.box[None])[0, 0] >= 0.3 and float(emb @ g.background) >= self.config.ghost_similarity:
                return True
        return False

    def _reidentify(self, lost: list[Track], left: list[int], plan: Plan, embeddings: Mapping[int, np.ndarray],
                    out: Update) -> list[int]:
        """Lost tracks take over nearby new proposals that look like them."""
        cfg = self.config
        candidates = [tr for tr in lost if tr.confirmed and tr.appearance is not None]
        props = [j for j in left if j in embeddings]
        if not candidates or not props:
            return left
        cost = np.full((len(candidates), len(props)), np.inf)
        for a, tr in enumerate(candidates):
            size = max(tr.box[2] - tr.box[0], tr.box[3] - tr.box[1], 1.0)
            centre = (tr.kf.box[:2] + tr.kf.box[2:]) / 2
            for b, j in enumerate(props):
                box = plan.boxes[j]
                if np.hypot(*((box[:2] + box[2:]) / 2 - centre)) > 2.0 * size:
                    continue
                sim = float(embeddings[j] @ tr.appearance)
                if sim >= cfg.reid_similarity:
                    cost[a, b] = 1 - sim
        taken = set()
        for a, b in assign(cost):
            tr, j = candidates[a], props[b]
            tr.kf = BoxKalman(plan.boxes[j], plan.t)  # the old velocity led it astray
            self._match(tr, plan.boxes[j], plan.t, out)
            out.matched[tr.key] = j
            taken.add(j)
        return [j for j in left if j not in taken]

    def _missed(self, tr: Track, t: float, check: np.ndarray | None, out: Update, hidden: bool = False) -> None:
        """A track without a proposal in this frame: is the object still where it was last seen
        (stopped, and absorbed by the background model), hidden (crossing, occluded), or gone?
        `hidden`: another object's box covers much of this one's."""
        cfg = self.config
        if tr.state == TrackState.TENTATIVE:
            tr.state = TrackState.ENDED  # flicker: never announced
            return
        if check is not None and tr.appearance is not None:
            tr.last_check = t
            sim, rival = self._look(tr, check)
            if sim >= cfg.keep_similarity and sim - rival >= cfg.stationary_margin:
                if tr.state != TrackState.STATIONARY:  # it stands where it was last seen
                    tr.state, tr.stationary_since = TrackState.STATIONARY, t
                    tr.kf.hold(tr.box)
                tr.last_seen = t
            elif tr.state == TrackState.STATIONARY and not hidden:
                # Nothing in front of it, and its place does not look like it: it left unseen.
                self._end(tr, f"its place no longer looks like it ({sim:.2f}; the background sampled "
                          f"there {rival:.2f})", out)
                return
        if tr.state == TrackState.STATIONARY:
            # Something in front of it may hide it for a while; then the checks cannot tell.
            if t - tr.last_seen > (cfg.max_hidden_s if hidden else max(cfg.max_lost_s, 3 * cfg.stationary_check_s)):
                self._end(tr, "no check found it where it stood", out)
            elif tr.stationary_since is not None and t - tr.stationary_since > cfg.max_stationary_s:
                self._end(tr, f"stationary for over {cfg.max_stationary_s:g} s", out)
            return
        if tr.state == TrackState.STILL and hidden:
            # A standing object whose blob merged with a passer-by's (the passer-by took the box):
            # it has not gone anywhere. Hold it where it stands, and show it, until it is seen again.
            tr.kf.hold(tr.box)
            if t - tr.last_seen > cfg.max_hidden_s:
                self._end(tr, f"hidden for over {cfg.max_hidden_s:g} s where it stood", out)
            return
        if tr.state in (TrackState.MOVING, TrackState.STILL):
            tr.state = TrackState.LOST  # predicted on: hidden by another object, or merged with it
        if t - tr.last_seen > cfg.max_lost_s:
            self._end(tr, f"no proposal for {cfg.max_lost_s:g} s", out)

    @staticmethod
    def _look(tr: Track, check: np.ndarray) -> tuple[float, float]:
        """How much a crop of the track's box looks like the track, and like the background sampled
        there (-1 when none was)."""
        c = _unit(np.asarray(check, np.float64))
        assert tr.appearance is not None
        return float(c @ tr.appearance), float(c @ tr.background) if tr.background is not None else -1.0

    def _end(self, tr: Track, why: str, out: Update) -> None:
        self._left_place(tr, tr.last_seen)
        tr.state, tr.ended_why = TrackState.ENDED, why
        out.ended.append(tr)

    def active(self) -> list[Track]:
        """Confirmed tracks that are still alive."""
        return [tr for tr in self.tracks if tr.confirmed and tr.state in ALIVE]

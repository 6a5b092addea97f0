"""The `objects:` section of a camera (and the daemon's `tracks:` section): what is tracked, how,
and how a track gets its label. Unknown keys are errors; each field says what it does."""

from __future__ import annotations

from pydantic import Field, model_validator

from edgessl.edge_runtime.objects.proposals import ProposerOptionsUnion
from edgessl.edge_runtime.objects.proposals.motion import MotionOptions
from edgessl.edge_runtime.objects.zones import MaskConfig, ZoneConfig
from edgessl.edge_runtime.schema import StrictModel


class FilterConfig(StrictModel):
    """Which proposals can be objects: size and shape limits, as fractions of the frame."""

    min_area: float = Field(default=0.001, gt=0, lt=1, description="smallest box, as a share of the frame's area")
    max_area: float = Field(default=0.5, gt=0, le=1, description="largest box, as a share of the frame's area "
                            "(a whole-frame change is lighting, not an object)")
    min_aspect: float = Field(default=0.1, gt=0, le=100, description="least width / height")
    max_aspect: float = Field(default=10.0, gt=0, le=100, description="most width / height")

    @model_validator(mode="after")
    def _ordered(self) -> FilterConfig:
        if self.min_area >= self.max_area:
            raise ValueError(f"min_area ({self.min_area:g}) must be below max_area ({self.max_area:g}): no box "
                             "could pass; both are shares of the frame's area (0.001 = 0.1%)")
        if self.min_aspect >= self.max_aspect:
            raise ValueError(f"min_aspect ({self.min_aspect:g}) must be below max_aspect ({self.max_aspect:g})")
        return self


class TrackerConfig(StrictModel):
    """Multi-object tracking of the proposals (Kalman + IoU, with an appearance term)."""

    match_iou: float = Field(default=0.2, gt=0, lt=1, description="least IoU between a track's predicted box and "
                             "a proposal for them to match")
    appearance_weight: float = Field(default=0.5, ge=0, le=1, description="share of appearance (embedding "
                                     "distance) in the cost of a match where boxes are ambiguous (objects close "
                                     "together or crossing); the rest is 1 - IoU")
    confirm_hits: int = Field(default=3, ge=1, le=100, description="matched frames before a track is an object "
                              "(filters flicker; the 'entered' event follows)")
    max_lost_s: float = Field(default=1.5, gt=0, le=600, description="how long a track that lost its proposal while "
                              "moving is predicted on (occlusion, a crossing) before it has left")
    reid_similarity: float = Field(default=0.7, ge=-1, le=1, description="a lost track takes over a new proposal "
                                   "nearby whose crop is at least this similar to it (centred cosine)")
    still_speed: float = Field(default=0.15, gt=0, le=100, description="below this speed (box sizes per second) "
                               "a track is still")
    still_after_s: float = Field(default=0.5, ge=0, le=60, description="how long a track must be still before the "
                                 "background at its place is sampled")
    keep_similarity: float = Field(default=0.5, ge=-1, le=1, description="a track whose proposal is gone stays "
                                   "where it was last seen (stationary) while a crop of its box is at least this "
                                   "similar to it (centred cosine): background subtraction absorbs what stops")
    stationary_margin: float = Field(default=0.1, ge=0, le=2, description="... and more similar to the track than to "
                                     "the background sampled there by this much (centred cosine)")
    stationary_check_s: float = Field(default=0.5, gt=0, le=60, description="how often a stationary object's box "
                                      "is checked")
    max_hidden_s: float = Field(default=5.0, gt=0, le=600, description="a standing (still or stationary) "
                                "object with another in front of it is kept where it stands this long without "
                                "being seen")
    max_stationary_s: float = Field(default=3600.0, gt=0, le=86400 * 30, description="a stationary object is "
                                    "given up after this long")
    ghost_similarity: float = Field(default=0.6, ge=-1, le=1, description="where a stationary object was, a new "
                                    "proposal this similar to the background sampled there is the background "
                                    "coming back, not an object")
    max_tracks: int = Field(default=32, ge=1, le=1000, description="most tracks at once on this camera")


class CropConfig(StrictModel):
    """The crops of a track that are embedded and kept."""

    per_second: float = Field(default=4.0, gt=0, le=100, description="crops embedded per second per track (the "
                              "sharpest one since the last)")
    margin: float = Field(default=0.25, ge=0, le=2, description="context around the box on each side, as a share of "
                          "its longer side (crops are square)")
    keep: int = Field(default=8, ge=1, le=100, description="crops kept per track (the sharpest, varied), for "
                      "enrollment from the track")
    max_side: int = Field(default=160, ge=16, le=2048, description="longest side of a kept crop, in pixels")


class DecisionConfig(StrictModel):
    """How a track's crops become its label."""

    min_crops: int = Field(default=3, ge=1, le=1000, description="crops before a track gets a label")
    window: int = Field(default=24, ge=1, le=10_000, description="the newest crops that count")
    margin: float = Field(default=0.0, ge=-1, le=1, description="the track's mean score must clear the class's "
                          "threshold by this much (centred cosine)")
    min_agreement: float = Field(default=0.5, ge=0, le=1, description="share of the track's crops that must have "
                                 "the label's class as their best")


class ObjectsConfig(StrictModel):
    """Objects on a camera: proposals -> tracks -> a label per track from the gallery."""

    proposer: ProposerOptionsUnion = Field(default_factory=MotionOptions, description="where objects may be: "
                                           "`type` picks the proposer (motion: background subtraction)")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="size and shape of a proposal")
    zones: list[ZoneConfig] = Field(default_factory=list, description="named areas of the view; events and the "
                                    "API say which an object is in")
    masks: list[MaskConfig] = Field(default_factory=list, description="areas where motion is ignored")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="multi-object tracking")
    crops: CropConfig = Field(default_factory=CropConfig, description="crops of each track")
    decision: DecisionConfig = Field(default_factory=DecisionConfig, description="a track's label from its crops")

    @model_validator(mode="after")
    def _unique_zones(self) -> ObjectsConfig:
        names = [z.name for z in self.zones]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"zone names must be unique within a camera; repeated: {', '.join(repeated)}")
        return self


class TracksConfig(StrictModel):
    """Recent tracks kept on disk (state_dir/tracks) so that a person can name an object after it left."""

    keep: int = Field(default=200, ge=1, le=100_000, description="most recent tracks kept; older ones expire")
    max_bytes: int = Field(default=50_000_000, ge=100_000, description="most bytes of kept crops; the oldest "
                           "tracks expire first")

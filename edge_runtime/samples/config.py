"""The `sampling:` section of a camera and the daemon's `samples:` and `drift:` sections.

Defined here, next to the code that reads them, and used by the daemon's config (like
`objects/config.py`). Unknown keys are errors; each field says what it does."""

from __future__ import annotations

from pydantic import Field, model_validator

from edgessl.edge_runtime.schema import ConfigPath, StrictModel


class SamplingConfig(StrictModel):
    """Which crops of a camera are kept for the server to learn from (off unless given; {} for the defaults)."""

    per_hour: int = Field(default=60, ge=0, le=100_000, description="most samples kept from this camera in any "
                          "hour (counted over restarts)")
    per_day: int = Field(default=500, ge=0, le=1_000_000, description="most samples kept from this camera in any "
                         "24 hours (counted over restarts)")
    min_interval_s: float = Field(default=2.0, ge=0, le=86_400, description="least time between two crops of one "
                                  "region or track that are looked at (consecutive frames are near copies)")
    novelty: float = Field(default=0.35, gt=0, le=2, description="keep a crop whose embedding is at least this far "
                           "(1 - centred cosine) from every gallery exemplar and every sample kept for this model")
    # 0.01, not more: on a new domain the deployed model sees different objects as near copies (65% of
    # a rendered site's tracks were within 0.04 of a kept one under a CIFAR-10 model, 25% within 0.01),
    # and those are the crops the loop needs; the rate limits and the quota bound the volume.
    duplicate: float = Field(default=0.01, ge=0, le=2, description="never keep a crop closer than this (1 - "
                             "centred cosine) to a kept sample or a gallery exemplar, whatever the reason")
    low_margin: float = Field(default=0.05, ge=0, le=2, description="keep a crop whose two best classes score "
                              "within this of each other (the classifier hesitates); 0: never for this reason")
    keep_unknown: bool = Field(default=True, description="keep crops decided 'unknown' (or not decided yet)")
    regions: bool = Field(default=True, description="sample the camera's region crops")
    tracks: bool = Field(default=True, description="sample one crop per object track, when it left: its sharpest")

    @model_validator(mode="after")
    def _limits(self) -> SamplingConfig:
        if self.duplicate >= self.novelty:
            raise ValueError(f"duplicate ({self.duplicate:g}) must be below novelty ({self.novelty:g}): a novel "
                             "crop would always be a duplicate too")
        return self


class SampleStoreConfig(StrictModel):
    """Where kept samples wait for the server to harvest them (GET /v1/samples/archive, POST /v1/samples/ack)."""

    path: ConfigPath | None = Field(default=None, description="the samples database (SQLite); default: "
                                    "state_dir/samples.db")
    quota_bytes: int = Field(default=256 * 2**20, ge=64 * 1024, description="most JPEG bytes of all samples; "
                             "the oldest are evicted to make room (the file is a little larger: embeddings, "
                             "figures)")


class DriftConfig(StrictModel):
    """Whether each camera still looks like it did when the model was installed (an event when it does not)."""

    enabled: bool = Field(default=True, description="watch for drift (only while crops are embedded anyway: a "
                          "class enrolled, objects tracked, or sampling on)")
    reference_crops: int = Field(default=200, ge=1, le=1_000_000, description="crops of each camera after a model "
                                 "install or switch whose mean is the reference (kept in state_dir/drift.json)")
    alpha: float = Field(default=0.01, gt=0, le=1, description="weight of each new crop in the running mean (an "
                         "exponential moving average over about 1/alpha crops)")
    threshold: float = Field(default=0.25, gt=0, le=2, description="drift when 1 - cos(running mean, reference "
                             "mean) reaches this")
    hysteresis: float = Field(default=0.05, ge=0, lt=2, description="after a drift event, the next one needs the "
                              "score to fall below threshold - hysteresis first")

"""The sample store's SQLite file format and its row type (see `samples.store` for the code that uses it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgessl.edge_runtime.timestamps import iso

SOURCES = ("region", "track")
REASONS = ("novel", "low_margin", "unknown")
SCHEMA_VERSION = 1
META = ("id, camera, source, ref, time, model, reason, label, nearest, score, margin, novelty, bytes, sha256, dim")

# Small columns first, the JPEG last: reading metadata never walks the JPEG's overflow pages.
SCHEMA = [
    """CREATE TABLE samples (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        camera    TEXT NOT NULL,
        source    TEXT NOT NULL CHECK (source IN ('region', 'track')),
        ref       TEXT NOT NULL,               -- region name, or track id as text
        time      REAL NOT NULL,               -- capture time, unix seconds
        model     TEXT NOT NULL,               -- tag of the model that made the embedding
        reason    TEXT NOT NULL CHECK (reason IN ('novel', 'low_margin', 'unknown')),
        label     TEXT,                        -- the decision (NULL: unknown or undecided)
        nearest   TEXT,
        score     REAL,
        margin    REAL,
        novelty   REAL,
        sha256    TEXT NOT NULL,               -- hex, of the JPEG bytes
        bytes     INTEGER NOT NULL,            -- of the JPEG
        dim       INTEGER NOT NULL,
        embedding BLOB NOT NULL,               -- float32, centred and L2-normalised
        jpeg      BLOB NOT NULL
    )""",
    "CREATE INDEX samples_model ON samples(model)",
    "CREATE TABLE usage (one INTEGER PRIMARY KEY CHECK (one = 1), bytes INTEGER NOT NULL, count INTEGER NOT NULL, "
    "quota INTEGER NOT NULL)",
    "CREATE TRIGGER samples_added AFTER INSERT ON samples BEGIN "
    "UPDATE usage SET bytes = bytes + NEW.bytes, count = count + 1; END",
    "CREATE TRIGGER samples_removed AFTER DELETE ON samples BEGIN "
    "UPDATE usage SET bytes = bytes - OLD.bytes, count = count - 1; END",
    # When samples were kept, per camera, for a day: rate limits survive restarts and harvests.
    "CREATE TABLE kept (camera TEXT NOT NULL, time REAL NOT NULL)",
    "CREATE INDEX kept_camera ON kept(camera, time)",
]


@dataclass(frozen=True)
class SampleInfo:
    """A stored sample without its JPEG and embedding."""

    id: int
    camera: str
    source: str
    ref: str
    time: float
    model: str
    reason: str
    label: str | None
    nearest: str | None
    score: float | None
    margin: float | None
    novelty: float | None
    bytes: int
    sha256: str
    dim: int

    def as_dict(self) -> dict[str, Any]:
        """What the API answers for a sample (time as ISO 8601)."""
        return {"id": self.id, "camera": self.camera, "source": self.source, "ref": self.ref, "time": iso(self.time),
                "model": self.model, "reason": self.reason, "label": self.label, "nearest": self.nearest,
                "score": self.score, "margin": self.margin, "novelty": self.novelty, "bytes": self.bytes,
                "sha256": self.sha256}

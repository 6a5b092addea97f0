"""The gallery's SQLite file format (see `fewshot.gallery` for the code that uses it)."""

MIGRATIONS = {1: ["ALTER TABLE exemplars ADD COLUMN source TEXT"]}  # from version -> statements

SCHEMA_VERSION = 2
# Version 1 had no `source` column; it is added on open (NULL: the exemplar is a source of its own).
READABLE_VERSIONS = (1, 2)

SCHEMA = """
CREATE TABLE classes (
    id          INTEGER PRIMARY KEY,
    label       TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);
CREATE TABLE exemplars (
    id          INTEGER PRIMARY KEY,
    class_id    INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    crop        BLOB NOT NULL,                 -- JPEG
    embedding   BLOB NOT NULL,                 -- float32, little-endian
    fingerprint TEXT NOT NULL,                 -- sha256 of the model file that made the embedding
    negative    INTEGER NOT NULL DEFAULT 0 CHECK (negative IN (0, 1)),  -- 1: "this is not <label>"
    created_at  TEXT NOT NULL,
    source      TEXT                           -- exemplars with one source are views of one object
                                               -- (e.g. "track:17": crops of one pass), NULL: its own
);
CREATE INDEX exemplars_class ON exemplars(class_id);
CREATE INDEX exemplars_fingerprint ON exemplars(fingerprint);
"""

# Embeddings computed ahead of a model switch (the running model keeps the ones in
# `exemplars`); moved over in one short transaction when the new model takes over. Added
# without a schema version bump: older readers ignore the table.
STAGED = """
CREATE TABLE IF NOT EXISTS staged_embeddings (
    exemplar_id INTEGER PRIMARY KEY REFERENCES exemplars(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    embedding   BLOB NOT NULL
)
"""

-- Instance-wide settings: format version, master-key check, origin,
-- the wrapped instance signing key and its public half.
CREATE TABLE instance (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

-- One row per ingested dataset. Inserting the row is the commit point of an
-- ingest: files without a row are leftovers of a crash and are removed.
CREATE TABLE datasets (
    name          TEXT PRIMARY KEY NOT NULL,
    storage_id    TEXT NOT NULL UNIQUE,
    schema_toml   TEXT NOT NULL,
    schema_sha256 TEXT NOT NULL,
    wrapped_key   BLOB NOT NULL,
    bucket_count  INTEGER NOT NULL CHECK (bucket_count >= 1),
    row_count     INTEGER NOT NULL CHECK (row_count >= 0),
    stored_bytes  INTEGER NOT NULL CHECK (stored_bytes >= 0),
    created_at    TEXT NOT NULL
);

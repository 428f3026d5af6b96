-- Principals: authenticated callers. Only a SHA-256 hash of each token's
-- secret is kept; the token itself is shown once, at creation.
CREATE TABLE principals (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    org         TEXT NOT NULL,
    roles       TEXT NOT NULL,
    token_hash  BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  TEXT
);

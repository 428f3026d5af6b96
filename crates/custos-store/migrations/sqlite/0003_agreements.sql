-- Agreements: every applied version is kept (the text as authored and its
-- hash, which the ledger also records).
CREATE TABLE agreement_versions (
    id          TEXT NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    toml        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    applied_at  TEXT NOT NULL,
    applied_by  TEXT NOT NULL,
    PRIMARY KEY (id, version)
);

-- The state of each agreement as a whole: active, suspended or revoked.
CREATE TABLE agreement_states (
    id          TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'revoked')),
    changed_at  TEXT NOT NULL,
    changed_by  TEXT NOT NULL,
    reason      TEXT
);

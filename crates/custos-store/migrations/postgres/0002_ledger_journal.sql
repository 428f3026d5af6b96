-- The shared ledger of a home whose servers are replicas (PostgreSQL only;
-- an embedded home's ledger journal is a file). Not part of the catalogue
-- the backend suites compare.

-- Every replica's appends, sequenced: `idx` is the ledger index, `tag` the
-- record's seal (an HMAC chain under the ledger key; see custos-ledger's
-- `shared` module). Rows are only ever inserted.
CREATE TABLE ledger_journal (
    idx   BIGINT PRIMARY KEY NOT NULL CHECK (idx >= 0),
    entry BYTEA NOT NULL,
    tag   BYTEA NOT NULL CHECK (length(tag) = 32)
);

-- The one integrator's lease, on the database's clock.
CREATE TABLE ledger_integrator (
    id         SMALLINT PRIMARY KEY NOT NULL CHECK (id = 1),
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

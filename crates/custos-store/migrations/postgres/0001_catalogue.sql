-- The whole catalogue for PostgreSQL: the same tables, columns and
-- constraints as the SQLite migrations 0001–0013 end with (the backend
-- suites compare the two). Integers are BIGINT (SQLite's INTEGER is 64-bit),
-- blobs BYTEA, reals DOUBLE PRECISION.

CREATE TABLE instance (
    key   TEXT PRIMARY KEY NOT NULL,
    value BYTEA NOT NULL
);

CREATE TABLE datasets (
    name          TEXT PRIMARY KEY NOT NULL,
    storage_id    TEXT NOT NULL UNIQUE,
    schema_toml   TEXT NOT NULL,
    schema_sha256 TEXT NOT NULL,
    wrapped_key   BYTEA NOT NULL,
    bucket_count  BIGINT NOT NULL CHECK (bucket_count >= 1),
    row_count     BIGINT NOT NULL CHECK (row_count >= 0),
    stored_bytes  BIGINT NOT NULL CHECK (stored_bytes >= 0),
    created_at    TEXT NOT NULL,
    file_digests  TEXT NOT NULL DEFAULT '',
    ingest_entry  BIGINT
);

CREATE TABLE principals (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    org         TEXT NOT NULL,
    roles       TEXT NOT NULL,
    token_hash  BYTEA NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE agreement_versions (
    id           TEXT NOT NULL,
    version      BIGINT NOT NULL CHECK (version >= 1),
    toml         TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    applied_at   TEXT NOT NULL,
    applied_by   TEXT NOT NULL,
    ledger_entry BIGINT,
    PRIMARY KEY (id, version)
);

CREATE TABLE agreement_states (
    id          TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'revoked')),
    changed_at  TEXT NOT NULL,
    changed_by  TEXT NOT NULL,
    reason      TEXT
);

CREATE TABLE access_requests (
    id                   TEXT PRIMARY KEY NOT NULL,
    agreement_id         TEXT NOT NULL,
    agreement_version    BIGINT NOT NULL CHECK (agreement_version >= 1),
    grant_number         BIGINT NOT NULL CHECK (grant_number >= 1),
    dataset              TEXT NOT NULL,
    requester            TEXT NOT NULL,
    subject_commitment   BYTEA NOT NULL,
    subject_sealed       BYTEA NOT NULL,
    justification_sealed BYTEA NOT NULL,
    columns              TEXT NOT NULL,
    approvals_required   BIGINT NOT NULL CHECK (approvals_required >= 1),
    state                TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'fetched', 'declined')),
    created_at           TEXT NOT NULL,
    created_micros       BIGINT NOT NULL,
    ledger_index         BIGINT NOT NULL
);
CREATE INDEX access_requests_by_agreement ON access_requests (agreement_id, created_micros);
CREATE INDEX access_requests_by_state ON access_requests (state, created_micros);
CREATE INDEX access_requests_by_requester ON access_requests (requester, created_micros);

CREATE TABLE approvals (
    request_id    TEXT NOT NULL REFERENCES access_requests (id),
    approver      TEXT NOT NULL,
    approved_at   TEXT NOT NULL,
    ledger_index  BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver)
);
CREATE INDEX approvals_by_approver ON approvals (approver, approved_at);

CREATE TABLE request_declines (
    request_id    TEXT PRIMARY KEY NOT NULL REFERENCES access_requests (id),
    decliner      TEXT NOT NULL,
    declined_at   TEXT NOT NULL,
    reason_sealed BYTEA NOT NULL,
    ledger_index  BIGINT NOT NULL
);
CREATE INDEX request_declines_by_decliner ON request_declines (decliner, declined_at);

CREATE TABLE protected_subjects (
    subject_commitment BYTEA PRIMARY KEY NOT NULL,
    protected_at       TEXT NOT NULL,
    protected_by       TEXT NOT NULL,
    subject_sealed     BYTEA
);

CREATE TABLE privacy_budgets (
    agreement_id  TEXT NOT NULL,
    dataset       TEXT NOT NULL,
    measure       TEXT NOT NULL CHECK (measure IN ('zcdp', 'pure')),
    spent         DOUBLE PRECISION NOT NULL CHECK (spent >= 0),
    PRIMARY KEY (agreement_id, dataset)
);

CREATE TABLE privacy_charges (
    id                 TEXT PRIMARY KEY NOT NULL,
    agreement_id       TEXT NOT NULL,
    agreement_version  BIGINT NOT NULL,
    dataset            TEXT NOT NULL,
    principal          TEXT NOT NULL,
    measure            TEXT NOT NULL,
    spend              DOUBLE PRECISION NOT NULL CHECK (spend > 0),
    query_sha256       TEXT NOT NULL,
    at                 TEXT NOT NULL,
    at_micros          BIGINT NOT NULL,
    ledger_index       BIGINT NOT NULL
);
CREATE INDEX privacy_charges_by_agreement ON privacy_charges (agreement_id, principal, at_micros);

CREATE TABLE subject_events (
    subject_commitment BYTEA NOT NULL,
    ledger_index       BIGINT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('requested', 'disclosed', 'no_records', 'extracted')),
    request_id         TEXT NOT NULL,
    agreement_id       TEXT NOT NULL,
    agreement_version  BIGINT NOT NULL,
    principal          TEXT NOT NULL,
    org                TEXT NOT NULL,
    purpose            TEXT NOT NULL,
    at                 TEXT NOT NULL,
    rows_released      BIGINT NOT NULL,
    withheld           BIGINT NOT NULL CHECK (withheld IN (0, 1)),
    PRIMARY KEY (subject_commitment, ledger_index)
);
CREATE INDEX subject_events_by_agreement ON subject_events (agreement_id);

CREATE TABLE match_jobs (
    job_id            TEXT PRIMARY KEY,
    side              TEXT NOT NULL CHECK (side IN ('requester', 'responder')),
    agreement_id      TEXT NOT NULL,
    agreement_version BIGINT NOT NULL,
    dataset           TEXT NOT NULL,
    principal         TEXT NOT NULL,
    peer              TEXT NOT NULL,
    reveal            TEXT NOT NULL CHECK (reveal IN ('matches', 'count')),
    state             TEXT NOT NULL CHECK (state IN ('running', 'unverified', 'confirmed', 'failed')),
    match_count       BIGINT,
    created_at        TEXT NOT NULL,
    confirmed_by      TEXT,
    confirmed_at      TEXT
);

CREATE TABLE match_results (
    job_id TEXT NOT NULL REFERENCES match_jobs (job_id),
    token  TEXT NOT NULL,
    PRIMARY KEY (job_id, token)
);

CREATE TABLE extract_runs (
    id           TEXT PRIMARY KEY NOT NULL,
    agreement_id TEXT NOT NULL,
    principal    TEXT NOT NULL,
    at_micros    BIGINT NOT NULL
);
CREATE INDEX extract_runs_by_agreement ON extract_runs (agreement_id, at_micros);

CREATE TABLE principal_facts (
    principal_id   TEXT PRIMARY KEY NOT NULL REFERENCES principals (id),
    facts_sealed   BYTEA NOT NULL,
    updated_micros BIGINT NOT NULL
);

CREATE TABLE browsing_observations (
    ledger_index       BIGINT PRIMARY KEY NOT NULL,
    time_micros        BIGINT NOT NULL,
    day                BIGINT NOT NULL,
    principal_id       TEXT NOT NULL,
    agreement_id       TEXT,
    action             TEXT NOT NULL,
    allowed            BIGINT NOT NULL,
    request_id         TEXT,
    subject_commitment BYTEA,
    off_hours          BIGINT NOT NULL
);
CREATE INDEX browsing_by_principal ON browsing_observations (principal_id, time_micros);
CREATE INDEX browsing_by_subject ON browsing_observations (subject_commitment, time_micros)
    WHERE subject_commitment IS NOT NULL;
CREATE INDEX browsing_by_agreement_day ON browsing_observations (agreement_id, day);

CREATE TABLE browsing_cursor (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    next_index BIGINT NOT NULL
);

CREATE TABLE alerts (
    id                   TEXT PRIMARY KEY NOT NULL,
    dedupe_key           TEXT NOT NULL,
    raised_micros        BIGINT NOT NULL,
    updated_micros       BIGINT NOT NULL,
    principal_id         TEXT NOT NULL,
    agreement_id         TEXT,
    request_id           TEXT,
    rules                TEXT NOT NULL,
    score                DOUBLE PRECISION NOT NULL,
    rests_on             TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    ledger_index         BIGINT NOT NULL,
    resolved_by          TEXT,
    resolved_micros      BIGINT,
    resolution_sealed    BYTEA,
    resolve_ledger_index BIGINT
);
CREATE INDEX alerts_by_state ON alerts (state, score DESC, raised_micros DESC);
CREATE INDEX alerts_by_key ON alerts (dedupe_key, state);

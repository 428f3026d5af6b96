-- Identified look-ups: a request names one subject under one agreement
-- grant and waits for its approvals. The subject id and the justification
-- are sealed under the master key (they name a person); the commitment
-- (HMAC under the ledger key) is what the ledger and reports match on.
CREATE TABLE access_requests (
    id                   TEXT PRIMARY KEY NOT NULL,
    agreement_id         TEXT NOT NULL,
    agreement_version    INTEGER NOT NULL CHECK (agreement_version >= 1),
    grant_number         INTEGER NOT NULL CHECK (grant_number >= 1),
    dataset              TEXT NOT NULL,
    requester            TEXT NOT NULL,
    subject_commitment   BLOB NOT NULL,
    subject_sealed       BLOB NOT NULL,
    justification_sealed BLOB NOT NULL,
    columns              TEXT NOT NULL,
    approvals_required   INTEGER NOT NULL CHECK (approvals_required >= 1),
    state                TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'fetched')),
    created_at           TEXT NOT NULL,
    created_micros       INTEGER NOT NULL,
    ledger_index         INTEGER NOT NULL
);
CREATE INDEX access_requests_by_agreement ON access_requests (agreement_id, created_micros);

-- One row per approval; the key makes a second approval by one person impossible.
CREATE TABLE approvals (
    request_id    TEXT NOT NULL REFERENCES access_requests (id),
    approver      TEXT NOT NULL,
    approved_at   TEXT NOT NULL,
    ledger_index  INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver)
);

-- The accounting of disclosures (Privacy Act, 5 U.S.C. 552a(c)): every
-- look-up that named a subject and every release of their records.
CREATE TABLE subject_events (
    subject_commitment BLOB NOT NULL,
    ledger_index       INTEGER NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('requested', 'disclosed', 'no_records')),
    request_id         TEXT NOT NULL,
    agreement_id       TEXT NOT NULL,
    agreement_version  INTEGER NOT NULL,
    principal          TEXT NOT NULL,
    org                TEXT NOT NULL,
    purpose            TEXT NOT NULL,
    at                 TEXT NOT NULL,
    rows_released      INTEGER NOT NULL,
    withheld           INTEGER NOT NULL CHECK (withheld IN (0, 1)),
    PRIMARY KEY (subject_commitment, ledger_index)
);
CREATE INDEX subject_events_by_agreement ON subject_events (agreement_id);

-- Subjects the custodian flagged as protected (guards may forbid access).
CREATE TABLE protected_subjects (
    subject_commitment BLOB PRIMARY KEY NOT NULL,
    protected_at       TEXT NOT NULL,
    protected_by       TEXT NOT NULL
);

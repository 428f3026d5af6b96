-- no-transaction
-- An approver may decline a pending look-up with a reason: the request's
-- state gains `declined` (SQLite cannot change a CHECK in place, so the
-- table is rebuilt, with foreign keys off as SQLite's ALTER TABLE page
-- prescribes), and the decline (its reason sealed under the master key,
-- as it may name the person) is kept beside it.
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE access_requests_new (
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
    state                TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'fetched', 'declined')),
    created_at           TEXT NOT NULL,
    created_micros       INTEGER NOT NULL,
    ledger_index         INTEGER NOT NULL
);
INSERT INTO access_requests_new SELECT * FROM access_requests;
DROP TABLE access_requests;
ALTER TABLE access_requests_new RENAME TO access_requests;
CREATE INDEX access_requests_by_agreement ON access_requests (agreement_id, created_micros);
CREATE INDEX access_requests_by_state ON access_requests (state, created_micros);
CREATE INDEX access_requests_by_requester ON access_requests (requester, created_micros);
CREATE INDEX approvals_by_approver ON approvals (approver, approved_at);

CREATE TABLE request_declines (
    request_id    TEXT PRIMARY KEY NOT NULL REFERENCES access_requests (id),
    decliner      TEXT NOT NULL,
    declined_at   TEXT NOT NULL,
    reason_sealed BLOB NOT NULL,
    ledger_index  INTEGER NOT NULL
);
CREATE INDEX request_declines_by_decliner ON request_declines (decliner, declined_at);
COMMIT;
PRAGMA foreign_keys = ON;

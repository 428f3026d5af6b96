-- Pseudonymous extracts add an accounting line per subject they contain.
-- SQLite cannot widen a CHECK constraint in place: copy into a new table.
CREATE TABLE subject_events_new (
    subject_commitment BLOB NOT NULL,
    ledger_index       INTEGER NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('requested', 'disclosed', 'no_records', 'extracted')),
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
INSERT INTO subject_events_new SELECT * FROM subject_events;
DROP TABLE subject_events;
ALTER TABLE subject_events_new RENAME TO subject_events;
CREATE INDEX subject_events_by_agreement ON subject_events (agreement_id);

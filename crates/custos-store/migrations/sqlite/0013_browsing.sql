-- Unusual-browsing detection (docs/browsing.md).

-- A principal's own identifying facts (own id, surname, address, ZIP,
-- household and colleagues), one blob sealed under the master key.
CREATE TABLE principal_facts (
    principal_id   TEXT PRIMARY KEY NOT NULL REFERENCES principals(id),
    facts_sealed   BLOB NOT NULL,
    updated_micros INTEGER NOT NULL
);

-- The detector's view of the ledger: one row per identified access,
-- denial or decline it has read, in ledger order.
CREATE TABLE browsing_observations (
    ledger_index       INTEGER PRIMARY KEY NOT NULL,
    time_micros        INTEGER NOT NULL,
    day                INTEGER NOT NULL,
    principal_id       TEXT NOT NULL,
    agreement_id       TEXT,
    action             TEXT NOT NULL,
    allowed            INTEGER NOT NULL,
    request_id         TEXT,
    subject_commitment BLOB,
    off_hours          INTEGER NOT NULL
);
CREATE INDEX browsing_by_principal ON browsing_observations (principal_id, time_micros);
CREATE INDEX browsing_by_subject ON browsing_observations (subject_commitment, time_micros)
    WHERE subject_commitment IS NOT NULL;
CREATE INDEX browsing_by_agreement_day ON browsing_observations (agreement_id, day);

-- How far the detector has read the ledger.
CREATE TABLE browsing_cursor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    next_index INTEGER NOT NULL
);

CREATE TABLE alerts (
    id                   TEXT PRIMARY KEY NOT NULL,
    dedupe_key           TEXT NOT NULL,
    raised_micros        INTEGER NOT NULL,
    updated_micros       INTEGER NOT NULL,
    principal_id         TEXT NOT NULL,
    agreement_id         TEXT,
    request_id           TEXT,
    rules                TEXT NOT NULL,
    score                REAL NOT NULL,
    rests_on             TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    ledger_index         INTEGER NOT NULL,
    resolved_by          TEXT,
    resolved_micros      INTEGER,
    resolution_sealed    BLOB,
    resolve_ledger_index INTEGER
);
CREATE INDEX alerts_by_state ON alerts (state, score DESC, raised_micros DESC);
CREATE INDEX alerts_by_key ON alerts (dedupe_key, state);
